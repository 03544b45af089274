"""`linx.aio`: the asyncio front, name for name the same as `linx`, on the same reactor.

What can block is a coroutine (`spawn`, `wait`, `aclose`, `async with`); fire-and-forget verbs
(`proceed`, `abort`, `signal`, `info`, `set_owner`, `pty_write`, `pty_set_winsize`) are plain
methods, as on asyncio's own `Process`. Nothing here blocks the event loop: waits are
futures completed by the reactor thread. The default owner is an `asyncio.Queue`
(`session.events`) fed on the loop that called `spawn`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn, ParamSpec, SupportsIndex, TypeVar

from . import _options
from . import session as _sync
from ._channel import Channel, Result
from ._state import Info
from ._types import ExitReason, Owner
from .errors import NoProcess
from .events import Event, Outcome
from .session import CLOSE_TIMEOUT, _unwrap

__all__ = ["Session", "spawn"]

log = logging.getLogger("linx")
_PRIVATE = object()
P = ParamSpec("P")
T = TypeVar("T")


class Session:
    """The asyncio handle of one spawned process. Create it with `await linx.aio.spawn()`."""

    events: asyncio.Queue[Event] | None
    """The default owner (an `asyncio.Queue`) when no `owner` was given, else `None`."""

    def __init__(self, events: asyncio.Queue[Event] | None, *, _token: object = None) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use await linx.aio.spawn() to create a linx.aio.Session")
        self._core: _sync.Session  # bound by `_bind` before any event is delivered
        self.events = events

    def _bind(self, core: _sync.Session) -> None:
        self._core = core

    @property
    def host_pid(self) -> int | None:
        return self._core.host_pid

    @property
    def owner(self) -> Owner:
        return self._core.owner

    @property
    def exit_reason(self) -> ExitReason | None:
        return self._core.exit_reason

    def proceed(self) -> None:
        self._core.proceed()

    def abort(self) -> None:
        self._core.abort()

    def signal(self, signum: int) -> None:
        self._core.signal(signum)

    def info(self) -> Info:
        return self._core.info()

    def set_owner(self, owner: Owner) -> None:
        self._core.set_owner(owner)

    def pty_write(self, data: bytes) -> None:
        self._core.pty_write(data)

    def pty_set_winsize(self, size: object) -> None:
        self._core.pty_set_winsize(size)

    async def wait(self, timeout: float | None = None) -> Outcome:
        """The terminal outcome, as `linx.Session.wait()`; cancelling the wait is harmless."""
        timeout = _options.validate_timeout(timeout)
        channel = self._core._channel
        if channel.closed:
            raise NoProcess("the session is closed")
        if channel.outcome.done:
            # wrap_future completes only on a later round of the loop, and a timeout of 0
            # would not give it that round: wait(0) must poll
            return _unwrap(channel.outcome.wait(0))
        return _unwrap(await _outcome(channel, timeout))

    async def aclose(self) -> None:
        """As `linx.Session.close()`: abort or kill a live session and await its end."""
        channel = self._core._channel
        if not channel.begin_close():
            return
        try:
            await _outcome(channel, CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("linx: session %s did not end after SIGKILL; abandoning it", self)
        finally:
            # cancelled meanwhile (a second cancel, asyncio.run's shutdown), it is closed all
            # the same: the kill is sent, and `async with` promises a closed session
            channel.finish_close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __copy__(self) -> Session:
        return self  # a handle, as `linx.Session`: a copy is the same session

    def __deepcopy__(self, memo: object) -> Session:
        return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError("a linx.aio.Session cannot be pickled: it is a handle on a live process")

    def __repr__(self) -> str:
        core = getattr(self, "_core", None)  # None: its spawn failed before binding it
        if core is None:
            return "<linx.aio.Session (not started)>"
        return repr(core).replace("linx.Session", "linx.aio.Session")


async def _outcome(channel: Channel, timeout: float | None) -> Result:
    """The channel's outcome, awaited for at most `timeout` seconds (`TimeoutError`).

    Not `asyncio.wait_for`: on Python 3.11 a cancellation that comes as the outcome does
    returns the outcome and drops the cancellation, so a cancelled task (a TaskGroup's, a
    request's under `asyncio.timeout`, asyncio.run's shutdown) ran on as if never
    cancelled."""
    future = asyncio.wrap_future(channel.outcome.future())
    async with asyncio.timeout(timeout):
        return await future


def _takes_the_options_of(
    sync: Callable[P, object],
) -> Callable[[Callable[..., Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Gives a coroutine function `sync`'s parameters, for the type checker and at the
    call, so that the two fronts cannot drift apart (nor be written out twice)."""
    signature = inspect.signature(sync)

    def mirror(
        function: Callable[..., Coroutine[Any, Any, T]],
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(function)
        async def checked(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"linx.aio.spawn(): {exc}") from None
            return await function(*args, **kwargs)

        own = inspect.signature(function).return_annotation  # this front's Session
        checked.__signature__ = signature.replace(return_annotation=own)  # type: ignore[attr-defined]
        return checked

    return mirror


@_takes_the_options_of(_sync.spawn)
async def spawn(argv: Sequence[str | bytes], *, owner: Any = None, **options: Any) -> Session:
    """As `linx.spawn()`, with an `asyncio.Queue` fed on this loop as the default owner."""
    plan = _options.plan_spawn(argv, owner=owner, **options)
    events: asyncio.Queue[Event] | None = asyncio.Queue() if owner is None else None
    # Made first, so that every event names it (weakly: it is in no reference cycle), and
    # bound to its core before an owner can see an event.
    session = Session(events, _token=_PRIVATE)
    _sync._start_plan(plan, owner, default_owner=events, front=session)
    return session
