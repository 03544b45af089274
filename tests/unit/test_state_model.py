"""The session state machine against a model of the contract, step by step.

Hypothesis interleaves the caller's verbs with what the agent and the launcher can say, in
both `auto_proceed` modes, and after every step compares `SessionState` with `_Contract`:
a second reading of the per-stage tables (the reference's abort/proceed/signal sections,
SPEC §3-§5, design.md "Session states", protocol.md's wire order), written from those
documents rather than from `_state.py`, so that a slip in one shows up against the other.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from linx import _wire
from linx._state import Info, SessionState, Stage, exit_reason
from linx.errors import AlreadyRunning, NoProcess, NoPty, NotReady, ProcessError, SessionError
from linx.events import Aborted, Event, Exited, Failed, Ready, Running, Signaled

TERMINAL = ("exited", "signaled", "aborted", "errored")
HOST_PIDS = st.sampled_from([4242, 4243])  # two values: a READY that contradicts SPAWNED
STAGE_NAMES = st.sampled_from([b"clone", b"uid_map", b"chdir", b"execve", b"exec_outcome"])
CHILD_PIDS = st.none() | st.just(1) | st.just(4242)
NOTICE_STAGES = st.sampled_from([b"proceed", b"abort", b"signal"])
STATUSES = st.one_of(st.none(), st.integers(-64, 255))


class _Handle:
    """Stands for the `Session` the events name (held weakly by them)."""


@dataclass
class _Contract:
    """What the documents say a session does; verbs answer ("send", message),
    ("nothing", None) or ("raise", SessionError subclass)."""

    auto_proceed: bool
    pty: bool
    stage: str = "starting"
    released: bool = False  # proceed() sent, or auto_proceed
    abort_asked: bool = False
    host_pid: int | None = None
    child_pid: int | None = None
    result: Any = None
    eof: bool = False
    status_known: bool = False
    status: int | None = None
    events: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.released = self.auto_proceed  # design.md: released from the start

    @property
    def live(self) -> bool:
        return self.stage not in TERMINAL

    # --- verbs: design.md's table; the reference's wording where it is finer -----------

    def proceed(self) -> tuple[str, Any]:
        if not self.live:
            return ("raise", NoProcess)
        if self.stage in ("starting", "spawned"):
            return ("raise", NotReady)
        if self.released or self.stage == "running":
            return ("raise", AlreadyRunning)
        if self.abort_asked:
            # Silent in the reference (abort is fire-and-forget, :aborted follows); the
            # session's docstring decides: the workload will never run, so NoProcess.
            return ("raise", NoProcess)
        self.released = True
        return ("send", _wire.Proceed())

    def abort(self) -> tuple[str, Any]:
        if not self.live:
            return ("raise", NoProcess)
        if self.released or self.stage == "running":
            return ("raise", AlreadyRunning)
        if self.abort_asked:
            return ("nothing", None)  # the agent has it already (buffered, or acting)
        self.abort_asked = True
        return ("send", _wire.Abort())

    def signal(self, signum: int) -> tuple[str, Any]:
        if not self.live:
            return ("raise", NoProcess)
        return ("send", _wire.Signal(signum=signum))  # the agent buffers it until RUNNING

    def require_pty(self) -> tuple[str, Any]:
        if not self.pty:
            return ("raise", NoPty)  # in every stage, an ended one too (design.md)
        if not self.live:
            return ("raise", NoProcess)
        return ("nothing", None)

    # --- inputs: protocol.md's wire order, design.md's stage moves ---------------------

    def frame(self, message: _wire.Message) -> None:
        if not self.live or isinstance(message, _wire.Notice):
            return
        if not self._in_order(message):
            self._fail("protocol", errno.EPROTO)
        elif isinstance(message, _wire.Spawned):
            self.stage, self.host_pid = "spawned", message.host_pid
        elif isinstance(message, _wire.Ready):
            self.stage, self.child_pid = "ready", message.child_pid
            self.events.append(Ready(message.host_pid))
        elif isinstance(message, _wire.Running):
            self.stage = "running"
            self.events.append(Running())
        elif isinstance(message, _wire.Error):
            self._fail(message.stage.decode("ascii"), message.errno)
        else:
            self._end(message)

    def _in_order(self, message: _wire.Message) -> bool:
        if isinstance(message, _wire.Ready):
            # The reference: host_pid/1 after :spawned is "the same value the owner
            # receives in :ready". A READY that says otherwise breaks the contract.
            return self.stage == "spawned" and message.host_pid == self.host_pid
        previous = {
            _wire.Spawned: ("starting",),
            _wire.Running: ("ready",),
            _wire.Exited: ("running",),
            _wire.Signaled: ("running",),
            _wire.Aborted: ("ready",),
            _wire.Error: ("starting", "spawned", "ready", "running"),
        }
        return self.stage in previous[type(message)]

    def _end(self, message: _wire.Message) -> None:
        if isinstance(message, _wire.Exited):
            self._settle("exited", Exited(message.code))
        elif isinstance(message, _wire.Signaled):
            self._settle("signaled", Signaled(message.signum))
        else:
            self._settle("aborted", Aborted())

    def channel_closed(self) -> None:
        self.eof = True
        if self.live and self.status_known:
            self._fail("agent_died", self.status)

    def agent_exited(self, status: int | None) -> None:
        self.status_known, self.status = True, status
        if self.live and self.eof:
            self._fail("agent_died", status)

    def channel_broken(self) -> None:
        if self.live:
            self._fail("protocol", errno.EPROTO)

    def launch_failed(self, stage: str, code: int) -> None:
        if self.live:
            self._fail(stage, code)

    def _fail(self, stage: str, code: int | None) -> None:
        error = ProcessError(stage, code)
        self.stage, self.result = "errored", error
        self.events.append(Failed(error))

    def _settle(self, stage: str, outcome: Exited | Signaled | Aborted) -> None:
        self.stage, self.result = stage, outcome
        self.events.append(outcome)

    def exit_reason(self) -> object:
        """The reference's child_spec mapping, SPEC §4's spelling."""
        result = self.result
        if isinstance(result, Exited):
            return "normal" if result.code == 0 else ("exited", result.code)
        if isinstance(result, Signaled):
            return ("signaled", result.signum)
        if isinstance(result, Aborted):
            return ("shutdown", "aborted")
        return ("error", result)


def _legal_prefix(events: list[Event]) -> bool:
    """Ready, Running, one outcome, each at most once and in that order; Aborted only
    after Ready without Running, Exited and Signaled only after Running; Failed anywhere."""
    names = [type(e).__name__ for e in events]
    legal = [
        [],
        ["Failed"],
        ["Ready"],
        ["Ready", "Failed"],
        ["Ready", "Aborted"],
        ["Ready", "Running"],
        ["Ready", "Running", "Failed"],
        ["Ready", "Running", "Exited"],
        ["Ready", "Running", "Signaled"],
    ]
    return names in legal


# Agent frames with values that may contradict earlier ones.
FRAMES: dict[str, st.SearchStrategy[_wire.Message]] = {
    "spawned": st.builds(_wire.Spawned, host_pid=HOST_PIDS, agent_pid=st.none() | st.just(4241)),
    "ready": st.builds(_wire.Ready, host_pid=HOST_PIDS, child_pid=CHILD_PIDS),
    "running": st.builds(_wire.Running),
    "exited": st.builds(_wire.Exited, code=st.integers(0, 255)),
    "signaled": st.builds(_wire.Signaled, signum=st.integers(1, 64)),
    "aborted": st.builds(_wire.Aborted),
    "error": st.builds(_wire.Error, stage=STAGE_NAMES, errno=st.integers(1, 133)),
    "notice": st.builds(_wire.Notice, stage=NOTICE_STAGES, errno=st.integers(1, 133)),
}
# Per stage, what a faulty agent would most likely say: the next frame with other values,
# one that skips a step, repeats one, or was never asked for.
ODD_FRAMES = {
    "starting": ["ready", "running", "exited"],
    "spawned": ["ready", "spawned", "aborted"],
    "ready": ["running", "aborted", "exited", "ready"],
    "running": ["aborted", "exited", "signaled", "running"],
}
ODD_AFTER_THE_END = ["exited", "error", "running", "ready"]


class SessionModel(RuleBasedStateMachine):
    """Drive `SessionState` and `_Contract` side by side.

    Two rules, the caller's and the agent's. The agent mostly says what a working agent
    would say next (a session that goes wrong at its first step reaches no deep stage);
    now and then what a faulty one might (a frame out of order, or contradicting an
    earlier one), any frame at all, an EOF, bytes that are no frame, or the launcher's
    word on the agent's exit.
    """

    def __init__(self) -> None:
        super().__init__()
        self.handle: object = _Handle()
        self.state = SessionState()
        self.model = _Contract(auto_proceed=False, pty=False)
        self.events: list[Event] = []
        self.first_host_pid: int | None = None
        self.broken = False  # the channel closes its socket then: no frame or EOF follows

    @initialize(auto_proceed=st.booleans(), pty=st.booleans())
    def start(self, auto_proceed: bool, pty: bool) -> None:
        handle = self.handle
        self.state = SessionState(auto_proceed=auto_proceed, pty=pty, session=lambda: handle)
        self.model = _Contract(auto_proceed=auto_proceed, pty=pty)

    # --- the caller ------------------------------------------------------------------------

    @rule(
        verb=st.sampled_from(["proceed", "abort", "signal", "require_pty"]),
        signum=st.integers(1, 64),
    )
    def caller(self, verb: str, signum: int) -> None:
        if verb == "signal":
            self._verb(lambda: self.state.signal(signum), self.model.signal(signum))
        else:
            self._verb(getattr(self.state, verb), getattr(self.model, verb)())

    def _verb(self, call: Any, expected: tuple[str, Any]) -> None:
        kind, value = expected
        try:
            got = call()
        except SessionError as exc:
            assert kind == "raise", f"raised {exc!r}, contract says {expected}"
            assert type(exc) is value, f"raised {exc!r}, contract says {value.__name__}"
            return
        assert kind != "raise", f"returned {got!r}, contract says {value.__name__}"
        assert got == value, f"returned {got!r}, contract says {value!r}"

    # --- the agent, and the launcher about the agent ---------------------------------------

    @rule(data=st.data())
    def agent(self, data: st.DataObject) -> None:
        # Mostly the next frame of a working agent, so that sessions reach the deep stages
        # (shrinking prefers the first entry); now and then trouble of any kind.
        choice = data.draw(st.sampled_from(["next"] * 6 + ["odd", "trouble"]), label="agent")
        if choice == "next":
            self._frame(self._next_frame(data))
            return
        if choice == "odd":
            odd = ODD_FRAMES.get(self.model.stage, ODD_AFTER_THE_END)
            self._frame(data.draw(st.sampled_from(odd).flatmap(FRAMES.__getitem__)))
            return
        troubles = ["any"]
        if not self.model.eof and not self.broken:
            troubles += ["eof", "broken"]
        if not self.model.status_known:
            troubles.append("status")  # the launcher reports an agent once
        if self.model.stage == "starting" and not self.model.eof:
            troubles.append("launch_failed")  # no agent was forked
        self._trouble(data, data.draw(st.sampled_from(troubles), label="trouble"))

    def _trouble(self, data: st.DataObject, trouble: str) -> None:
        if trouble == "any":
            self._frame(data.draw(st.one_of(*FRAMES.values()), label="frame"))
        elif trouble == "status":
            status = data.draw(STATUSES, label="status")
            self.model.agent_exited(status)
            self.events += self.state.agent_exited(status)
        elif trouble == "eof":
            self.model.channel_closed()
            self.events += self.state.channel_closed()
        elif trouble == "broken":
            self.broken = True
            self.model.channel_broken()
            self.events += self.state.channel_broken()
        else:
            self.model.launch_failed("fork", errno.EAGAIN)
            self.events += self.state.launch_failed("fork", errno.EAGAIN)

    def _frame(self, frame: _wire.Message) -> None:
        if self.model.eof or self.broken:
            return  # the socket is closed: nothing more is read
        self.model.frame(frame)
        self.events += self.state.receive(frame)

    def _next_frame(self, data: st.DataObject) -> _wire.Message:
        """What a working agent says next (protocol.md: "Agent behaviour per command")."""
        model = self.model
        if model.stage == "starting":
            return data.draw(st.builds(_wire.Spawned, host_pid=HOST_PIDS), label="frame")
        if model.stage == "spawned":
            child_pid = data.draw(CHILD_PIDS, label="child_pid")
            return _wire.Ready(host_pid=model.host_pid or 0, child_pid=child_pid)
        if model.stage == "ready" and model.released:
            going_on: list[_wire.Message] = [_wire.Running()]
        elif model.stage == "ready" and model.abort_asked:
            going_on = [_wire.Aborted()]
        elif model.stage == "running":
            going_on = [_wire.Exited(code=0), _wire.Exited(code=3), _wire.Signaled(signum=9)]
        else:
            # Parked without a verb, or ended: the agent has nothing to say.
            return _wire.Notice(stage=b"proceed", errno=errno.EAGAIN)
        failure = _wire.Error(stage=b"execve", errno=errno.ENOENT)
        return data.draw(st.sampled_from(going_on * 3 + [failure]), label="frame")

    # --- after every step ------------------------------------------------------------------

    @invariant()
    def info_matches(self) -> None:
        model = self.model
        want = Info(
            "spawn", Stage(model.stage), model.host_pid, model.child_pid, model.pty, model.result
        )
        assert self.state.info() == want
        assert self.state.terminal == (not model.live)

    @invariant()
    def events_match(self) -> None:
        assert self.events == self.model.events
        assert all(event.session is self.handle for event in self.events)
        assert _legal_prefix(self.events), self.events

    @invariant()
    def one_terminal_event_and_nothing_after(self) -> None:
        ends = [
            i
            for i, e in enumerate(self.events)
            if isinstance(e, Exited | Signaled | Aborted | Failed)
        ]
        assert len(ends) <= 1
        if ends:
            assert ends[0] == len(self.events) - 1
            ending = self.events[-1]
            result = self.state.result
            assert (ending.error if isinstance(ending, Failed) else ending) == result

    @invariant()
    def host_pid_never_changes(self) -> None:
        host_pid = self.state.host_pid
        if self.first_host_pid is None:
            self.first_host_pid = host_pid
        assert host_pid == self.first_host_pid, f"host_pid {self.first_host_pid} -> {host_pid}"
        readies = [e.host_pid for e in self.events if isinstance(e, Ready)]
        assert readies in ([], [host_pid])

    @invariant()
    def exit_reason_follows_the_reference(self) -> None:
        if self.state.result is not None:
            assert exit_reason(self.state.result) == self.model.exit_reason()


SessionModel.TestCase.settings = settings(max_examples=300, stateful_step_count=25, deadline=None)
test_session_state_against_the_contract = SessionModel.TestCase
