"""linx's own fds never take 0, 1 or 2.

A process that runs with its standard fds closed (a daemon, say) would otherwise see
linx's epoll fd, eventfd or a session socket land there, and a later spawn whose stdio is
`"inherit"` would hand that to its workload as stdin, stdout or stderr. Each fd linx
creates goes through here, and one that lands below 3 is moved up (close-on-exec, as all of
linx's fds are). The kernel gives out the lowest free fd, so for a moment such an fd is
below 3 anyway: creating and moving it happen under one lock, and so does the copying of
a caller's fd for "inherit". No thread of linx then sees another's fd in 0 to 2.

It also keeps every socket it makes, weakly, for a child forked by `os.fork()`: the child
closes those still open, so that no copy of a session's socket outlives its use in the
parent (an agent that did not see EOF when its session was dropped would not end its
workload). That covers the sockets of a spawn under way in another thread at the fork,
which no session or runtime table holds yet; the fork waits for any fd being made. The
same goes for the copies of a caller's fds that a spawn passes to its agent (`duplicate`):
a child forked while another thread's spawn holds them would otherwise keep, say, the write
end of a pipe given as stdout, and the parent's reader would wait for that child to exit
before it saw EOF.
"""

from __future__ import annotations

import _socket
import fcntl
import os
import select
import socket
import threading
import weakref
from collections.abc import Callable

FIRST_FREE = 3  # the lowest fd linx may hold
_DUPFD, _ABOVE_STDIO = (fcntl.F_DUPFD_CLOEXEC,), (FIRST_FREE,)  # fcntl's arguments, for map
# Reentrant for one caller only: a fork from a signal handler that interrupted this very
# thread while it held the lock (in `duplicate`, say) takes it in `_before_fork`.
_placing = threading.RLock()
_sockets: weakref.WeakSet[_socket.socket] = weakref.WeakSet()  # see the module's doc
_copies: set[int] = set()  # what `duplicate` made and `close_copies` has not closed yet


def new(make: Callable[..., int], *args: object) -> int:
    """The fd `make(*args)` creates, at 3 or above.

    `make` is a C function (`os.eventfd`, `os.pidfd_open`): called through map, its fd goes
    into a list with no bytecode in between, where a signal handler's exception (a
    KeyboardInterrupt) would lose it. The return, after the lock is let go, runs none.
    """
    made: list[int] = []
    try:
        with _placing:
            made.extend(map(make, *[(arg,) for arg in args]))
            if made[0] < FIRST_FREE:
                made.extend(map(fcntl.fcntl, made[:1], _DUPFD, _ABOVE_STDIO))
                any(map(os.close, map(made.pop, (0,))))  # the low one, out and closed in C
    except BaseException:
        any(map(os.close, made))
        raise
    return made[0]


def duplicate(fd: int, into: list[int]) -> None:
    """Append a close-on-exec copy of `fd` at 3 or above to `into`, whose holder closes it
    (`close_copies`). `os.dup` would take the lowest free fd, which may be one of 0, 1 and 2
    that a later step still means to read as closed."""
    with _placing:
        # One window is left where a signal handler's exception (a KeyboardInterrupt) would
        # lose the copy: the eval-breaker check as fcntl returns. Closing it (extend(map(...)))
        # costs about 0.35 µs a copy, on every spawn's path, for that one instruction.
        into.append(_copy_up(fd))
        _copies.add(into[-1])


def close_copies(fds: list[int]) -> None:
    """Close `fds`, copies made by `duplicate`, and empty the list (in place: an exception
    before it is emptied, a KeyboardInterrupt, leaves them to the holder; none is closed
    twice)."""
    with _placing:  # the fork's view of `_copies` is never of an fd closed but still kept
        _copies.difference_update(fds)
        # The map is made while `fds` still holds them, and consumed in C: no call, after
        # which a signal handler's exception (a KeyboardInterrupt) may raise, comes between
        # emptying the list and closing what it held, nor between two closes.
        closing = map(os.close, fds[:])
        del fds[:]  # not fds.clear(): a call
        any(closing)


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of AF_UNIX stream sockets, both at 3 or above."""
    with _placing:
        first, second = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pair = _lifted_socket(first), _lifted_socket(second)
        except BaseException:
            first.close()  # a detached one closes nothing more
            second.close()
            raise
        _sockets.update(pair)
        return pair


class Socket(_socket.socket):
    """A socket made in C alone (`_socket.socket` has no `__init__` in Python, unlike
    `socket.socket`), so that an fd can go into one with no bytecode in between, where a
    signal handler's exception (a KeyboardInterrupt) would lose it; weakly referable, for
    `_sockets`."""

    __slots__ = ("__weakref__",)


def duplicate_socket(sock: socket.socket, at_least: int) -> Socket:
    """A close-on-exec copy of `sock` at `at_least` or above, kept like the others."""
    made: list[Socket] = []
    try:
        with _placing:
            # from fcntl into the socket object, and that into the list, all in C
            fd = map(fcntl.fcntl, (sock.fileno(),), _DUPFD, (at_least,))
            made.extend(map(Socket, (socket.AF_UNIX,), (socket.SOCK_STREAM,), (0,), fd))
            _sockets.add(made[0])
    except BaseException:
        any(map(Socket.close, made))
        raise
    return made[0]


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


def _before_fork() -> None:
    _placing.acquire()  # no fd is half made (a raw one not yet kept) at the fork


def _after_fork_in_parent() -> None:
    _placing.release()


def _after_fork_in_child() -> None:
    global _placing
    _placing = threading.RLock()  # a fresh one: this child's threads are new
    for sock in list(_sockets):
        sock.close()  # closed already, it closes nothing
    _sockets.clear()
    for fd in _copies:  # the parent's spawns' copies of its callers' fds
        try:
            os.close(fd)
        except OSError:
            pass
    _copies.clear()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
