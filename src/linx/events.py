"""Lifecycle events delivered to a session's owner; the terminal ones double as `wait()` results.

Events are immutable values. `session` is excluded from equality so that
`session.wait() == linx.Exited(0)` reads naturally, and an event holds its session weakly:
`event.session` is `None` once the session object is gone.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import ProcessError

if TYPE_CHECKING:
    from . import aio
    from .session import Session

__all__ = [
    "Aborted",
    "Event",
    "Exited",
    "Failed",
    "Outcome",
    "PtyInDropped",
    "PtyOut",
    "Ready",
    "Running",
    "Signaled",
    "TerminalEvent",
]


class _WeakSession:
    """`Event.session`, kept as a weak reference.

    A session owns its default queue, and the events in it name the session. Held
    strongly, a session dropped with events still queued would live on in a reference
    cycle until the garbage collector ran (an idle program may never run it), and only
    then would its workload get its orphan policy. So an event never keeps its session
    alive, whoever holds the event.
    """

    def __get__(self, event: Event | None, owner: type | None = None) -> Any:
        if event is None:
            return None  # the class attribute
        ref = event.__dict__.get("_session_ref")  # absent: made without __init__
        return None if ref is None else ref()

    def __set__(self, event: Event, session: Any) -> None:
        # Called once, by the dataclass's __init__ (object.__setattr__ honours a data
        # descriptor, frozen or not); `self` is what it passes when no session was given.
        weak = None if session is None or session is self else weakref.ref(session)
        event.__dict__["_session_ref"] = weak


_SESSION: Any = _WeakSession()  # typed Any: a descriptor as a field's default


@dataclass(frozen=True)
class Event:
    """Base of every event. `session` is the `Session` it belongs to (a `linx.aio.Session`
    for one made by `linx.aio.spawn`; keyword-only), or `None` once that session object has
    been dropped: an event does not keep it alive."""

    session: Session | aio.Session | None = field(
        default=_SESSION, compare=False, repr=False, kw_only=True
    )

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (a multiprocessing.Queue owner, a result sent back from a worker), an
        # event leaves its session behind: another process has no use for it, and a weak
        # reference does not pickle. It arrives with `session` None.
        return {k: v for k, v in self.__dict__.items() if k != "_session_ref"}

    def __copy__(self) -> Event:
        return self  # an immutable value: a copy of it is itself, session included

    def __deepcopy__(self, memo: dict[int, Any]) -> Event:
        return self  # as __copy__ (__getstate__ is for pickling, which leaves the session)


@dataclass(frozen=True)
class Ready(Event):
    """The child is at the checkpoint (parked, unless `auto_proceed` released it already);
    `host_pid` is its pid as the host sees it."""

    host_pid: int


@dataclass(frozen=True)
class Running(Event):
    """The workload has `execve`d."""


@dataclass(frozen=True)
class Exited(Event):
    """Terminal: the workload exited with `code`."""

    code: int


@dataclass(frozen=True)
class Signaled(Event):
    """Terminal: the workload was killed by signal `signum`."""

    signum: int


@dataclass(frozen=True)
class Aborted(Event):
    """Terminal: `abort()` discarded the child at the checkpoint; the workload never ran."""


@dataclass(frozen=True)
class Failed(Event):
    """Terminal: a pre-exec or agent failure; `error` is the `ProcessError`."""

    error: ProcessError


@dataclass(frozen=True)
class PtyOut(Event):
    """PTY mode: bytes the workload wrote to its terminal."""

    data: bytes


@dataclass(frozen=True)
class PtyInDropped(Event):
    """PTY mode: `count` bytes of `pty_write` input beyond the agent's buffer were dropped."""

    count: int


Outcome: TypeAlias = Exited | Signaled | Aborted
TerminalEvent: TypeAlias = Exited | Signaled | Aborted | Failed
