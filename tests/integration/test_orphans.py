"""Orphans: what happens to workloads when their Python process, session or launcher goes away."""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import linx
from linx._runtime import get_runtime
from tests.conftest import (
    ROOT,
    child_pids,
    expect,
    gone_and_reaped,
    pid_alive,
    process_state,
    run_python,
    wait_until,
)

# A Python process that starts three running workloads, prints their host pids, then waits
# to be killed. argv[1] is the orphan policy: "default" or "linger".
OWNER_PROGRAM = textwrap.dedent(
    """
    import sys, time
    import linx

    options = {} if sys.argv[1] == "default" else {"orphan_policy": sys.argv[1]}
    sessions = [linx.spawn(["/bin/sleep", "60"], auto_proceed=True, **options) for _ in range(3)]
    for session in sessions:
        for expected in (linx.Ready, linx.Running):
            event = session.events.get(timeout=10)
            assert isinstance(event, expected), event
    print(" ".join(str(s.host_pid) for s in sessions), flush=True)
    time.sleep(60)
    """
)


def _read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the owner process printed nothing"
    line = proc.stdout.readline()
    assert line, f"the owner process ended early: {proc.stderr.read() if proc.stderr else ''}"
    return line


@pytest.fixture
def owner_process() -> Iterator[list[subprocess.Popen[str]]]:
    """Starts OWNER_PROGRAM processes; kills whatever is left of them (and their pids)."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def _start_owner(procs: list[subprocess.Popen[str]], policy: str) -> list[int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER_PROGRAM, policy],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    procs.append(proc)
    pids = [int(p) for p in _read_line(proc).split()]
    assert len(pids) == 3 and all(pid_alive(p) for p in pids)
    return pids


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _owner_killed(procs: list[subprocess.Popen[str]], policy: str) -> Iterator[list[int]]:
    """An owner process's three workloads, after a SIGKILL of the owner; whatever is left
    of them is killed afterwards."""
    pids = _start_owner(procs, policy)
    try:
        procs[0].kill()
        procs[0].wait()
        yield pids
    finally:
        _kill_all(pids)


def test_sigkilled_python_process_takes_its_workloads_with_it(
    owner_process: list[subprocess.Popen[str]],
) -> None:
    with _owner_killed(owner_process, "default") as pids:
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=5), (
            f"still running after their Python process died: {[p for p in pids if pid_alive(p)]}"
        )


def test_linger_policy_keeps_workloads_running_after_python_process_dies(
    owner_process: list[subprocess.Popen[str]],
) -> None:
    with _owner_killed(owner_process, "linger") as pids:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert all(pid_alive(p) for p in pids), "a lingering workload died with its owner"
            time.sleep(0.05)
        _kill_all(pids)
        # Their agents stayed to reap them: no zombie is left.
        assert wait_until(lambda: all(map(gone_and_reaped, pids)), timeout=5)


# A Python process whose one workload drops root and shrugs off SIGTERM, under a grace
# longer than the test; prints its launcher's, its agent's and its workload's pids.
DROPPED_ROOT_OWNER = textwrap.dedent(
    """
    import os, sys, time
    import linx
    from linx._runtime import get_runtime

    code = (
        "import os, signal, time\\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "os.setgroups([])\\n"
        "os.setresgid(65534, 65534, 65534)\\n"
        "os.setresuid(65534, 65534, 65534)\\n"
        "time.sleep(120)\\n"
    )
    session = linx.spawn(
        [sys.executable, "-c", code], orphan_policy=("kill", 120.0), auto_proceed=True
    )
    for expected in (linx.Ready, linx.Running):
        assert isinstance(session.events.get(timeout=10), expected)
    while os.stat(f"/proc/{session.host_pid}").st_uid != 65534:
        time.sleep(0.01)
    agent = session._channel.state.agent_pid
    print(get_runtime()._launcher.pid, agent, session.host_pid, flush=True)
    time.sleep(120)
    """
)


def test_a_workload_that_dropped_root_dies_with_its_agent_killed_after_its_python(
    owner_process: list[subprocess.Popen[str]],
) -> None:
    # Python dies first; the agent waits out its grace (the workload ignores SIGTERM). The
    # launcher, at its channel's EOF, stays for the agents it forked: so an agent killed
    # then still takes its workload with it, which no death signal does for this one.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", DROPPED_ROOT_OWNER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    owner_process.append(proc)
    launcher, agent, workload = map(int, _read_line(proc).split())
    try:
        proc.kill()
        proc.wait()

        def launcher_heard_the_eof() -> bool:  # it lets go of Python's stderr, or exits
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                return os.readlink(f"/proc/{launcher}/fd/2") == os.devnull
            return True

        assert wait_until(launcher_heard_the_eof)
        assert pid_alive(workload), "the grace should still hold it"
        os.kill(agent, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(workload)), "it outlived its agent"
        assert wait_until(lambda: gone_and_reaped(launcher))  # no agent left
    finally:
        _kill_all([workload])


def _sigterm_survivor(log: Path) -> str:
    """A shell script that writes "trapped" to `log` once it has its SIGTERM trap, notes each
    SIGTERM there and carries on. Run as pid 1 of its own pid namespace, so that when SIGKILL
    ends it the kernel ends its `sleep` children too."""
    return f'trap "echo term >> {log}" TERM; echo trapped > {log}; while :; do sleep 0.05; done'


@pytest.mark.usefixtures("no_gc")
def test_kill_policy_grace_ends_with_sigkill_for_a_workload_that_survives_sigterm(
    tmp_path: Path,
) -> None:
    log = tmp_path / "terms"
    script = _sigterm_survivor(log)
    session = linx.spawn(
        ["/bin/sh", "-c", script],
        namespaces=["pid"],
        orphan_policy=("kill", 0.5),
        auto_proceed=True,
    )
    expect(session, linx.Ready)
    expect(session, linx.Running)
    host_pid = session.host_pid
    assert host_pid is not None
    try:
        # Running means execve is done, not that the shell has its trap yet: a SIGTERM
        # before the trap would be ignored (pid-namespace init, default disposition).
        assert wait_until(lambda: log.exists(), timeout=5), "the workload never set its trap"
        dropped = time.monotonic()
        del session  # freed by reference counting alone (the test runs without gc)
        assert wait_until(lambda: log.exists() and "term" in log.read_text(), timeout=3), (
            "the orphaned workload never got SIGTERM"
        )
        assert pid_alive(host_pid), "the workload died before the grace ran out"
        assert wait_until(lambda: not pid_alive(host_pid), timeout=5)
        died_after = time.monotonic() - dropped
        # Killed after the 0.5 s grace, and well before the default 5 s one.
        assert 0.45 <= died_after < 3.0, died_after
    finally:
        _kill_all([host_pid])


def test_sigkilled_launcher_leaves_running_sessions_alone_and_is_replaced() -> None:
    with (
        linx.spawn(["/bin/sh", "-c", "read line; exit 4"], stdio="devnull") as parked,
        linx.spawn(["/bin/sh", "-c", "sleep 0.5; exit 5"], auto_proceed=True) as running,
    ):
        expect(parked, linx.Ready)
        expect(running, linx.Ready)
        expect(running, linx.Running)
        launcher = get_runtime()._launcher
        assert launcher is not None
        os.kill(launcher.pid, signal.SIGKILL)
        assert wait_until(lambda: not launcher.alive), "linx did not notice its launcher died"
        # linx reaped it: no zombie launcher left behind.
        assert wait_until(lambda: gone_and_reaped(launcher.pid), timeout=5)

        assert running.wait(timeout=10) == linx.Exited(code=5)
        parked.proceed()
        assert parked.wait(timeout=10) == linx.Exited(code=4)

    with linx.spawn(["/bin/sh", "-c", "exit 6"], auto_proceed=True) as after:
        assert after.wait(timeout=10) == linx.Exited(code=6)
    replacement = get_runtime()._launcher
    assert replacement is not None and replacement.alive
    assert replacement.pid != launcher.pid


SPARE_OF_A_DEAD_LAUNCHER = """
    import os, signal, time
    import linx
    from linx._runtime import get_runtime

    def until(predicate):
        deadline = time.monotonic() + 10
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.01)
        return predicate()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    session = linx.spawn(["/bin/true"], auto_proceed=True)
    session.wait(timeout=10)
    first = session._channel.state.agent_pid
    runtime = get_runtime()
    assert until(lambda: runtime._spare is not None)
    launcher = runtime._launcher.pid

    def agents():
        with open(f"/proc/{launcher}/task/{launcher}/children") as f:
            return [int(pid) for pid in f.read().split()]

    def only_the_spare():
        # The first session's agent gone (slowly under a sanitizer's leak check; the
        # launcher reaps lazily) and the spare forked: asked for is not forked yet.
        found = agents()
        return len(found) == 1 and found[0] != first

    assert until(only_the_spare)
    (spare,) = agents()
    os.kill(launcher, signal.SIGKILL)
    print(until(lambda: runtime._spare is None), until(lambda: not alive(spare)))
"""


def test_the_spare_agent_of_a_dead_launcher_ends_without_waiting_for_a_spawn() -> None:
    # It can never serve a spawn, so linx lets it go (EOF) at once, not at the next spawn.
    result = run_python(SPARE_OF_A_DEAD_LAUNCHER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


# A program in a process group of its own, as a shell job or a service is. It handles or
# ignores what a terminal (Ctrl-C, Ctrl-Z, hang-up: `nohup`) or a supervisor (SIGTERM to
# every process of a service) sends the whole group, and so does its workload, which stops
# on its own terms at SIGTERM. linx's launcher and agents are in that group too. Killed or
# stopped by these signals, they would take the sessions with them: a dead agent's
# workload is SIGKILLed at once.
GROUP_SIGNALS_PROGRAM = """
    import os, signal
    import linx

    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: None)
    read_end, write_end = os.pipe()
    session = linx.spawn(
        ["/bin/sh", "-c",
         "trap '' INT TSTP HUP; trap 'exit 7' TERM; echo armed; while :; do sleep 0.05; done"],
        stdio={"stdout": write_end},
        auto_proceed=True,
    )
    os.close(write_end)
    assert os.read(read_end, 100) == b"armed\\n"
    for signum in (signal.SIGINT, signal.SIGTSTP, signal.SIGHUP, signal.SIGTERM):
        os.killpg(0, signum)
    print(session.wait(timeout=10))
    print(linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10))
"""


def test_signals_to_the_process_group_are_for_the_program_and_its_workload() -> None:
    # A group of its own whose parent (this test) is in another group of the same session,
    # as a shell job is: the kernel drops stop signals sent to an orphaned group.
    result = run_python(GROUP_SIGNALS_PROGRAM, process_group=0)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Exited(code=7)", "Exited(code=0)"]


# A program whose stderr is a pipe its parent reads to EOF (a shell's $(...), subprocess's
# capture_output) leaves a workload behind and exits. The workload has stdio of its own and
# ignores SIGTERM, so its agent waits: for ever with "linger", for the grace otherwise.
LEAVES_A_WORKLOAD = """
    import sys
    import linx

    policy = "linger" if sys.argv[1] == "linger" else ("kill", 30)
    session = linx.spawn(["/bin/sh", "-c", "trap '' TERM; sleep 30"], stdio="devnull",
                         auto_proceed=True, orphan_policy=policy)
    session.events.get(timeout=10)
    session.events.get(timeout=10)
    print(session.host_pid, flush=True)
"""


@pytest.mark.parametrize("policy", ["linger", "kill"])
def test_an_orphaned_agent_does_not_hold_the_callers_stderr(policy: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    printed: str | bytes = ""
    try:
        started = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(LEAVES_A_WORKLOAD), policy],
            capture_output=True,
            text=True,
            timeout=20,  # the workload runs 30 s: EOF on stderr before then is the point
            env=env,
        )
        printed = started.stdout
        assert started.returncode == 0, started.stderr
        assert pid_alive(int(printed))  # so its agent is still waiting on it
    except subprocess.TimeoutExpired as exc:
        printed = exc.stdout or ""  # the workload's pid, printed before the wait
        raise
    finally:
        for shell in map(int, printed.split()):  # the workload, then its sleep
            for pid in [*child_pids(shell), shell]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _until_terminal(owner: queue.Queue[linx.Event], timeout: float = 10) -> list[linx.Event]:
    events: list[linx.Event] = []
    deadline = time.monotonic() + timeout
    while not events or not isinstance(events[-1], linx.Exited | linx.Signaled | linx.Aborted):
        events.append(owner.get(timeout=max(0.0, deadline - time.monotonic())))
    return events


def _dropped_with_owner(
    given: str,
    argv: list[str],
    owner: queue.Queue[linx.Event],
    settled: Callable[[], bool] = lambda: True,
    **options: Any,
) -> int:
    """Spawns with `owner` given to spawn() or set_owner(), drops the session at the stage
    `options` lead to (parked, or running) once `settled()`, and returns the host pid."""
    if given == "spawn":
        session = linx.spawn(argv, owner=owner, **options)
    else:
        session = linx.spawn(argv, **options)
        session.set_owner(owner)
    stage = "running" if options.get("auto_proceed") else "ready"
    assert wait_until(lambda: session.info().stage == stage, timeout=10)
    assert wait_until(settled, timeout=10)
    host_pid = session.host_pid
    assert host_pid is not None
    return host_pid  # the session is dropped here, by reference counting alone


@pytest.mark.usefixtures("no_gc")
@pytest.mark.parametrize("given", ["spawn", "set_owner"])
@pytest.mark.parametrize(
    ("options", "outcome"),
    [
        ({"auto_proceed": True}, linx.Signaled(signal.SIGTERM)),
        ({}, linx.Aborted()),
        ({"auto_proceed": True, "orphan_policy": "linger"}, linx.Exited(0)),
    ],
    ids=["running-kill", "parked", "running-linger"],
)
def test_an_owner_of_the_callers_hears_how_a_dropped_session_ends(
    given: str, options: dict[str, Any], outcome: linx.Event
) -> None:
    # Spawn with an owner and forget the handle: the orphan policy acts (a parked child is
    # discarded, a running one gets SIGTERM, or runs on with "linger"), and the owner
    # still gets the one terminal event rather than waiting for ever.
    owner: queue.Queue[linx.Event] = queue.Queue()
    argv = ["/bin/sh", "-c", "sleep 1"] if "orphan_policy" in options else ["/bin/sleep", "30"]
    host_pid = _dropped_with_owner(given, argv, owner, **options)
    try:
        events = _until_terminal(owner)
        assert events[-1] == outcome
        assert events[-1].session is None  # the event does not bring the session back
        assert wait_until(lambda: not pid_alive(host_pid), timeout=5)
        with pytest.raises(queue.Empty):
            owner.get(timeout=0.3)  # nothing after the terminal event
    finally:
        _kill_all([host_pid])


@pytest.mark.usefixtures("no_gc")
def test_a_dropped_session_with_an_owner_still_gets_sigkill_after_the_grace(
    tmp_path: Path,
) -> None:
    log = tmp_path / "terms"
    script = _sigterm_survivor(log)
    owner: queue.Queue[linx.Event] = queue.Queue()
    host_pid = _dropped_with_owner(
        "spawn",
        ["/bin/sh", "-c", script],
        owner,
        log.exists,  # the trap is set: a SIGTERM before it would be ignored (pid 1)
        namespaces=["pid"],
        orphan_policy=("kill", 0.5),
        auto_proceed=True,
    )
    try:
        assert _until_terminal(owner)[-1] == linx.Signaled(signal.SIGKILL)
        assert "term" in log.read_text()
    finally:
        _kill_all([host_pid])


def _stopped_then_dropped(owner: queue.Queue[linx.Event]) -> int:
    """A running workload, stopped (SIGSTOP), whose session is dropped on return; a grace
    far longer than the test waits, so only the SIGTERM can end it in time."""
    session = linx.spawn(
        ["/bin/sleep", "120"], owner=owner, auto_proceed=True, orphan_policy=("kill", 120.0)
    )
    assert wait_until(lambda: session.info().stage == "running", timeout=10)
    host_pid = session.host_pid
    assert host_pid is not None
    session.signal(signal.SIGSTOP)
    assert wait_until(lambda: process_state(host_pid) == "T", timeout=10)
    return host_pid


@pytest.mark.usefixtures("no_gc")
def test_a_dropped_session_whose_workload_is_stopped_ends_by_the_sigterm_not_the_grace() -> None:
    # A stopped workload keeps the policy's SIGTERM pending: the SIGCONT sent after it lets
    # it act now, rather than the workload sitting stopped until the grace's SIGKILL.
    owner: queue.Queue[linx.Event] = queue.Queue()
    host_pid = _stopped_then_dropped(owner)
    try:
        assert _until_terminal(owner, timeout=30)[-1] == linx.Signaled(signal.SIGTERM)
    finally:
        _kill_all([host_pid])


@pytest.mark.usefixtures("no_gc")
def test_a_session_dropped_between_its_agents_eof_and_status_still_gets_that_status() -> None:
    # The agent dies (SIGKILL) while its launcher cannot report it yet (stopped), and the
    # session, with an owner of the caller's, is dropped after the EOF: the owner still
    # gets agent_died with the agent's status, not "status unknown" after STATUS_GRACE.
    owner: queue.Queue[linx.Event] = queue.Queue()
    session = linx.spawn(["/bin/sleep", "30"], auto_proceed=True, owner=owner)
    assert isinstance(owner.get(timeout=10), linx.Ready)
    assert isinstance(owner.get(timeout=10), linx.Running)
    launcher = get_runtime()._launcher
    assert launcher is not None
    channel = session._channel
    agent, host_pid = channel.state.agent_pid, session.host_pid
    assert agent is not None and host_pid is not None
    os.kill(launcher.pid, signal.SIGSTOP)
    try:
        os.kill(agent, signal.SIGKILL)
        assert wait_until(lambda: channel._sock is None, timeout=5)  # the EOF
        del session  # the channel holds it weakly
        time.sleep(0.1)  # the reactor acts on the drop
    finally:
        os.kill(launcher.pid, signal.SIGCONT)
    try:
        event = owner.get(timeout=1)  # well within STATUS_GRACE
        assert isinstance(event, linx.Failed), event
        assert (event.error.stage, event.error.code) == ("agent_died", -signal.SIGKILL)
        with pytest.raises(queue.Empty):
            owner.get(timeout=0.3)
    finally:
        _kill_all([host_pid])
