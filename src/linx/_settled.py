"""A value set once, in the reactor thread, and read by any number of waiting threads.

A session's terminal outcome. `concurrent.futures.Future` would do, but its `result()`
runs a `Condition` in Python (an `RLock` round on each side, a waiter list, notify) on the
path of every `wait()`; here a waiting thread blocks in its own `Lock.acquire`, in C, and
the setter's `release` of it is all it takes to wake it. asyncio gets a `Future` only when
it asks.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    import concurrent.futures

T = TypeVar("T")


class Settled(Generic[T]):
    """Set once with `set`; `wait` blocks until then."""

    __slots__ = ("_done", "_futures", "_lock", "_value", "_waiters")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: T | None = None
        self._done = False
        # One held lock per blocked thread, released by `set`. Not one lock passed from
        # waiter to waiter: a thread interrupted (KeyboardInterrupt) between taking and
        # passing it on would leave the others blocked for ever.
        self._waiters: list[threading.Lock] = []
        self._futures: list[concurrent.futures.Future[T]] = []

    def set(self, value: T) -> None:
        """Record `value` and wake every waiter. Only the first call counts."""
        with self._lock:
            if self._done:
                return
            self._value = value
            self._done = True
            waiters, self._waiters = self._waiters, []
            futures, self._futures = self._futures, []
        for waiter in waiters:
            waiter.release()
        for future in futures:
            if future.set_running_or_notify_cancel():  # False: its waiter gave up on it
                future.set_result(value)

    @property
    def done(self) -> bool:
        """Whether the value is set (`wait` then returns it at once)."""
        return self._done

    def wait(self, timeout: float | None = None) -> T:
        """The value; raises `TimeoutError` if `timeout` seconds pass first."""
        if self._done:  # set after `_value`, so a reader that sees it sees the value
            return self._value  # type: ignore[return-value]
        waiter = threading.Lock()
        waiter.acquire()
        with self._lock:
            if self._done:
                return self._value
            self._waiters.append(waiter)
        try:
            wait = -1 if timeout is None else min(max(timeout, 0.0), threading.TIMEOUT_MAX)
            if not waiter.acquire(timeout=wait):
                raise TimeoutError
        finally:
            if not self._done:  # timed out or interrupted: stop being woken
                self._forget(waiter)
        return self._value  # type: ignore[return-value]

    def _forget(self, waiter: threading.Lock) -> None:
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def future(self) -> concurrent.futures.Future[T]:
        """A `concurrent.futures.Future` of its own for one waiter (`asyncio.wrap_future`).

        Its waiter may cancel it (a timed-out or cancelled wait does); that touches no one else's.
        """
        import concurrent.futures  # only asyncio waiters need it: not at `import linx`

        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if not self._done:
                # Drop the ones given up on, or a caller polling with timeouts grows the list.
                self._futures = [f for f in self._futures if not f.cancelled()]
                self._futures.append(future)
                return future
        future.set_running_or_notify_cancel()
        future.set_result(self._value)  # type: ignore[arg-type]
        return future
