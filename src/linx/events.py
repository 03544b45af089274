"""Lifecycle events delivered to a session's owner; the terminal ones double as `wait()` results.

Events are immutable values. `session` is excluded from equality so that
`session.wait() == linx.Exited(0)` reads naturally.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from .errors import ProcessError

if TYPE_CHECKING:
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


@dataclass(frozen=True)
class Event:
    """Base of every event. `session` is the `Session` it belongs to (keyword-only)."""

    session: Session | None = field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Ready(Event):
    """The child is parked at the checkpoint; `host_pid` is its pid as the host sees it."""

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
