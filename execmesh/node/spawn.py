"""Start a pod's launcher without forking the node, and learn its exit on the event loop."""

from __future__ import annotations

import asyncio
import os

from execmesh.node.sandbox import SPEC_FD


def spawn(
    argv: list[str], env: dict[str, str], output_fd: int, spec_fd: int | None = None
) -> tuple[int, asyncio.Future[int]]:
    """Start ``argv`` with stdout and stderr on ``output_fd`` (and ``spec_fd`` as its fd SPEC_FD).

    Returns the pid and a future of its exit code (128 + N when signal N killed it).

    posix_spawn (vfork) and a pidfd on the event loop: no fork of this process's memory and
    no waiter thread per child, which asyncio's subprocess support would cost on every pod.
    """
    loop = asyncio.get_running_loop()
    actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, output_fd, 1),
        (os.POSIX_SPAWN_DUP2, output_fd, 2),
    ]
    if spec_fd is not None:
        actions.append((os.POSIX_SPAWN_DUP2, spec_fd, SPEC_FD))
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    pidfd = os.pidfd_open(pid)
    exited: asyncio.Future[int] = loop.create_future()

    def reap() -> None:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped == 0:
            return
        loop.remove_reader(pidfd)
        os.close(pidfd)
        code = os.waitstatus_to_exitcode(status)
        if not exited.done():
            exited.set_result(code if code >= 0 else 128 - code)  # killed: 128 + signal

    loop.add_reader(pidfd, reap)
    return pid, exited
