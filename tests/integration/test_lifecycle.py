"""The session lifecycle against real processes: the per-stage table, endings, owners, close.

Nothing is mocked: every test clones a real child through a real agent. Where a test needs
the session to be provably *before* `Ready`, it stalls the agent in a host-side
`connect_unix` on a listener whose backlog is full (see `stalled_listener`), so no timing
assumption is involved.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import multiprocessing.queues
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import linx
from tests.conftest import (
    Pipe,
    capture_stdout,
    drain,
    expect,
    next_event,
    no_more_events,
    pid_alive,
    process_state,
    short_tmp_dir,
    wait_until,
)

Factory = Callable[..., linx.Session]


class Stall:
    """A unix socket path whose `connect()` blocks until `release()`."""

    def __init__(self, path: str, server: socket.socket) -> None:
        self.path = path
        self._server = server
        self._held: list[socket.socket] = []

    def release(self) -> socket.socket:
        """Unblock the stalled connect and return the server side of that connection."""
        filler, _ = self._server.accept()  # frees the one backlog slot...
        self._held.append(filler)
        self._server.settimeout(10.0)
        conn, _ = self._server.accept()  # ...so the agent's connect completes
        self._held.append(conn)
        return conn

    def close(self) -> None:
        for sock in self._held:
            sock.close()
        self._server.close()


@contextlib.contextmanager
def stalled_listener() -> Iterator[Stall]:
    """A listening AF_UNIX socket with a full backlog: `connect()` to it blocks.

    With `stdio={"stdout": ("connect_unix", stall.path)}` the agent blocks in its host-side
    connect before it clones, so the session provably stays at `starting` (no `Spawned`,
    no `Ready`) until the test calls `stall.release()`.
    """
    with short_tmp_dir() as directory:
        yield from _stalled_at(os.path.join(directory, "s"))


def _stalled_at(path: str) -> Iterator[Stall]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    clients: list[socket.socket] = []
    try:
        server.bind(path)
        server.listen(0)  # room for exactly one pending connection
        for _ in range(8):  # fill the backlog, proving it is full with a refused probe
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            clients.append(client)
            try:
                client.connect(path)
            except BlockingIOError:
                break
        else:
            pytest.fail("could not fill the listener's backlog")
        stall = Stall(path, server)
        try:
            yield stall
        finally:
            stall.close()
    finally:
        server.close()
        for client in clients:
            client.close()


def marker_workload(marker: Path) -> list[str]:
    """A workload whose only effect is creating `marker`: proof that it ran."""
    return ["/bin/sh", "-c", f"touch {marker}"]


# --- the per-stage table --------------------------------------------------------------


def test_proceed_before_ready_raises_not_ready(session_factory: Factory) -> None:
    with stalled_listener() as stall:
        session = session_factory(
            ["/bin/sh", "-c", "echo hi"], stdio={"stdout": ("connect_unix", stall.path)}
        )
        info = session.info()
        assert info.stage == linx.Stage.STARTING
        assert info.host_pid is None
        assert session.host_pid is None
        with pytest.raises(linx.NotReady):
            session.proceed()
        # The refused proceed changed nothing: the child still reaches the checkpoint.
        conn = stall.release()
        expect(session, linx.Ready)
        session.proceed()
        expect(session, linx.Running)
        assert expect(session, linx.Exited).code == 0
        conn.settimeout(10.0)
        assert conn.recv(100) == b"hi\n"


@pytest.mark.parametrize("verb", ["proceed", "abort"])
def test_proceed_or_abort_once_proceeded_raises_already_running(
    session_factory: Factory, verb: str
) -> None:
    session = session_factory(["/bin/sleep", "30"])
    expect(session, linx.Ready)
    session.proceed()
    with pytest.raises(linx.AlreadyRunning):  # proceeded, not yet running
        getattr(session, verb)()
    expect(session, linx.Running)
    with pytest.raises(linx.AlreadyRunning):  # running
        getattr(session, verb)()
    assert session.info().stage == linx.Stage.RUNNING
    # The refused verb did not touch the workload.
    assert no_more_events(session)
    assert session.host_pid is not None and pid_alive(session.host_pid)
    session.signal(signal.SIGKILL)
    assert expect(session, linx.Signaled).signum == signal.SIGKILL


def test_abort_at_ready_gives_aborted_and_the_workload_never_runs(
    session_factory: Factory, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    session = session_factory(marker_workload(marker))
    ready = expect(session, linx.Ready)
    session.abort()
    assert isinstance(next_event(session), linx.Aborted)
    assert session.wait(timeout=10) == linx.Aborted()
    assert no_more_events(session)
    assert not marker.exists()
    assert not pid_alive(ready.host_pid)
    info = session.info()
    assert info.stage == linx.Stage.ABORTED
    assert info.result == linx.Aborted()


def test_abort_before_ready_is_buffered_and_fires_at_ready(
    session_factory: Factory, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    with stalled_listener() as stall:
        session = session_factory(
            marker_workload(marker), stdio={"stdout": ("connect_unix", stall.path)}
        )
        session.abort()  # the agent is stuck before the clone: this must be buffered
        assert session.info().stage == linx.Stage.STARTING
        session.abort()  # a second buffered abort is harmless
        stall.release()
        events = drain(session)
    assert [type(e) for e in events] == [linx.Ready, linx.Aborted]
    assert no_more_events(session)
    assert session.wait(timeout=10) == linx.Aborted()
    assert not marker.exists()
    ready = events[0]
    assert isinstance(ready, linx.Ready)
    assert not pid_alive(ready.host_pid)


def _sigterm_waits_for_running(session: linx.Session, ready: linx.Ready) -> None:
    """A SIGTERM sent before `Running` is buffered, not delivered to the parked child (it is
    still there and nothing happened), and ends the workload once it runs."""
    assert no_more_events(session, within=0.2)
    assert pid_alive(ready.host_pid)
    session.proceed()
    events = drain(session)
    assert [type(e) for e in events] == [linx.Running, linx.Signaled]
    assert events[-1] == linx.Signaled(signum=signal.SIGTERM)


def test_signal_before_proceed_is_delivered_at_running(session_factory: Factory) -> None:
    # No pid namespace: a pid-namespace init ignores SIGTERM without a handler.
    session = session_factory(["/bin/sleep", "30"])
    ready = expect(session, linx.Ready)
    session.signal(signal.SIGTERM)
    _sigterm_waits_for_running(session, ready)
    assert session.wait(timeout=10) == linx.Signaled(signum=signal.SIGTERM)


def test_signal_before_ready_is_delivered_at_running(session_factory: Factory) -> None:
    with stalled_listener() as stall:
        session = session_factory(
            ["/bin/sleep", "30"], stdio={"stdout": ("connect_unix", stall.path)}
        )
        session.signal(signal.SIGTERM)
        assert session.info().stage == linx.Stage.STARTING
        stall.release()
        ready = expect(session, linx.Ready)
        _sigterm_waits_for_running(session, ready)


def test_a_signal_sent_while_a_large_request_is_still_being_written_follows_it(
    session_factory: Factory,
) -> None:
    # A 1.5 MiB environment (under execve's limits) takes several writes to reach the
    # agent; a verb called meanwhile must queue its command after the rest of the
    # request, not inside it.
    env = {f"BIG{i}": "x" * (100 << 10) for i in range(15)}
    session = session_factory(["/bin/sleep", "30"], env=env, auto_proceed=True)
    session.signal(signal.SIGTERM)
    assert session.wait(timeout=30) == linx.Signaled(signal.SIGTERM)


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)],
    ids=["SIGINT-then-SIGTERM", "SIGTERM-then-SIGINT"],
)
def test_buffered_signals_are_delivered_in_the_order_sent(
    session_factory: Factory, first: signal.Signals, second: signal.Signals
) -> None:
    # The kernel lets the first fatal signal decide the death signal (the group exit it
    # starts drops the later one), so the outcome names whichever was delivered first.
    # Delivered in the other order, each case would end with the other signal.
    session = session_factory(["/bin/sleep", "30"])
    expect(session, linx.Ready)
    session.signal(first)
    session.signal(second)
    session.proceed()
    expect(session, linx.Running)
    assert expect(session, linx.Signaled).signum == first


def test_a_sigkill_sent_once_the_signal_buffer_is_full_still_ends_the_workload(
    session_factory: Factory,
) -> None:
    # The agent buffers at most 65536 signals before Running and drops the rest with a
    # notice; a SIGKILL among them would leave running a workload its caller killed.
    session = session_factory(["/bin/sleep", "30"])
    expect(session, linx.Ready)
    for _ in range(65536 + 10):
        session.signal(signal.SIGWINCH)  # ignored by sleep
    session.signal(signal.SIGKILL)
    session.proceed()
    expect(session, linx.Running)
    assert session.wait(timeout=20) == linx.Signaled(signum=signal.SIGKILL)


# --- endings ------------------------------------------------------------------------------


def test_exactly_one_terminal_event_and_none_after(session_factory: Factory) -> None:
    session = session_factory(["/bin/true"])
    expect(session, linx.Ready)
    session.proceed()
    events = drain(session)
    assert [type(e) for e in events] == [linx.Running, linx.Exited]
    assert all(e.session is session for e in events)
    assert no_more_events(session)
    # Verbs that fail after the end produce no event either.
    with pytest.raises(linx.NoProcess):
        session.signal(signal.SIGTERM)
    assert no_more_events(session, within=0.1)


@pytest.mark.parametrize("ending", ["exited", "signaled", "aborted", "errored"])
def test_info_stage_walks_the_lifecycle_to_each_kind_of_ending(
    session_factory: Factory, pipe: Pipe, ending: str
) -> None:
    argv = {
        "exited": ["/bin/sh", "-c", "read line; exit 5"],  # exits at EOF on its stdin
        "signaled": ["/bin/sleep", "30"],
        "aborted": ["/bin/true"],
        "errored": ["/nonexistent/linx-test-binary"],
    }[ending]
    session = session_factory(argv, stdio={"stdin": pipe.read_end})
    assert session.info().stage in (linx.Stage.STARTING, linx.Stage.SPAWNED, linx.Stage.READY)
    ready = expect(session, linx.Ready)
    info = session.info()
    assert (info.stage, info.host_pid, info.result) == (linx.Stage.READY, ready.host_pid, None)
    assert info.mode == "spawn" and info.pty is False
    if ending == "aborted":
        session.abort()
        outcome: object = expect(session, linx.Aborted)
        assert outcome == linx.Aborted()
    else:
        session.proceed()
        if ending == "errored":
            failed = expect(session, linx.Failed)
            outcome = failed.error
            assert failed.error.stage == "execve"
        else:
            expect(session, linx.Running)
            assert session.info().stage == linx.Stage.RUNNING
            if ending == "signaled":
                session.signal(signal.SIGKILL)
                outcome = expect(session, linx.Signaled)
                assert outcome == linx.Signaled(signum=signal.SIGKILL)
            else:
                pipe.close_write()
                outcome = expect(session, linx.Exited)
                assert outcome == linx.Exited(code=5)
    assert no_more_events(session)
    info = session.info()
    assert info.stage == linx.Stage(ending)
    assert info.result == outcome
    assert info.host_pid == ready.host_pid


def _proceed_while_eight_threads_wait(session: linx.Session) -> list[object]:
    """Release the parked `session` while eight threads are in `wait()`; what each got back
    (its outcome, or the exception it raised)."""
    results: list[object] = []
    lock = threading.Lock()
    waiting = threading.Barrier(9)

    def waiter() -> None:
        waiting.wait()
        try:
            result: object = session.wait(timeout=20)
        except BaseException as exc:
            result = exc
        with lock:
            results.append(result)

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for thread in threads:
        thread.start()
    waiting.wait()  # every thread is about to wait on the parked session
    session.proceed()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    return results


def test_wait_from_eight_threads_all_get_the_same_outcome(session_factory: Factory) -> None:
    session = session_factory(["/bin/sh", "-c", "exit 7"])
    expect(session, linx.Ready)
    assert _proceed_while_eight_threads_wait(session) == [linx.Exited(code=7)] * 8


def test_wait_from_eight_threads_all_raise_the_same_process_error(
    session_factory: Factory,
) -> None:
    session = session_factory(["/nonexistent/linx-test-binary"])
    expect(session, linx.Ready)
    errors = _proceed_while_eight_threads_wait(session)
    assert len(errors) == 8
    for error in errors:
        assert isinstance(error, linx.ProcessError)
        assert (error.stage, error.errno) == ("execve", 2)


def test_wait_timeout_on_a_parked_session_raises_and_leaves_it_usable(
    session_factory: Factory,
) -> None:
    session = session_factory(["/bin/sh", "-c", "exit 4"])
    expect(session, linx.Ready)
    with pytest.raises(TimeoutError):
        session.wait(timeout=0.2)
    assert session.info().stage == linx.Stage.READY
    assert no_more_events(session, within=0.1)
    session.proceed()
    expect(session, linx.Running)
    assert session.wait(timeout=10) == linx.Exited(code=4)


def test_wait_refuses_a_bad_timeout_and_leaves_the_session_as_it_was(
    session_factory: Factory,
) -> None:
    session = session_factory(["/bin/sh", "-c", "exit 5"])
    expect(session, linx.Ready)
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None, not '1'"):
        session.wait(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not nan"):
        session.wait(timeout=float("nan"))
    assert session.info().stage == linx.Stage.READY
    session.proceed()
    assert session.wait(timeout=float("inf")) == linx.Exited(code=5)


def _every_verb() -> list[tuple[str, Callable[[linx.Session], object]]]:
    return [
        ("proceed", lambda s: s.proceed()),
        ("abort", lambda s: s.abort()),
        ("signal", lambda s: s.signal(signal.SIGTERM)),
        ("info", lambda s: s.info()),
        ("wait", lambda s: s.wait(timeout=1)),
        ("set_owner", lambda s: s.set_owner(queue.Queue())),
        ("pty_write", lambda s: s.pty_write(b"x")),
        ("pty_set_winsize", lambda s: s.pty_set_winsize((24, 80, 0, 0))),
    ]


def test_pty_write_refuses_data_that_is_not_bytes_before_anything_else(
    session_factory: Factory,
) -> None:
    # A str is the caller's mistake, named as such, whatever the session's state: not
    # NoPty, which would send the caller looking for a terminal that has nothing to do
    # with it.
    session = session_factory(["/bin/true"])
    expect(session, linx.Ready)
    with pytest.raises(TypeError, match="data must be bytes"):
        session.pty_write("text")  # type: ignore[arg-type]
    with pytest.raises(linx.NoPty):
        session.pty_write(b"text")


@pytest.mark.parametrize("when", ["after-exit", "while-parked", "while-running"])
def test_every_verb_after_close_raises_no_process(session_factory: Factory, when: str) -> None:
    session = session_factory(["/bin/sleep", "30"] if when == "while-running" else ["/bin/true"])
    ready = expect(session, linx.Ready)
    expected_reason: object
    if when == "after-exit":
        session.proceed()
        assert session.wait(timeout=10) == linx.Exited(code=0)
        expected_reason = "normal"
    elif when == "while-running":
        session.proceed()
        expect(session, linx.Running)
        expected_reason = ("signaled", signal.SIGKILL)
    else:
        expected_reason = ("shutdown", "aborted")
    session.close()
    for name, verb in _every_verb():
        with pytest.raises(linx.NoProcess):
            verb(session)
            pytest.fail(f"{name}() after close() did not raise NoProcess")
    assert session.host_pid == ready.host_pid
    assert session.exit_reason == expected_reason
    assert not pid_alive(ready.host_pid)


def test_proceed_abort_signal_after_the_end_raise_no_process_while_info_and_wait_work(
    session_factory: Factory,
) -> None:
    session = session_factory(["/bin/sh", "-c", "exit 3"])
    expect(session, linx.Ready)
    session.proceed()
    expect(session, linx.Running)
    expect(session, linx.Exited)
    with pytest.raises(linx.NoProcess):
        session.proceed()
    with pytest.raises(linx.NoProcess):
        session.abort()
    with pytest.raises(linx.NoProcess):
        session.signal(signal.SIGTERM)
    # Lingering (linger=True, the default): the outcome stays queryable.
    assert session.info().stage == linx.Stage.EXITED
    assert session.info().result == linx.Exited(code=3)
    assert session.wait() == linx.Exited(code=3)
    assert session.wait(timeout=0) == linx.Exited(code=3)
    assert session.exit_reason == ("exited", 3)


def test_host_pid_equals_ready_host_pid_and_stays_after_exit(session_factory: Factory) -> None:
    session = session_factory(["/bin/sleep", "30"])
    ready = expect(session, linx.Ready)
    assert session.host_pid == ready.host_pid
    assert session.info().host_pid == ready.host_pid
    # It is the parked child's host pid: a live process, a child of the session's agent.
    status = Path(f"/proc/{ready.host_pid}/status").read_text()
    ppid = int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])
    assert ppid == session._channel.state.agent_pid
    session.proceed()
    expect(session, linx.Running)
    assert session.host_pid == ready.host_pid
    # sleep now runs under that very pid
    assert Path(f"/proc/{ready.host_pid}/comm").read_text().strip() == "sleep"
    session.signal(signal.SIGKILL)
    expect(session, linx.Signaled)
    assert session.host_pid == ready.host_pid
    session.close()
    assert session.host_pid == ready.host_pid


def test_child_pid_is_1_in_a_pid_namespace(session_factory: Factory) -> None:
    session = session_factory(["/bin/true"], namespaces=["pid"])
    ready = expect(session, linx.Ready)
    info = session.info()
    assert info.child_pid == 1
    assert info.host_pid == ready.host_pid != 1
    assert session.host_pid == ready.host_pid  # the host's pid, not the namespace's 1
    status = Path(f"/proc/{ready.host_pid}/status").read_text()
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
    assert nspid[1:] == [str(ready.host_pid), "1"]


@pytest.mark.parametrize("no_new_privs", [True, False])
def test_no_new_privs_is_set_in_the_workload_only_when_asked(
    session_factory: Factory, no_new_privs: bool
) -> None:
    argv = ["/bin/grep", "^NoNewPrivs:", "/proc/self/status"]
    session, out = capture_stdout(
        session_factory, argv, no_new_privs=no_new_privs, auto_proceed=True
    )
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert out.split() == [b"NoNewPrivs:", b"1" if no_new_privs else b"0"]


def test_env_none_sends_the_environment_as_it_is_at_each_spawn(
    session_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # linx keeps the last encoding of os.environ to reuse: a change between two spawns
    # must reach the second one.
    argv = ["/bin/sh", "-c", 'echo "$LINX_ENV_NOW"']
    seen = []
    for value in ("first", "second"):
        monkeypatch.setenv("LINX_ENV_NOW", value)
        session, out = capture_stdout(session_factory, argv, auto_proceed=True)
        assert session.wait(timeout=10) == linx.Exited(code=0)
        seen.append(out)
    assert seen == [b"first\n", b"second\n"]


def test_child_pid_is_host_pid_without_a_pid_namespace(session_factory: Factory) -> None:
    session = session_factory(["/bin/true"])
    ready = expect(session, linx.Ready)
    assert session.info().child_pid == ready.host_pid


# --- linger=False -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ending", "argv", "expected"),
    [
        ("exit-0", ["/bin/true"], "normal"),
        ("exit-3", ["/bin/sh", "-c", "exit 3"], ("exited", 3)),
        ("sigkill", ["/bin/sleep", "30"], ("signaled", 9)),
        ("abort", ["/bin/true"], ("shutdown", "aborted")),
        ("error", ["/nonexistent/linx-test-binary"], None),
    ],
    ids=["exit-0", "exit-3", "sigkill", "abort", "error"],
)
def test_linger_false_records_exit_reason_and_releases_the_session(
    session_factory: Factory, ending: str, argv: list[str], expected: object
) -> None:
    session = session_factory(argv, linger=False)
    expect(session, linx.Ready)
    assert session.exit_reason is None
    if ending == "abort":
        session.abort()
    else:
        session.proceed()
        if ending != "error":
            expect(session, linx.Running)
        if ending == "sigkill":
            session.signal(signal.SIGKILL)
    terminal = drain(session)[-1]
    if ending == "error":
        assert isinstance(terminal, linx.Failed)
        reason = session.exit_reason
        assert isinstance(reason, tuple) and len(reason) == 2
        assert reason[0] == "error"
        assert isinstance(reason[1], linx.ProcessError)
        assert (reason[1].stage, reason[1].errno) == ("execve", 2)
    else:
        assert session.exit_reason == expected
    for name, verb in _every_verb()[:5]:  # proceed abort signal info wait
        with pytest.raises(linx.NoProcess):
            verb(session)
            pytest.fail(f"{name}() after the end with linger=False did not raise NoProcess")
    assert no_more_events(session)


# --- owners ---------------------------------------------------------------------------------


def test_callable_owner_receives_every_event(session_factory: Factory) -> None:
    received: list[linx.Event] = []
    lock = threading.Lock()

    def owner(event: linx.Event) -> None:
        with lock:
            received.append(event)

    session = session_factory(["/bin/true"], owner=owner)
    assert session.events is None
    assert session.owner is owner
    assert wait_until(lambda: len(received) >= 1)
    session.proceed()
    assert wait_until(lambda: len(received) >= 3)
    assert [type(e) for e in received] == [linx.Ready, linx.Running, linx.Exited]
    assert all(e.session is session for e in received)
    assert received[-1] == linx.Exited(code=0)
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_an_owner_that_raises_misses_only_that_event(
    session_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[linx.Event] = []

    def owner(event: linx.Event) -> None:
        if isinstance(event, linx.Running):
            raise RuntimeError("owner bug")
        received.append(event)

    # auto_proceed: Ready, Running and Exited reach the owner in one batch, as a rule
    session = session_factory(["/bin/true"], owner=owner, auto_proceed=True)
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert [type(e) for e in received] == [linx.Ready, linx.Exited]
    assert "the owner failed to take Running" in caplog.text


def test_an_owner_raising_system_exit_stops_neither_its_session_nor_the_reactor(
    session_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    # sys.exit() in a callback raises SystemExit in the reactor thread, which would end
    # that thread quietly and leave every session of the process without events
    def owner(event: linx.Event) -> None:
        sys.exit(3)

    session = session_factory(["/bin/true"], owner=owner, auto_proceed=True)
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert "the owner failed to take Exited" in caplog.text
    other = session_factory(["/bin/true"], auto_proceed=True)
    assert other.wait(timeout=10) == linx.Exited(code=0)


def test_an_owner_calling_wait_gets_an_error_before_the_outcome_and_the_outcome_after(
    session_factory: Factory,
) -> None:
    # An owner runs in the reactor thread, which is what sets the outcome: a blocking
    # wait() there would stall every session of the process (for ever, without timeout).
    answers: list[tuple[str, object]] = []

    def owner(event: linx.Event) -> None:
        assert event.session is not None
        try:
            answers.append((type(event).__name__, event.session.wait()))
        except RuntimeError as exc:
            answers.append((type(event).__name__, exc))

    session = session_factory(["/bin/sh", "-c", "exit 6"], owner=owner)
    assert wait_until(lambda: len(answers) == 1)
    kind, ready_answer = answers[0]
    assert kind == "Ready" and isinstance(ready_answer, RuntimeError)
    assert "reactor thread" in str(ready_answer)
    session.proceed()
    assert session.wait(timeout=10) == linx.Exited(code=6)
    assert answers[-1] == ("Exited", linx.Exited(code=6))


def _waiting_thread(session: linx.Session) -> tuple[threading.Thread, list[object]]:
    """A thread blocked in `session.wait()`; the list gets its outcome or exception."""
    answers: list[object] = []

    def wait() -> None:
        try:
            answers.append(session.wait())
        except Exception as exc:
            answers.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, answers


@pytest.mark.parametrize(
    ("closed_on", "outcome"),
    [(linx.Ready, linx.Aborted()), (linx.Running, linx.Signaled(signum=signal.SIGKILL))],
    ids=["parked", "running"],
)
def test_close_in_an_owner_still_brings_the_outcome_to_waiters_and_owner(
    closed_on: type[linx.Event], outcome: linx.Outcome
) -> None:
    # The owner's thread is the one that brings the outcome, so close() there cannot wait
    # for it; it must not release the session before it comes either.
    received: list[linx.Event] = []

    def owner(event: linx.Event) -> None:
        received.append(event)
        if isinstance(event, closed_on):
            session = event.session
            assert isinstance(session, linx.Session)
            # held (in the test only) until the thread below is blocked in wait()
            assert wait_until(lambda: bool(session._channel.outcome._waiters))
            session.close()

    session = linx.spawn(["/bin/sleep", "30"], owner=owner, auto_proceed=closed_on is linx.Running)
    thread, answers = _waiting_thread(session)
    thread.join(15)
    assert answers == [outcome]
    assert received[-1] == outcome
    assert sum(isinstance(e, linx.Outcome) for e in received) == 1
    with pytest.raises(linx.NoProcess):
        session.wait(0)
    assert session.host_pid is not None and not pid_alive(session.host_pid)


def test_a_close_that_gives_up_on_a_stuck_agent_wakes_the_waiters_with_no_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(linx.session, "CLOSE_TIMEOUT", 0.5)
    session = linx.spawn(["/bin/sleep", "30"], auto_proceed=True)
    expect(session, linx.Ready)
    expect(session, linx.Running)
    agent_pid = session._channel.state.agent_pid
    assert agent_pid is not None
    os.kill(agent_pid, signal.SIGSTOP)  # it can no longer answer the kill
    try:
        thread, answers = _waiting_thread(session)
        assert wait_until(lambda: bool(session._channel.outcome._waiters))
        session.close()
        thread.join(10)
        assert len(answers) == 1 and isinstance(answers[0], linx.NoProcess), answers
        assert answers[0].__traceback__ is not None  # raised by wait(), not returned
    finally:
        os.kill(agent_pid, signal.SIGCONT)  # it finds its channel closed: orphan policy
    assert wait_until(lambda: not pid_alive(agent_pid))


def test_once_wait_returns_the_default_queue_holds_the_terminal_event() -> None:
    # The terminal event is handed to the owner before the outcome is set (design.md).
    for _ in range(50):
        session = linx.spawn(["/bin/true"], auto_proceed=True)
        outcome = session.wait(timeout=10)
        assert session.events is not None
        held = [session.events.get_nowait() for _ in range(session.events.qsize())]
        assert [type(e) for e in held] == [linx.Ready, linx.Running, linx.Exited]
        assert held[-1] == outcome


def test_once_wait_returns_even_a_slow_owner_has_taken_the_terminal_event() -> None:
    # design.md: the terminal event is handed to the owner before the outcome is set. An
    # owner still busy with it (here on purpose) holds wait() back until it is done.
    taken: list[linx.Event] = []

    def slow_owner(event: linx.Event) -> None:
        if isinstance(event, linx.Exited):
            time.sleep(0.5)
        taken.append(event)

    session = linx.spawn(["/bin/true"], auto_proceed=True, owner=slow_owner)
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert [type(e) for e in taken] == [linx.Ready, linx.Running, linx.Exited]


def test_an_owner_with_both_put_and_call_gets_its_events_through_put(
    session_factory: Factory,
) -> None:
    # The spawn() docstring's order: a queue-like object's put() before calling it.
    class Both:
        def __init__(self) -> None:
            self.put_events: list[linx.Event] = []
            self.called: list[linx.Event] = []

        def put(self, event: linx.Event) -> None:
            self.put_events.append(event)

        def __call__(self, event: linx.Event) -> None:
            self.called.append(event)

    owner = Both()
    session = session_factory(["/bin/true"], auto_proceed=True, owner=owner)
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert [type(e) for e in owner.put_events] == [linx.Ready, linx.Running, linx.Exited]
    assert owner.called == []


def test_set_owner_refuses_a_bounded_queue_and_keeps_the_old_owner(
    session_factory: Factory,
) -> None:
    session = session_factory(["/bin/sh", "-c", "exit 8"])
    expect(session, linx.Ready)
    with pytest.raises(ValueError, match=r"bounded queue \(maxsize=2\)"):
        session.set_owner(queue.Queue(maxsize=2))
    session.proceed()
    assert session.wait(timeout=10) == linx.Exited(code=8)
    assert [type(e) for e in drain(session)] == [linx.Running, linx.Exited]


def test_queue_owner_receives_every_event(session_factory: Factory) -> None:
    owner: queue.Queue[linx.Event] = queue.Queue()
    session = session_factory(["/bin/sh", "-c", "exit 2"], owner=owner)
    assert session.events is None
    assert session.owner is owner
    ready = owner.get(timeout=10)
    assert isinstance(ready, linx.Ready) and ready.session is session
    session.proceed()
    assert isinstance(owner.get(timeout=10), linx.Running)
    assert owner.get(timeout=10) == linx.Exited(code=2)
    with pytest.raises(queue.Empty):
        owner.get(timeout=0.3)


def test_a_multiprocessing_queue_owner_receives_every_event(session_factory: Factory) -> None:
    # Its put() pickles each event: one naming its (live) session must still pickle.
    context = multiprocessing.get_context("spawn")
    owner: multiprocessing.queues.Queue[linx.Event] = context.Queue()
    try:
        session_factory(["/bin/sh", "-c", "exit 2"], owner=owner, auto_proceed=True)
        ready = owner.get(timeout=10)
        assert isinstance(ready, linx.Ready) and ready.session is None  # left behind
        assert owner.get(timeout=10) == linx.Running()
        assert owner.get(timeout=10) == linx.Exited(code=2)
    finally:
        owner.close()
        owner.join_thread()


def test_default_queue_made_after_the_end_holds_every_event_in_order(
    session_factory: Factory,
) -> None:
    session = session_factory(["/bin/sh", "-c", "exit 4"], auto_proceed=True)
    assert session.wait(timeout=10) == linx.Exited(code=4)
    assert session._events is None  # only waited on so far: no queue was built
    events = session.events
    assert isinstance(events, queue.Queue)
    assert session.events is events and session.owner is events
    assert [type(e) for e in drain(session)] == [linx.Ready, linx.Running, linx.Exited]
    assert all(e.session is session for e in events.queue) and events.empty()


def test_set_owner_before_the_default_queue_is_made_keeps_the_new_owner(
    session_factory: Factory,
) -> None:
    session = session_factory(["/bin/true"])
    assert wait_until(lambda: session.info().stage == linx.Stage.READY)
    new: queue.Queue[linx.Event] = queue.Queue()
    session.set_owner(new)
    events = session.events  # made now, from what came before the switch
    assert session.owner is new and events is not None
    session.proceed()
    assert isinstance(new.get(timeout=10), linx.Running)
    assert new.get(timeout=10) == linx.Exited(code=0)
    assert [type(e) for e in events.queue] == [linx.Ready]


def test_default_queue_made_while_events_arrive_loses_and_reorders_nothing(
    session_factory: Factory,
) -> None:
    # The queue is made by this thread while the reactor delivers: each session's events
    # are split between the early buffer and the queue at a different point.
    for delay in [i / 20_000 for i in range(40)]:
        session = session_factory(["/bin/true"], auto_proceed=True)
        threading.Event().wait(delay)
        assert [type(e) for e in drain(session)] == [linx.Ready, linx.Running, linx.Exited]
        assert no_more_events(session, within=0.01)


def test_set_owner_redirects_events_from_then_on(session_factory: Factory) -> None:
    old: queue.Queue[linx.Event] = queue.Queue()
    new: queue.Queue[linx.Event] = queue.Queue()
    session = session_factory(["/bin/true"], owner=old)
    assert isinstance(old.get(timeout=10), linx.Ready)
    session.set_owner(new)
    assert session.owner is new
    session.proceed()
    assert isinstance(new.get(timeout=10), linx.Running)
    assert new.get(timeout=10) == linx.Exited(code=0)
    assert old.empty()  # nothing after the switch
    assert new.empty()  # and Ready was not replayed
    with pytest.raises(queue.Empty):
        old.get(timeout=0.3)


def test_set_owner_in_an_owner_redirects_the_rest_of_the_same_read(
    session_factory: Factory,
) -> None:
    # With auto_proceed, Ready and Running nearly always arrive in one read of the agent's
    # socket; an owner switching on Ready must not get the Running that came with it.
    for _ in range(20):
        old: list[linx.Event] = []
        new: queue.Queue[linx.Event] = queue.Queue()

        def owner(
            event: linx.Event, old: list[linx.Event] = old, new: queue.Queue[linx.Event] = new
        ) -> None:
            old.append(event)
            if isinstance(event, linx.Ready):
                assert event.session is not None
                event.session.set_owner(new)

        session = session_factory(["/bin/true"], owner=owner, auto_proceed=True)
        assert session.wait(timeout=10) == linx.Exited(code=0)
        assert [type(e) for e in old] == [linx.Ready]
        assert isinstance(new.get(timeout=10), linx.Running)
        assert new.get(timeout=10) == linx.Exited(code=0)


def test_close_on_a_running_session_kills_it_and_returns_after_reaping(
    session_factory: Factory,
) -> None:
    session = session_factory(["/bin/sleep", "30"])
    ready = expect(session, linx.Ready)
    session.proceed()
    expect(session, linx.Running)
    session.close()
    assert not os.path.exists(f"/proc/{ready.host_pid}")  # reaped, not even a zombie
    assert next_event(session) == linx.Signaled(signum=signal.SIGKILL)
    assert no_more_events(session)
    assert session.exit_reason == ("signaled", signal.SIGKILL)


def test_close_on_a_parked_session_aborts_it(session_factory: Factory, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    session = session_factory(marker_workload(marker))
    ready = expect(session, linx.Ready)
    session.close()
    assert not os.path.exists(f"/proc/{ready.host_pid}")
    assert next_event(session) == linx.Aborted()
    assert no_more_events(session)
    assert session.exit_reason == ("shutdown", "aborted")
    assert not marker.exists()


def _stopped_past_the_checkpoint(session: linx.Session, owner: queue.Queue[linx.Event]) -> int:
    """Stop the parked child, then proceed: released, it cannot reach `execve`."""
    ready = owner.get(timeout=10)
    assert isinstance(ready, linx.Ready)
    os.kill(ready.host_pid, signal.SIGSTOP)
    assert wait_until(lambda: process_state(ready.host_pid) == "T")
    session.proceed()
    return ready.host_pid


def test_close_ends_a_child_stopped_between_release_and_execve_at_once(
    session_factory: Factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A SIGKILL sent before Running waits for Running, which a stopped child never
    # reaches: close() sat out its whole CLOSE_TIMEOUT (30 s), then gave the session up,
    # and the owner never heard how it ended.
    monkeypatch.setattr(linx.session, "CLOSE_TIMEOUT", 5.0)
    owner: queue.Queue[linx.Event] = queue.Queue()
    session = session_factory(["/bin/sleep", "30"], owner=owner)
    host_pid = _stopped_past_the_checkpoint(session, owner)
    session.close()
    assert "did not end" not in caplog.text
    assert not os.path.exists(f"/proc/{host_pid}")
    outcome = owner.get(timeout=10)
    assert isinstance(outcome, linx.Failed), outcome
    assert (outcome.error.stage, outcome.error.errno) == ("exec_outcome", errno.EIO)


def test_close_right_after_an_auto_proceed_spawn_never_looks_like_a_broken_child() -> None:
    # Released at clone time, the child may not have reported ready when the close
    # comes: killed there, it ended as Failed(ready_frame, EIO), a protocol fault's stage.
    # A uid map only the agent may write keeps it off the vfork path, where no command is
    # read until the exec.
    for _ in range(30):
        owner: queue.Queue[linx.Event] = queue.Queue()
        session = linx.spawn(
            ["/bin/sleep", "30"],
            namespaces=["user"],
            uid_map=[(0, 1000, 1)],
            auto_proceed=True,
            owner=owner,
        )
        session.close()
        events = [owner.get(timeout=10)]
        while not isinstance(events[-1], linx.Outcome | linx.Failed):
            events.append(owner.get(timeout=10))
        assert isinstance(events[0], linx.Ready), events
        end = events[-1]
        assert end == linx.Signaled(signum=signal.SIGKILL) or (
            isinstance(end, linx.Failed) and end.error.stage == "exec_outcome"
        ), events


def test_a_dropped_session_ends_a_stopped_released_child_when_its_grace_is_over() -> None:
    # An owner that outlives its session hears its end: Python applies the orphan policy
    # with verbs, and its SIGKILL at the grace's end waited for Running as the SIGTERM did.
    owner: queue.Queue[linx.Event] = queue.Queue()
    session = linx.spawn(["/bin/sleep", "30"], owner=owner, orphan_policy=("kill", 0.2))
    host_pid = _stopped_past_the_checkpoint(session, owner)
    del session
    outcome = owner.get(timeout=10)
    assert isinstance(outcome, linx.Failed), outcome
    assert outcome.error.stage == "exec_outcome"
    assert wait_until(lambda: not pid_alive(host_pid))


def test_close_twice_is_harmless(session_factory: Factory) -> None:
    session = session_factory(["/bin/true"])
    expect(session, linx.Ready)
    session.close()
    session.close()
    assert next_event(session) == linx.Aborted()
    assert no_more_events(session)
    with pytest.raises(linx.NoProcess):
        session.info()


def test_with_block_closes_the_session() -> None:
    with linx.spawn(["/bin/sleep", "30"]) as session:
        ready = expect(session, linx.Ready)
        session.proceed()
        expect(session, linx.Running)
        assert pid_alive(ready.host_pid)
    assert not os.path.exists(f"/proc/{ready.host_pid}")
    with pytest.raises(linx.NoProcess):
        session.info()
    assert next_event(session) == linx.Signaled(signum=signal.SIGKILL)


# --- auto_proceed --------------------------------------------------------------------------


def test_auto_proceed_runs_without_proceed(session_factory: Factory, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    session = session_factory(marker_workload(marker), auto_proceed=True)
    events = drain(session)
    assert [type(e) for e in events] == [linx.Ready, linx.Running, linx.Exited]
    assert events[-1] == linx.Exited(code=0)
    assert marker.exists()
    assert no_more_events(session)


def test_auto_proceed_session_counts_as_proceeded_from_ready(session_factory: Factory) -> None:
    session = session_factory(["/bin/sleep", "30"], auto_proceed=True)
    expect(session, linx.Ready)
    with pytest.raises(linx.AlreadyRunning):
        session.proceed()
    with pytest.raises(linx.AlreadyRunning):
        session.abort()
    expect(session, linx.Running)


def test_without_linger_the_session_is_closed_when_the_owner_sees_the_end() -> None:
    seen: list[object] = []

    def owner(event: linx.Event) -> None:
        if isinstance(event, linx.Exited):
            assert event.session is not None
            try:
                event.session.info()
            except linx.NoProcess:
                seen.append("closed")
            else:
                seen.append("still open")

    session = linx.spawn(["/bin/true"], auto_proceed=True, linger=False, owner=owner)
    assert wait_until(lambda: bool(seen), 10)
    assert seen == ["closed"]
    assert session.exit_reason == "normal"
