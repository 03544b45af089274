"""The session state machine, without processes: the reference's per-stage table."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linx import _wire
from linx._state import SessionState, Stage, exit_reason
from linx.errors import AlreadyRunning, NoProcess, NoPty, NotReady, ProcessError
from linx.events import Aborted, Event, Exited, Failed, Ready, Running, Signaled

TERMINAL_EVENTS = (Exited, Signaled, Aborted, Failed)


def _at(stage: Stage, **kw: bool) -> SessionState:
    state = SessionState(**kw)  # type: ignore[arg-type]
    path = [
        _wire.Spawned(host_pid=10, agent_pid=9),
        _wire.Ready(host_pid=10, child_pid=1),
        _wire.Running(),
    ]
    order = [Stage.STARTING, Stage.SPAWNED, Stage.READY, Stage.RUNNING]
    for message in path[: order.index(stage)]:
        if isinstance(message, _wire.Running):
            state.proceed()
        state.receive(message)
    assert state.stage is stage
    return state


def test_happy_path_events_in_order() -> None:
    state = SessionState()
    assert state.receive(_wire.Spawned(host_pid=42, agent_pid=41)) == []
    assert state.host_pid == 42
    assert state.receive(_wire.Ready(host_pid=42, child_pid=1)) == [Ready(42)]
    state.proceed()
    assert state.receive(_wire.Running()) == [Running()]
    assert state.receive(_wire.Exited(code=0)) == [Exited(0)]
    assert state.info().stage is Stage.EXITED and state.info().result == Exited(0)
    assert state.info().child_pid == 1


@pytest.mark.parametrize("stage", [Stage.STARTING, Stage.SPAWNED])
def test_proceed_before_ready_is_not_ready(stage: Stage) -> None:
    with pytest.raises(NotReady):
        _at(stage).proceed()


def test_proceed_twice_is_already_running() -> None:
    state = _at(Stage.READY)
    state.proceed()
    with pytest.raises(AlreadyRunning):
        state.proceed()


def test_proceed_with_auto_proceed_is_already_running() -> None:
    with pytest.raises(AlreadyRunning):
        _at(Stage.READY, auto_proceed=True).proceed()


@pytest.mark.parametrize("stage", [Stage.STARTING, Stage.SPAWNED, Stage.READY])
def test_abort_before_running_is_sent(stage: Stage) -> None:
    assert _at(stage).abort() == _wire.Abort()


def test_abort_once_running_is_already_running() -> None:
    with pytest.raises(AlreadyRunning):
        _at(Stage.RUNNING).abort()


def test_abort_after_proceed_is_already_running() -> None:
    state = _at(Stage.READY)
    state.proceed()
    with pytest.raises(AlreadyRunning):
        state.abort()


@pytest.mark.parametrize("stage", [Stage.STARTING, Stage.SPAWNED, Stage.READY])
def test_abort_with_auto_proceed_is_already_running(stage: Stage) -> None:
    with pytest.raises(AlreadyRunning):
        _at(stage, auto_proceed=True).abort()


@pytest.mark.parametrize("stage", [Stage.STARTING, Stage.SPAWNED, Stage.READY, Stage.RUNNING])
def test_signal_is_accepted_in_every_live_stage(stage: Stage) -> None:
    assert _at(stage).signal(15) == _wire.Signal(signum=15)


@pytest.mark.parametrize(
    "ending",
    [_wire.Exited(code=1), _wire.Signaled(signum=9), _wire.Error(stage=b"execve", errno=2)],
)
def test_every_verb_after_the_end_is_no_process(ending: _wire.Message) -> None:
    state = _at(Stage.RUNNING)
    state.receive(ending)
    for verb in (state.proceed, state.abort, lambda: state.signal(9)):
        with pytest.raises(NoProcess):
            verb()


def test_pty_verbs_without_pty_are_no_pty() -> None:
    with pytest.raises(NoPty):
        _at(Stage.RUNNING).require_pty()


def test_pty_verbs_without_pty_are_no_pty_after_the_end_too() -> None:
    # design.md's table: NoPty in every stage, an ended one included (NoProcess only once
    # closed, which the channel decides)
    state = _at(Stage.RUNNING)
    state.receive(_wire.Exited(code=0))
    with pytest.raises(NoPty):
        state.require_pty()


@pytest.mark.parametrize("stage", [Stage.STARTING, Stage.SPAWNED, Stage.READY])
def test_a_second_abort_sends_nothing_and_a_proceed_after_abort_is_no_process(
    stage: Stage,
) -> None:
    state = _at(stage)
    assert state.abort() == _wire.Abort()
    assert state.abort() is None  # the agent has it already
    if stage is Stage.READY:
        with pytest.raises(NoProcess):  # the workload will never run
            state.proceed()


def test_error_frame_is_a_failed_event_with_stage_and_errno() -> None:
    state = _at(Stage.READY)
    state.proceed()
    [event] = state.receive(_wire.Error(stage=b"execve", errno=errno.ENOENT))
    assert isinstance(event, Failed)
    assert event.error.stage == "execve" and event.error.errno == errno.ENOENT
    assert str(event.error) == "process execve failed: ENOENT (errno 2)"
    assert state.stage is Stage.ERRORED


def test_a_failed_stage_names_the_path_the_spawn_gave_it_and_only_that_stage() -> None:
    paths = {"execve": "/bin/x", "chdir": "/srv"}
    for stage, path in [("execve", "/bin/x"), ("chdir", "/srv"), ("setuid", None)]:
        state = SessionState(path_of=paths.get)
        state.receive(_wire.Spawned(host_pid=7))
        [event] = state.receive(_wire.Error(stage=stage.encode(), errno=errno.EPERM))
        assert isinstance(event, Failed)
        assert event.error.filename == path
        assert (repr(path) in str(event.error)) is (path is not None)


def test_agent_death_needs_both_eof_and_status_in_either_order() -> None:
    first = _at(Stage.RUNNING)
    assert first.channel_closed() == []
    [event] = first.agent_exited(-9)
    assert isinstance(event, Failed) and event.error.stage == "agent_died"
    assert event.error.errno is None and event.error.code == -9
    second = _at(Stage.RUNNING)
    assert second.agent_exited(-9) == []
    [again] = second.channel_closed()
    assert again == event


def test_agent_exit_after_a_terminal_frame_is_ignored() -> None:
    state = _at(Stage.RUNNING)
    state.receive(_wire.Exited(code=0))
    assert state.channel_closed() == [] and state.agent_exited(0) == []


def test_out_of_order_message_is_a_protocol_failure() -> None:
    [event] = SessionState().receive(_wire.Running())
    assert isinstance(event, Failed) and event.error.errno == errno.EPROTO


LIVE_STAGES = (Stage.STARTING, Stage.SPAWNED, Stage.READY, Stage.RUNNING)
# protocol.md's wire order, read again: each agent frame and the stages it may follow.
FRAME_FOLLOWS = [
    (_wire.Spawned(host_pid=10, agent_pid=9), {Stage.STARTING}),
    (_wire.Ready(host_pid=10, child_pid=1), {Stage.SPAWNED}),
    (_wire.Running(), {Stage.READY}),
    (_wire.Exited(code=0), {Stage.RUNNING}),
    (_wire.Signaled(signum=9), {Stage.RUNNING}),
    (_wire.Aborted(), {Stage.READY}),
    (_wire.Error(stage=b"clone", errno=errno.EPERM), set(LIVE_STAGES)),
]


@pytest.mark.parametrize("stage", LIVE_STAGES)
@pytest.mark.parametrize(("frame", "follows"), FRAME_FOLLOWS)
def test_each_frame_is_taken_only_in_the_stages_it_may_follow(
    stage: Stage, frame: _wire.Message, follows: set[Stage]
) -> None:
    # Every cell of the table, not a sample: a frame let in one stage too early (RUNNING
    # straight after SPAWNED, ABORTED once running) would skip an event or end a running
    # workload's session as Aborted.
    state = _at(stage)
    events = state.receive(frame)
    refused = [Failed(ProcessError("protocol", errno.EPROTO))]
    assert (events == refused) == (stage not in follows), (stage, frame, events)


def test_ready_naming_another_host_pid_than_spawned_is_a_protocol_failure() -> None:
    state = SessionState()
    state.receive(_wire.Spawned(host_pid=42, agent_pid=41))
    [event] = state.receive(_wire.Ready(host_pid=43, child_pid=1))
    assert isinstance(event, Failed) and event.error.stage == "protocol"
    assert state.host_pid == 42  # what a caller may have used already stays


@pytest.mark.parametrize(
    "late",
    [
        lambda s: s.launch_failed("fork", errno.EAGAIN),
        lambda s: s.channel_broken(),
        lambda s: s.receive(_wire.Error(stage=b"execve", errno=errno.ENOENT)),
    ],
    ids=["launch_failed", "channel_broken", "error_frame"],
)
def test_no_failure_after_the_terminal_event(late: Callable[[SessionState], list[Event]]) -> None:
    state = _at(Stage.RUNNING)
    assert state.receive(_wire.Exited(code=0)) == [Exited(0)]
    assert late(state) == []
    assert state.stage is Stage.EXITED and state.result == Exited(0)


def test_exit_reasons_follow_the_reference() -> None:
    assert exit_reason(Exited(0)) == "normal"
    assert exit_reason(Exited(3)) == ("exited", 3)
    assert exit_reason(Signaled(9)) == ("signaled", 9)
    assert exit_reason(Aborted()) == ("shutdown", "aborted")
    error = ProcessError("chdir", 2)
    assert exit_reason(error) == ("error", error)


agent_inputs = st.one_of(
    st.builds(_wire.Spawned, host_pid=st.integers(1, 99), agent_pid=st.none()),
    st.builds(_wire.Ready, host_pid=st.integers(1, 99), child_pid=st.none()),
    st.builds(_wire.Running),
    st.builds(_wire.Exited, code=st.integers(0, 255)),
    st.builds(_wire.Signaled, signum=st.integers(1, 64)),
    st.builds(_wire.Aborted),
    st.builds(_wire.Error, stage=st.just(b"clone"), errno=st.integers(1, 133)),
    st.builds(_wire.Notice, stage=st.just(b"signal"), errno=st.just(3)),
    st.just("eof"),
    st.just("broken"),
    st.integers(-64, 255).map(lambda s: ("status", s)),
    st.just("proceed"),
    st.just("abort"),
)


@given(st.lists(agent_inputs, max_size=20), st.booleans())
def test_any_input_sequence_gives_at_most_one_terminal_event_and_nothing_after(
    inputs: list[object], auto: bool
) -> None:
    state = SessionState(auto_proceed=auto)
    events = []
    for item in inputs:
        if item == "eof":
            events += state.channel_closed()
        elif item == "broken":
            events += state.channel_broken()
        elif isinstance(item, tuple):
            events += state.agent_exited(item[1])
        elif item in ("proceed", "abort"):
            try:
                state.proceed() if item == "proceed" else state.abort()
            except (NotReady, AlreadyRunning, NoProcess):
                pass
        else:
            assert isinstance(item, _wire.Message)
            events += state.receive(item)
    terminal = [i for i, e in enumerate(events) if isinstance(e, TERMINAL_EVENTS)]
    assert len(terminal) <= 1
    if terminal:
        assert terminal[0] == len(events) - 1
        assert state.terminal and state.result is not None
    assert [e for e in events if isinstance(e, Ready)][1:] == []
