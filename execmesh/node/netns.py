"""Empty network namespaces, made once and lent to one pod at a time.

Creating a network namespace costs milliseconds (every per-namespace network subsystem
initialises, and tearing it down later costs a kernel worker as much), which would be a
third of a short pod's sandbox start. A namespace that holds nothing but loopback can be
reused safely once every process of the pod that had it is dead: the pod has no
capability, so it cannot change routes, addresses, firewall rules or sysctls there, and
its sockets die with it. Two pods never hold the same namespace at once.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET))


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


class NetnsPool:
    """Namespaces as open file descriptors; the calling thread enters one to spawn a pod."""

    def __init__(self) -> None:
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._free: list[int] = []

    def acquire(self) -> int:
        return self._free.pop() if self._free else self._create()

    def release(self, fd: int) -> None:
        self._free.append(fd)

    def discard(self, fd: int) -> None:
        os.close(fd)

    @contextmanager
    def entered(self, fd: int) -> Iterator[None]:
        """Run the block in namespace ``fd``; children forked there are born in it."""
        _setns(fd)
        try:
            yield
        finally:
            _setns(self._home)

    def close(self) -> None:
        for fd in self._free:
            os.close(fd)
        self._free.clear()
        os.close(self._home)

    def _create(self) -> int:
        _check(_libc.unshare(CLONE_NEWNET))
        try:
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _loopback_up()
        finally:
            _setns(self._home)
        return fd


def supported() -> bool:
    try:
        pool = NetnsPool()
        pool.discard(pool.acquire())
        pool.close()
    except OSError as exc:
        return exc.errno not in (errno.EPERM, errno.ENOENT)
    return True
