"""The one I/O loop that drives every session of this Python process.

One daemon thread around `epoll`. It reads and writes the session and launcher channels and
runs timers; it never blocks on anything but `epoll_wait`, and never calls into user code
except through owners (which must not block). Other threads hand it work with
`call_soon`; they may register a new fd directly (epoll is thread-safe), but only the
reactor thread unregisters and closes, so an fd number is never reused under a pending
event it does not belong to.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable

from . import _fds

log = logging.getLogger("linx")

Handler = Callable[[int], None]
READ_SIZE = 1 << 18


class Reactor:
    """An epoll loop in a daemon thread named `linx-reactor`."""

    def __init__(self) -> None:
        self._epoll = _fds.epoll()
        wake: list[int] = []
        try:
            # extend(map(...)): no bytecode between the eventfd and the list that closes
            # it should what follows fail (a KeyboardInterrupt in the first spawn); none
            # in _fds.new either
            flags = os.EFD_CLOEXEC | os.EFD_NONBLOCK
            wake.extend(map(_fds.new, (os.eventfd,), (0,), (flags,)))
            self._wake_fd = wake[0]
            self._epoll.register(self._wake_fd, select.EPOLLIN)
            self._prepare()
        except BaseException:
            self._epoll.close()
            collections.deque(map(os.close, wake), maxlen=0)
            raise
        self._stopping = False
        try:
            self._thread.start()
        except RuntimeError:
            # No thread was made ("can't start new thread": a pids limit, RLIMIT_NPROC),
            # and nothing else has these fds: each spawn refused so would leak one more.
            self._epoll.close()
            os.close(self._wake_fd)
            raise
        except BaseException:
            # Interrupted as start() waited for the thread, which runs all the same: with
            # no Runtime to hold this reactor it would wait for ever on its fds. It ends,
            # and closes them once this write is done (see _run).
            with self._lock:
                self._stopping = True
                os.eventfd_write(self._wake_fd, 1)
            raise
        self._ident = self._thread.ident  # known once start() returns

    def _prepare(self) -> None:
        """Everything but the fds, up to the thread (not started yet)."""
        self._handlers: dict[int, Handler] = {}
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._lock = threading.Lock()
        # Handlers read into this one buffer (they all run in the reactor thread): a fresh
        # 256 KiB bytes per recv() costs an mmap, an mremap and a munmap each time.
        self._recv_buffer = memoryview(bytearray(READ_SIZE))
        self._thread = threading.Thread(target=self._run, name="linx-reactor", daemon=True)

    # --- any thread ------------------------------------------------------------------

    def register(self, fd: int, mask: int, handler: Handler) -> None:
        """Watch `fd`; `handler(events)` runs in the reactor thread (spurious wakes happen)."""
        self._handlers[fd] = handler
        try:
            self._epoll.register(fd, mask)
        except OSError:
            # Refused (ENOSPC past fs.epoll.max_user_watches, ENOMEM): kept, the handler
            # would have `watches` say yes, and a launcher whose pidfd was refused would be
            # neither ended at once nor ever reaped. Only OSError: anything else (a signal
            # handler's, as register returns) may come with the fd watched.
            del self._handlers[fd]
            raise

    def watches(self, fd: int) -> bool:
        """Whether `fd` is registered (its handler is stored before epoll is asked)."""
        return fd in self._handlers

    def modify(self, fd: int, mask: int) -> None:
        self._epoll.modify(fd, mask)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._calls.append(fn)
        self._wake()

    def call_next(self, fn: Callable[[], None]) -> None:
        """`call_soon` from the reactor thread itself: after this round's handlers."""
        self._calls.append(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn))
        self._wake()

    def in_reactor_thread(self) -> bool:
        return threading.get_ident() == self._ident

    def _wake(self) -> None:
        if not self.in_reactor_thread() and self._wake_fd >= 0:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except BlockingIOError:
                pass  # the counter is saturated: a wake-up is pending anyway

    # --- reactor thread only ---------------------------------------------------------

    def recv(self, sock: socket.socket) -> memoryview:
        """What `sock` has to read, valid until the next call; empty at EOF."""
        size = sock.recv_into(self._recv_buffer)
        return self._recv_buffer[:size]

    def unregister(self, fd: int) -> None:
        """Stop watching `fd` (the caller then closes it). Reactor thread only."""
        if self._handlers.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _run(self) -> None:
        while not self._stopping:
            try:
                events = self._epoll.poll(self._next_timeout())
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # the epoll fd was closed after a fork or at shutdown
            for fd, mask in events:
                if fd == self._wake_fd:
                    self._drain_wake()
                    continue
                handler = self._handlers.get(fd)
                if handler is not None:
                    self._guarded(handler, mask)
            # Not kept until the next event, which an idle process may never get: the last
            # handler can be all that still holds a finished session's channel and owner.
            handler = None
            if self._timers:  # read without the lock: a timer added meanwhile wakes us
                self._run_due_timers()
            while self._calls:
                self._guarded(self._calls.popleft())
        # Its start was interrupted: nothing else has these fds. Under the lock: the thread
        # may see _stopping before the starting one has written its wake-up, which would
        # then go to a closed fd (EBADF in place of the KeyboardInterrupt) or another file.
        with self._lock:
            os.close(self._wake_fd)
            self._epoll.close()

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _next_timeout(self) -> float:
        if self._calls:
            return 0
        with self._lock:
            if not self._timers:
                return -1
            return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        due = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        for fn in due:
            self._guarded(fn)

    @staticmethod
    def _guarded(fn: Callable[..., None], *args: int) -> None:
        try:
            fn(*args)
        except BaseException:
            # nothing may end this thread: every session of the process depends on it
            log.exception("linx reactor: a handler failed")

    # --- after fork, in the child ------------------------------------------------------

    def forget_in_child(self) -> None:
        """Close the reactor's own fds in a forked child (whose copy has no thread).

        The fds it watched belong to channels and the launcher; they close their own.
        """
        self._handlers.clear()
        os.close(self._wake_fd)
        self._wake_fd = -1  # its number may be another file's now: never written again
        self._epoll.close()
