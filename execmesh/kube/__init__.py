"""Executor pods through the `kubernetes` client: the worker's side and the monitor's side.

``client`` builds the API clients from Settings (a cluster, or the local node); ``worker``
creates and deletes an execution's objects; ``mapping`` turns pods into domain events, purely;
``monitor`` watches pods and emits those events.
"""
