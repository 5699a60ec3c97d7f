from __future__ import annotations

import socket


def free_port() -> int:
    # Ephemeral rather than a fixed range: another checkout's test run may be running too.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
