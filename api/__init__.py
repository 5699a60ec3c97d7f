"""The execmesh API gateway: a Starlette application under ``/api/v1`` (see ``api.app``)."""
