"""linx's own fds never take 0, 1 or 2.

A process that runs with its standard fds closed (a daemon, say) would otherwise see
linx's epoll fd, eventfd or a session socket land there, and a later spawn whose stdio is
`"inherit"` would hand that to its workload as stdin, stdout or stderr. Each fd linx
creates goes through here, and one that lands below 3 is moved up (close-on-exec, as all of
linx's fds are). The kernel gives out the lowest free fd, so for a moment such an fd is
below 3 anyway: creating and moving it happen under one lock, and so does the copying of
a caller's fd for "inherit". No thread of linx then sees another's fd in 0 to 2.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import threading
from collections.abc import Callable

FIRST_FREE = 3  # the lowest fd linx may hold
_placing = threading.Lock()


def new(make: Callable[[], int]) -> int:
    """The fd `make()` creates, at 3 or above."""
    with _placing:
        return _lifted(make())


def duplicate(fd: int) -> int:
    """A close-on-exec copy of `fd` at 3 or above. `os.dup` would take the lowest free fd,
    which may be one of 0, 1 and 2 that a later step still means to read as closed."""
    with _placing:
        return _copy_up(fd)


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of AF_UNIX stream sockets, both at 3 or above."""
    with _placing:
        first, second = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            return _lifted_socket(first), _lifted_socket(second)
        except BaseException:
            first.close()  # a detached one closes nothing more
            second.close()
            raise


def epoll() -> select.epoll:
    """A close-on-exec epoll object whose fd is 3 or above."""
    with _placing:
        poller = select.epoll()
        if poller.fileno() >= FIRST_FREE:
            return poller
        try:
            return select.epoll.fromfd(_copy_up(poller.fileno()))
        finally:
            poller.close()


def _copy_up(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_FREE)


def _lifted(fd: int) -> int:
    if fd >= FIRST_FREE:
        return fd
    try:
        return _copy_up(fd)
    finally:
        os.close(fd)


def _lifted_socket(sock: socket.socket) -> socket.socket:
    if sock.fileno() >= FIRST_FREE:
        return sock
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=_lifted(sock.detach()))


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at the fork; it does not exist in the child.
    global _placing
    _placing = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
