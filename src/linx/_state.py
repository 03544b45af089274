"""The session state machine: agent messages and verbs in, public events and commands out.

Pure code with no I/O, no locks and no clock, so every transition is testable without a
process. The table it implements is in docs/design.md ("Session states"); the one rule it
never breaks is: exactly one terminal event, and nothing after it.
"""

from __future__ import annotations

import enum
import errno as _errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from . import _wire
from ._types import ExitReason
from .errors import AlreadyRunning, NoProcess, NoPty, NotReady, ProcessError
from .events import Aborted, Event, Exited, Failed, Outcome, Ready, Running, Signaled

Mode = Literal["spawn", "enter"]


class Stage(enum.StrEnum):
    """The eight stages of `Info.stage`, in lifecycle order."""

    STARTING = "starting"
    SPAWNED = "spawned"
    READY = "ready"
    RUNNING = "running"
    EXITED = "exited"
    SIGNALED = "signaled"
    ABORTED = "aborted"
    ERRORED = "errored"


TERMINAL_STAGES = frozenset({Stage.EXITED, Stage.SIGNALED, Stage.ABORTED, Stage.ERRORED})
PROTOCOL_STAGE = "protocol"  # our own stage: the agent broke the wire contract


@dataclass(frozen=True)
class Info:
    """A snapshot of a session (`Session.info()`)."""

    mode: Mode
    stage: Stage
    host_pid: int | None
    child_pid: int | None
    pty: bool
    result: Outcome | ProcessError | None


# What each agent message may follow; anything else is a protocol violation.
_ALLOWED_FROM: dict[type[_wire.Message], frozenset[Stage]] = {
    _wire.Spawned: frozenset({Stage.STARTING}),
    _wire.Ready: frozenset({Stage.SPAWNED}),
    _wire.Running: frozenset({Stage.READY}),
    _wire.Exited: frozenset({Stage.RUNNING}),
    _wire.Signaled: frozenset({Stage.RUNNING}),
    _wire.Aborted: frozenset({Stage.READY}),
    _wire.Error: frozenset({Stage.STARTING, Stage.SPAWNED, Stage.READY, Stage.RUNNING}),
}


class SessionState:
    """One session's lifecycle, as seen from Python.

    `session` returns the object to carry in the events this produces (their `.session`);
    it is a callable (a weak reference) so that the state never keeps a session alive.
    """

    def __init__(
        self,
        *,
        mode: Mode = "spawn",
        auto_proceed: bool = False,
        pty: bool = False,
        session: Callable[[], Any] = lambda: None,
        path_of: Callable[[str], str | None] = lambda stage: None,
    ) -> None:
        self.mode: Mode = mode
        self.auto_proceed = auto_proceed
        self.pty = pty
        self.stage = Stage.STARTING
        self.host_pid: int | None = None
        self.child_pid: int | None = None
        self.agent_pid: int | None = None
        self.result: Outcome | ProcessError | None = None
        self._session = session
        self._path_of = path_of  # a failed stage's path, for ProcessError.filename
        self._proceeded = False
        self._abort_sent = False
        self._channel_closed = False
        self._agent_status_known = False
        self._agent_status: int | None = None

    # --- queries ---------------------------------------------------------------------

    @property
    def terminal(self) -> bool:
        return self.stage in TERMINAL_STAGES

    def info(self) -> Info:
        return Info(self.mode, self.stage, self.host_pid, self.child_pid, self.pty, self.result)

    # --- verbs: return the command to send (None: nothing to send) or raise -----------

    def proceed(self) -> _wire.Proceed:
        self._require_live()
        if self.stage in (Stage.STARTING, Stage.SPAWNED):
            raise NotReady("the child has not reached the checkpoint yet")
        if self.released:
            raise AlreadyRunning("the workload is already past the checkpoint")
        if self._abort_sent:
            raise NoProcess("the session is being aborted")
        # The command is made before the state changes, and nothing is called after: an
        # exception from a signal handler (a KeyboardInterrupt) in between would leave the
        # state released with no command on its way (Channel.send).
        command = _wire.Proceed()
        self._proceeded = True
        return command

    @property
    def released(self) -> bool:
        """Past the checkpoint, or committed to pass it (`auto_proceed`, or a `proceed()`)."""
        return self._proceeded or self.auto_proceed or self.stage is Stage.RUNNING

    def abort(self) -> _wire.Abort | None:
        self._require_live()
        if self.released:
            raise AlreadyRunning("the workload is past the checkpoint; use signal()")
        if self._abort_sent:
            return None
        command = _wire.Abort()  # first, as in proceed()
        self._abort_sent = True
        return command

    def signal(self, signum: int) -> _wire.Signal:
        self._require_live()
        return _wire.Signal(signum=signum)

    def require_pty(self) -> None:
        if not self.pty:
            raise NoPty("the session was not started with stdio='pty'")
        self._require_live()

    def _require_live(self) -> None:
        if self.terminal:
            raise NoProcess(f"the session has ended ({self.stage})")

    # --- inputs: return the events to deliver, in order -------------------------------

    def receive(self, message: _wire.Message) -> list[Event]:
        """An agent message arrived. `Notice`s carry no state and yield nothing."""
        if self.terminal or isinstance(message, _wire.Notice):
            return []
        allowed = _ALLOWED_FROM.get(type(message))
        if allowed is None or self.stage not in allowed:
            return self._fail(PROTOCOL_STAGE, _errno.EPROTO)
        return self._apply(message)

    def _apply(self, message: _wire.Message) -> list[Event]:
        if isinstance(message, _wire.Spawned):
            self.stage = Stage.SPAWNED
            self.host_pid = message.host_pid
            self.agent_pid = message.agent_pid
            return []
        if isinstance(message, _wire.Ready):
            if message.host_pid != self.host_pid:
                # READY names the child SPAWNED named (the reference: `host_pid` after
                # :spawned is "the same value" :ready carries). Taking another would change
                # `host_pid` under a caller that may be using the first already.
                return self._fail(PROTOCOL_STAGE, _errno.EPROTO)
            self.stage = Stage.READY
            self.child_pid = message.child_pid
            return [Ready(message.host_pid, session=self._session())]
        if isinstance(message, _wire.Running):
            self.stage = Stage.RUNNING
            return [Running(session=self._session())]
        if isinstance(message, _wire.Exited):
            return self._finish(Stage.EXITED, Exited(message.code, session=self._session()))
        if isinstance(message, _wire.Signaled):
            return self._finish(Stage.SIGNALED, Signaled(message.signum, session=self._session()))
        if isinstance(message, _wire.Aborted):
            return self._finish(Stage.ABORTED, Aborted(session=self._session()))
        assert isinstance(message, _wire.Error)
        return self._fail(message.stage.decode("ascii", "replace"), message.errno)

    def channel_broken(self) -> list[Event]:
        """The agent sent bytes that are not protocol version 1."""
        if self.terminal:
            return []
        return self._fail(PROTOCOL_STAGE, _errno.EPROTO)

    def channel_closed(self) -> list[Event]:
        """EOF on the session channel. Without a terminal frame the agent died."""
        self._channel_closed = True
        if self.terminal or not self._agent_status_known:
            return []
        return self._fail("agent_died", self._agent_status)

    def agent_exited(self, status: int | None) -> list[Event]:
        """The launcher reaped the agent (`status`: exit code, or -signum; None: unknown)."""
        self._agent_status_known = True
        self._agent_status = status
        if self.terminal or not self._channel_closed:
            return []
        return self._fail("agent_died", status)

    def launch_failed(self, stage: str, errno: int) -> list[Event]:
        """The launcher could not create an agent: no process exists for this session."""
        if self.terminal:
            return []
        return self._fail(stage, errno)

    # --- endings ---------------------------------------------------------------------

    def _fail(self, stage: str, code: int | None) -> list[Event]:
        error = ProcessError(stage, code, self._path_of(stage))
        self.stage = Stage.ERRORED
        self.result = error
        return [Failed(error, session=self._session())]

    def _finish(self, stage: Stage, outcome: Outcome) -> list[Event]:
        self.stage = stage
        self.result = outcome
        return [outcome]


def exit_reason(result: Outcome | ProcessError) -> ExitReason:
    """The reference's mapping from a terminal outcome to a supervisor exit reason."""
    if isinstance(result, Exited):
        return "normal" if result.code == 0 else ("exited", result.code)
    if isinstance(result, Signaled):
        return ("signaled", result.signum)
    if isinstance(result, Aborted):
        return ("shutdown", "aborted")
    return ("error", result)
