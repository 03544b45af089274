"""Delivery of events to owners: a queue (`put`), an `asyncio.Queue`, or a callable.

Owners are called from the reactor thread and must not block. An `asyncio.Queue` is fed on
its own loop with `call_soon_threadsafe`, so it is safe from any thread. A failing owner (even
one that raises `SystemExit`) is logged, never allowed to stop the reactor; so is one that
returns a coroutine, which nothing would await.
"""

from __future__ import annotations

import functools
import logging
import queue
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .events import Event

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("linx")

Deliver = Callable[[Event], object]  # what an owner returns is not used


def make_deliver(owner: Any) -> Deliver:
    """A function that hands one event to `owner`. Call it where the owner's loop runs.

    Raises `ValueError` for a bounded `queue.Queue` or `asyncio.Queue`: the reactor thread
    cannot wait for room in it (every session of the process would stall), and dropping
    events would break the one-terminal-event promise; and for an `asyncio.Queue` whose
    loop is closed (or that has none, outside a running loop).
    """
    # asyncio is not imported for this check: a program that has not imported it has no
    # asyncio.Queue, and importing it costs a third of `import linx` (docs/performance.md).
    asyncio = sys.modules.get("asyncio")
    is_asyncio_queue = asyncio is not None and isinstance(owner, asyncio.Queue)
    if (is_asyncio_queue or isinstance(owner, queue.Queue)) and owner.maxsize > 0:
        raise ValueError(
            f"owner {owner!r} is a bounded queue (maxsize={owner.maxsize}): linx's "
            "reactor thread must never wait for room in it; give an unbounded queue"
        )
    if is_asyncio_queue:
        return _asyncio_queue_deliver(owner)
    put = getattr(owner, "put", None)
    if callable(put):
        _refuse_coroutine_function(owner, put)
        return put  # type: ignore[no-any-return]
    if callable(owner):
        _refuse_coroutine_function(owner, owner)
        _refuse_coroutine_function(owner, type(owner).__call__)  # async def __call__
        return owner  # type: ignore[no-any-return]
    raise TypeError(f"owner must have a put() method or be callable, not {owner!r}")


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE: inspect is not imported for it (import time)


def _refuse_coroutine_function(owner: Any, function: Any) -> None:
    """Raise `TypeError` if `function` (the owner, its `put` or its `__call__`) is an
    `async def`: called in the reactor thread it would only make a coroutine that nobody
    awaits, so every event would be lost, with at most a "never awaited" warning."""
    while isinstance(function, functools.partial):
        function = function.func
    code = getattr(getattr(function, "__func__", function), "__code__", None)
    if code is not None and code.co_flags & _CO_COROUTINE:
        raise TypeError(
            f"owner {owner!r} is a coroutine function: linx calls owners in its reactor "
            "thread, where nothing would await it; give an asyncio.Queue, or a plain "
            "function (one that calls loop.call_soon_threadsafe, say)"
        )


def _asyncio_queue_deliver(queue: asyncio.Queue[Event]) -> Deliver:
    loop = _loop_of(queue)
    if loop.is_closed():
        # one made in an earlier asyncio.run(), say: every event would be dropped
        raise ValueError(
            f"owner {queue!r} belongs to an event loop that is closed, where nothing can "
            "read it; give an asyncio.Queue of the running loop"
        )

    def deliver(event: Event) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:
            log.debug("linx: dropped %r, the owner's event loop is closed", event)

    return deliver


def _loop_of(queue: asyncio.Queue[Event]) -> asyncio.AbstractEventLoop:
    """The loop `queue` is fed on: its own, or else the running one, which it is then bound
    to. asyncio binds a queue only when a task first waits on it; left unbound, a queue made
    for another loop would be fed here and then waited on there, and that waiter, woken
    from the wrong thread, would sleep on (for ever, with no other wake-up). Bound, such a
    wait raises asyncio's "bound to a different event loop" instead."""
    import asyncio

    loop: asyncio.AbstractEventLoop | None = getattr(queue, "_loop", None)
    if loop is not None:
        return loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        raise ValueError(
            "an asyncio.Queue owner must be given from inside its running event loop"
        ) from None
    bind = getattr(queue, "_get_loop", None)  # asyncio's own, private: it may go some day
    if bind is None:
        return running
    try:
        return bind()  # type: ignore[no-any-return]
    except RuntimeError:
        # bound meanwhile by a task of its own loop, in another thread
        return queue._loop  # type: ignore[attr-defined,no-any-return]


def deliver_guarded(deliver: Deliver, event: Event) -> None:
    """`deliver(event)`, logging what the owner raises instead of passing it on."""
    try:
        returned = deliver(event)
    except BaseException:
        # BaseException too: a SystemExit raised in an owner (sys.exit() in a callback)
        # would otherwise end the reactor thread quietly, and every session with it.
        log.exception("linx: the owner failed to take %r", event)
        return
    if isinstance(returned, types.CoroutineType):
        _refuse_coroutine(returned, event)


def _refuse_coroutine(coroutine: types.CoroutineType[Any, Any, Any], event: Event) -> None:
    """An owner that only looks synchronous (a plain wrapper of an `async def`, which
    `make_deliver` cannot tell from one that schedules the coroutine itself) made a
    coroutine of the event: nothing in the reactor thread will await it, so the event is
    lost. Said as an error, naming the owner's coroutine, rather than left to Python's
    "never awaited" warning, which names neither linx nor the event."""
    coroutine.close()
    log.error(
        "linx: the owner returned a coroutine (%s) for %r and nothing awaits it: the event "
        "is lost. Owners are called in linx's reactor thread; give an asyncio.Queue, or a "
        "plain function (one that calls loop.call_soon_threadsafe, say)",
        coroutine.__qualname__,
        event,
    )
