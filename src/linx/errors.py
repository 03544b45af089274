"""Exceptions of linx: the kernel's word (`ProcessError`) and wrong-state calls (`SessionError`).

Nothing here does I/O; bad *input* is reported with the built-in `TypeError`/`ValueError`.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "AlreadyRunning",
    "NoProcess",
    "NoPty",
    "NotReady",
    "NotRunning",
    "ProcessError",
    "SessionError",
]


class ProcessError(OSError):
    """A pre-exec or agent failure: the workload never ran (or its agent died).

    `stage` names the step that failed (see docs/protocol.md, "Stages", for the table),
    `errno` is the POSIX errno (`None` for `agent_died`), and `code` is the raw integer: the
    errno, or for `agent_died` the agent's exit status (negative signal number if it was
    killed, `None` when no launcher was left to report it). `filename` is the path the
    stage acted on, where the spawn names one: `argv[0]` for `execve`, `cwd` for `chdir`,
    the socket for `connect_unix` (if all of stdio's name the same); else `None`. An
    `execve` ENOENT may still be about another file: a `#!` interpreter. Two are equal
    when their stage and code are.
    """

    stage: str
    code: int | None

    def __init__(self, stage: str, code: int | None, filename: str | None = None) -> None:
        self.stage = stage
        self.code = code
        if stage == "agent_died":
            super().__init__(f"process agent died: {_describe_status(code)}")
            self.errno = None
        else:
            assert code is not None
            name = _errno.errorcode.get(code, "E?")
            subject = "" if filename is None else f" {filename!r}"
            super().__init__(code, f"process {stage}{subject} failed: {name} (errno {code})")
        self.strerror = str(self.args[-1])
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[-1])

    def __reduce__(self) -> tuple[type[ProcessError], tuple[str, int | None, str | None]]:
        return (type(self), (self.stage, self.code, self.filename))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProcessError):
            return NotImplemented
        return (self.stage, self.code) == (other.stage, other.code)

    def __hash__(self) -> int:
        return hash((self.stage, self.code))

    @property
    def errno_name(self) -> str | None:
        """The symbolic errno (`"ENOENT"`), or `None` for `agent_died`."""
        if self.errno is None:
            return None
        return _errno.errorcode.get(self.errno)

    def describe(self) -> str:
        """One line for people: the stage and the kernel's reason."""
        if self.errno is None:
            return str(self)
        return f"{self} - {os.strerror(self.errno)}"


def _describe_status(code: int | None) -> str:
    if code is None:
        return "exit status unknown (its launcher is gone)"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


class SessionError(Exception):
    """A verb called in a session state where the reference refuses it."""


class NotReady(SessionError):
    """`proceed()` before the child reached the checkpoint."""


class NoProcess(SessionError):
    """The session has ended (terminal outcome recorded), was closed, or (for `proceed()`)
    is being aborted."""


class AlreadyRunning(SessionError):
    """The workload is past the checkpoint (the reference's `:running`)."""


class NotRunning(SessionError):
    """The verb needs a running workload. No verb of this version raises it."""


class NoPty(SessionError):
    """A PTY verb on a session that was not started with `stdio="pty"`."""
