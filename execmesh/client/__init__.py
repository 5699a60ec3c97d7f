"""The client side of the API gateway: API keys, the HTTP client and the CLI commands."""

from __future__ import annotations

from execmesh.client.keys import ApiKey, KeyStore, Principal, Role, hash_key, new_key

__all__ = ["ApiKey", "KeyStore", "Principal", "Role", "hash_key", "new_key"]
