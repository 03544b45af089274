"""Failures: pre-exec stages, host-side connects, a dead agent, oversized requests."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import linx
from tests.conftest import (
    INTERRUPTED_SPAWN,
    NOBODY,
    Pipe,
    build_helper,
    capture_stdout,
    child_pids,
    drain,
    expect,
    gone_and_reaped,
    launcher_pid,
    no_more_events,
    pid_alive,
    process_state,
    run_python,
    wait_until,
)

Factory = Callable[..., linx.Session]


def assert_process_error(
    error: BaseException, stage: str, code: int, filename: str | None = None
) -> None:
    """`error` is the ProcessError of `stage` and `code`, naming `filename` (the path the
    stage acted on) in its message and attribute, or no path at all."""
    assert isinstance(error, linx.ProcessError)
    assert isinstance(error, OSError)
    assert error.stage == stage
    assert error.errno == code
    assert error.code == code
    name = errno.errorcode[code]
    assert error.errno_name == name
    assert error.filename == filename
    subject = "" if filename is None else f" {filename!r}"
    assert str(error) == f"process {stage}{subject} failed: {name} (errno {code})"


def fail_after_proceed(session: linx.Session) -> tuple[linx.Ready, linx.Failed]:
    """Proceed a session whose pre-exec steps fail: Ready, then Failed, and no Running."""
    ready = expect(session, linx.Ready)
    session.proceed()
    events = drain(session)
    assert [type(e) for e in events] == [linx.Failed], f"expected only Failed, got {events}"
    failed = events[0]
    assert isinstance(failed, linx.Failed)
    assert failed.session is session
    assert no_more_events(session)
    return ready, failed


# --- pre-exec stages ------------------------------------------------------------------------


def test_execve_of_a_missing_path_fails_at_stage_execve_without_running(
    session_factory: Factory,
) -> None:
    session = session_factory(["/nonexistent/linx-test-binary"])
    _, failed = fail_after_proceed(session)
    missing = "/nonexistent/linx-test-binary"
    assert_process_error(failed.error, "execve", errno.ENOENT, missing)
    assert str(failed.error) == f"process execve '{missing}' failed: ENOENT (errno 2)"
    with pytest.raises(linx.ProcessError) as raised:
        session.wait(timeout=10)
    assert_process_error(raised.value, "execve", errno.ENOENT, missing)
    assert pickle.loads(pickle.dumps(raised.value)).filename == missing
    with pytest.raises(OSError):  # catchable as the OSError it is
        session.wait(timeout=10)
    info = session.info()
    assert info.stage == linx.Stage.ERRORED
    assert info.result == failed.error


def test_execve_of_a_non_executable_file_fails_with_eacces(
    session_factory: Factory, tmp_path: Path
) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    session = session_factory([str(script)])
    _, failed = fail_after_proceed(session)
    assert_process_error(failed.error, "execve", errno.EACCES, str(script))


def test_missing_cwd_fails_at_stage_chdir(session_factory: Factory, tmp_path: Path) -> None:
    session = session_factory(["/bin/true"], cwd=tmp_path / "missing")
    _, failed = fail_after_proceed(session)
    assert_process_error(failed.error, "chdir", errno.ENOENT, str(tmp_path / "missing"))
    with pytest.raises(linx.ProcessError) as raised:
        session.wait(timeout=10)
    assert_process_error(raised.value, "chdir", errno.ENOENT, str(tmp_path / "missing"))


def test_a_relative_cwd_is_taken_from_the_callers_directory_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's own directory is the launcher's, from when it started: not this one.
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)  # the launcher exists
    (tmp_path / "inner").mkdir()
    monkeypatch.chdir(tmp_path)
    session, out = capture_stdout(linx.spawn, ["/bin/pwd"], cwd="inner", auto_proceed=True)
    assert out == f"{tmp_path / 'inner'}\n".encode()
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_a_removed_current_directory_is_an_error_not_the_launchers_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The launcher's directory is wherever this process was when it started: a workload
    # sent there would act on relative paths somewhere unrelated.
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)  # the launcher exists
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(FileNotFoundError, match=r"current directory no longer exists.*cwd="):
        linx.spawn(["/bin/pwd"], auto_proceed=True)
    with pytest.raises(FileNotFoundError, match=r"no longer exists, so cwd 'inner', relative"):
        linx.spawn(["/bin/pwd"], cwd="inner", auto_proceed=True)
    session, out = capture_stdout(linx.spawn, ["/bin/pwd"], cwd="/", auto_proceed=True)
    assert out == b"/\n"
    assert session.wait(timeout=10) == linx.Exited(code=0)


@pytest.mark.parametrize("stage", ["execve", "chdir"])
def test_a_pre_exec_failure_leaves_no_zombie_and_no_process(
    session_factory: Factory, tmp_path: Path, stage: str
) -> None:
    if stage == "execve":
        session = session_factory(["/nonexistent/linx-test-binary"])
    else:
        session = session_factory(["/bin/true"], cwd=tmp_path / "missing")
    ready, failed = fail_after_proceed(session)
    assert failed.error.stage == stage
    # Reaped before the failure was reported: not even a zombie is left.
    assert not os.path.exists(f"/proc/{ready.host_pid}")
    agent = session._channel.state.agent_pid
    assert agent is not None
    assert wait_until(lambda: child_pids(agent) == [])


# --- host-side connect_unix -------------------------------------------------------------------


def fails_before_ready(session: linx.Session) -> linx.ProcessError:
    """A session that fails before any clone: only `Failed`, no `Ready`, no host pid."""
    events = drain(session)
    assert [type(e) for e in events] == [linx.Failed], events  # no Ready
    failed = events[0]
    assert isinstance(failed, linx.Failed)
    assert no_more_events(session)
    assert session.host_pid is None  # nothing was cloned
    return failed.error


def test_connect_unix_to_a_missing_path_fails_before_any_process(
    session_factory: Factory, short_dir: str
) -> None:
    path = os.path.join(short_dir, "nobody-listens")
    session = session_factory(["/bin/true"], stdio={"stdout": ("connect_unix", path)})
    assert_process_error(fails_before_ready(session), "connect_unix", errno.ENOENT, path)
    with pytest.raises(linx.ProcessError) as raised:
        session.wait(timeout=10)
    assert_process_error(raised.value, "connect_unix", errno.ENOENT, path)


def test_connect_unix_error_names_no_path_when_two_streams_name_different_ones(
    session_factory: Factory, short_dir: str
) -> None:
    # the agent does not say which stream's socket failed: naming one would be a guess
    out, err = os.path.join(short_dir, "out"), os.path.join(short_dir, "err")
    session = session_factory(
        ["/bin/true"], stdio={"stdout": ("connect_unix", out), "stderr": ("connect_unix", err)}
    )
    assert_process_error(fails_before_ready(session), "connect_unix", errno.ENOENT)


def test_connect_unix_to_a_socket_nobody_listens_on_is_refused(
    session_factory: Factory, short_dir: str
) -> None:
    path = os.path.join(short_dir, "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(path)  # bound, never listening
        session = session_factory(["/bin/true"], stdio={"stderr": ("connect_unix", path)})
        error = fails_before_ready(session)
    assert_process_error(error, "connect_unix", errno.ECONNREFUSED, path)


@pytest.mark.slow
def test_connect_unix_to_a_full_backlog_gives_up_after_five_seconds(
    session_factory: Factory, short_dir: str
) -> None:
    # the agent's connect would otherwise wait for an accept for ever, deaf to Python
    path = os.path.join(short_dir, "s")
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        listener.bind(path)
        listener.listen(0)
        while True:  # never accepted: fill the backlog
            filler = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            filler.setblocking(False)
            try:
                filler.connect(path)
            except BlockingIOError:
                break
        started = time.monotonic()
        session = session_factory(["/bin/true"], stdio={"stdout": ("connect_unix", path)})
        events = drain(session, timeout=15)
        waited = time.monotonic() - started
    assert [type(e) for e in events] == [linx.Failed], events
    assert isinstance(events[0], linx.Failed)
    assert_process_error(events[0].error, "connect_unix", errno.EAGAIN, path)
    assert 4 < waited < 10, waited


def test_connect_unix_to_an_over_long_path_fails_with_enametoolong(
    session_factory: Factory,
) -> None:
    path = "/tmp/" + "x" * 195  # 200 characters: more than sun_path holds
    assert len(path) == 200
    session = session_factory(["/bin/true"], stdio={"stdin": ("connect_unix", path)})
    assert_process_error(fails_before_ready(session), "connect_unix", errno.ENAMETOOLONG, path)


@pytest.mark.parametrize(
    ("length", "err"),
    [(107, errno.ENOENT), (108, errno.ENAMETOOLONG)],
    ids=["fits", "one-too-many"],
)
def test_connect_unix_path_limit_is_sun_path_less_its_nul(
    session_factory: Factory, length: int, err: int
) -> None:
    # sun_path holds 108 bytes and connect_unix adds the NUL: 107 is the longest path that
    # is tried (no socket is there), 108 is refused before any connect
    path = "/tmp/linx-no-such-socket-" + "x" * (length - 25)
    assert len(path) == length
    session = session_factory(["/bin/true"], stdio={"stdin": ("connect_unix", path)})
    assert_process_error(fails_before_ready(session), "connect_unix", err, path)


# --- the agent dies ---------------------------------------------------------------------------


@contextlib.contextmanager
def killed_afterwards(pid: int) -> Iterator[None]:
    """Whatever fails inside, the workload `pid` does not outlive the test."""
    try:
        yield
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("auto_proceed", [False, True], ids=["parked", "auto_proceed"])
def test_a_workload_with_changed_ids_still_dies_with_its_agent(
    session_factory: Factory, auto_proceed: bool
) -> None:
    # The kernel forgets the death signal when the euid/egid change: it must be armed again.
    session = session_factory(
        ["/bin/sleep", "30"], uid=65534, gid=65534, groups=[], auto_proceed=auto_proceed
    )
    ready = expect(session, linx.Ready)
    if not auto_proceed:
        session.proceed()
    expect(session, linx.Running)
    assert os.stat(f"/proc/{ready.host_pid}").st_uid == 65534
    agent = session._channel.state.agent_pid
    assert agent is not None
    with killed_afterwards(ready.host_pid):
        os.kill(agent, signal.SIGKILL)
        assert expect(session, linx.Failed).error.stage == "agent_died"
        assert wait_until(lambda: not pid_alive(ready.host_pid))


# A workload that drops root itself, as a service does (setuid(2); `setpriv`, `gosu`): the
# kernel clears its death signal, and nothing in the child can arm it again.
DROPS_ITS_IDS = """
import os, time
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
print("dropped", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("auto_proceed", [False, True], ids=["parked", "auto_proceed"])
@pytest.mark.parametrize("namespaces", [[], ["pid"]], ids=["no-ns", "pid-ns"])
def test_a_workload_that_drops_its_own_ids_still_dies_with_its_agent(
    session_factory: Factory, pipe: Pipe, auto_proceed: bool, namespaces: list[str]
) -> None:
    # The launcher, a child subreaper, inherits the dead agent's child and kills it.
    argv = [sys.executable, "-c", DROPS_ITS_IDS]
    session = session_factory(
        argv, namespaces=namespaces, stdio={"stdout": pipe.write_end}, auto_proceed=auto_proceed
    )
    ready = expect(session, linx.Ready)
    if not auto_proceed:
        session.proceed()
    with killed_afterwards(ready.host_pid):
        expect(session, linx.Running)
        assert pipe.read_lines(1) == ["dropped"]
        assert os.stat(f"/proc/{ready.host_pid}").st_uid == 65534
        agent = session._channel.state.agent_pid
        assert agent is not None
        os.kill(agent, signal.SIGKILL)
        failed = expect(session, linx.Failed)
        assert (failed.error.stage, failed.error.code) == ("agent_died", -signal.SIGKILL)
        assert wait_until(lambda: gone_and_reaped(ready.host_pid))


@pytest.fixture
def setuid_root_program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A set-user-ID root program that prints its euid, in a directory others may reach
    (pytest's own are root's alone)."""
    built = build_helper(tmp_path_factory, "setuid_report")
    where = tempfile.mkdtemp(prefix="linx-setuid-")
    try:
        os.chmod(where, 0o755)
        program = shutil.copy(built, where)
        os.chmod(program, 0o4755)
        yield program
    finally:
        shutil.rmtree(where)


@pytest.mark.parametrize("auto_proceed", [False, True], ids=["parked", "auto_proceed"])
def test_a_set_user_id_workload_still_dies_with_its_agent(
    session_factory: Factory, pipe: Pipe, setuid_root_program: str, auto_proceed: bool
) -> None:
    # Run as nobody, the program's execve makes it root again: the kernel clears the
    # death signal there, after every step of ours.
    session = session_factory(
        [setuid_root_program],
        uid=65534,
        gid=65534,
        groups=[],
        stdio={"stdout": pipe.write_end},
        auto_proceed=auto_proceed,
    )
    ready = expect(session, linx.Ready)
    if not auto_proceed:
        session.proceed()
    expect(session, linx.Running)
    with killed_afterwards(ready.host_pid):
        assert pipe.read_lines(1) == ["0"]
        agent = session._channel.state.agent_pid
        assert agent is not None
        os.kill(agent, signal.SIGKILL)
        assert expect(session, linx.Failed).error.stage == "agent_died"
        assert wait_until(lambda: gone_and_reaped(ready.host_pid))


# Run by an unprivileged caller: the workload execs a set-user-ID root program, which keeps
# the caller's real uid, so the caller's launcher may still signal it.
UNPRIVILEGED_SET_USER_ID = """
import json, os, pathlib, signal, sys, time, linx
r, w = os.pipe()
session = linx.spawn([PROGRAM], stdio={"stdout": w}, auto_proceed=True)
os.close(w)
ready = session.events.get(timeout=20)
assert isinstance(ready, linx.Ready), ready
euid = os.read(r, 64).decode().strip()
os.kill(session._channel.state.agent_pid, signal.SIGKILL)
outcome = session.events.get(timeout=20)
if isinstance(outcome, linx.Running):
    outcome = session.events.get(timeout=20)
proc = pathlib.Path(f"/proc/{ready.host_pid}")
deadline = time.monotonic() + 20
while proc.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps([os.getuid(), euid, outcome.error.stage, proc.exists()]))
if proc.exists():
    os.kill(ready.host_pid, signal.SIGKILL)  # real uid ours: we may
"""


def test_an_unprivileged_callers_set_user_id_workload_still_dies_with_its_agent(
    setuid_root_program: str, nobody_python: None
) -> None:
    # The launcher needs no privilege to be a subreaper, nor to kill what its caller may.
    code = f"PROGRAM = {setuid_root_program!r}\n" + UNPRIVILEGED_SET_USER_ID
    done = run_python(code, user=NOBODY)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [NOBODY, "0", "agent_died", False]


def test_a_lingering_workload_that_drops_its_own_ids_still_dies_with_its_agent(
    pipe: Pipe,
) -> None:
    # A dropped session's agent waits for its "linger" workload, for as long as it runs:
    # it must stay noted through that wait, or the launcher has nothing to kill when the
    # agent dies in it (the death signal is long gone).
    session = linx.spawn(
        [sys.executable, "-c", DROPS_ITS_IDS],
        stdio={"stdout": pipe.write_end},
        auto_proceed=True,
        orphan_policy="linger",
    )
    ready = expect(session, linx.Ready)
    with killed_afterwards(ready.host_pid):
        expect(session, linx.Running)
        assert pipe.read_lines(1) == ["dropped"]
        agent = session._channel.state.agent_pid
        assert agent is not None
        del session
        # the agent applies the policy: it waits for the workload
        assert wait_until(lambda: Path(f"/proc/{agent}/wchan").read_text() == "do_wait")
        os.kill(agent, signal.SIGKILL)
        assert wait_until(lambda: gone_and_reaped(ready.host_pid))


def test_what_a_workload_left_running_outlives_another_agents_death(
    session_factory: Factory, pipe: Pipe
) -> None:
    # The launcher inherits it when its workload ends (it is a subreaper), and must kill
    # only the child a dead agent noted: the rest runs on, as SPEC §5 has it, and is
    # reaped when it ends.
    left = session_factory(
        ["/bin/sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!"],
        stdio={"stdout": pipe.write_end},
        auto_proceed=True,
    )
    (daemon,) = map(int, pipe.read_lines(1))
    try:
        assert left.wait(10) == linx.Exited(0)
        assert wait_until(lambda: daemon in child_pids(launcher_pid()))
        other = session_factory(["/bin/sleep", "60"], auto_proceed=True)
        ready = expect(other, linx.Ready)
        expect(other, linx.Running)
        with killed_afterwards(ready.host_pid):
            agent = other._channel.state.agent_pid
            assert agent is not None
            os.kill(agent, signal.SIGKILL)
            assert expect(other, linx.Failed).error.stage == "agent_died"
            assert wait_until(lambda: gone_and_reaped(ready.host_pid))
        assert pid_alive(daemon)
        os.kill(daemon, signal.SIGTERM)
        assert wait_until(lambda: gone_and_reaped(daemon))
    finally:
        if pid_alive(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_an_agent_killed_while_the_launcher_is_busy_is_reported_with_its_status(
    session_factory: Factory,
) -> None:
    # While spawns keep coming, the launcher reaps ended agents only when a request wakes
    # it (or a short while after the last): a dead agent must still be reported, with the
    # status its death gave, and its session must not wait out the 2 s report grace.
    session = session_factory(["/bin/sleep", "30"])
    ready = expect(session, linx.Ready)
    agent = session._channel.state.agent_pid
    assert agent is not None
    with killed_afterwards(ready.host_pid):
        os.kill(agent, signal.SIGKILL)
        for _ in range(20):  # the launcher is asked for a new spare after each
            assert linx.spawn(["/bin/true"], auto_proceed=True).wait(10) == linx.Exited(0)
        failed = expect(session, linx.Failed)
        assert (failed.error.stage, failed.error.code) == ("agent_died", -signal.SIGKILL)


@pytest.mark.parametrize("when", ["parked", "running"])
def test_killing_the_agent_fails_with_agent_died_and_takes_the_workload(
    session_factory: Factory, when: str
) -> None:
    session = session_factory(["/bin/sleep", "30"], namespaces=["pid"])
    ready = expect(session, linx.Ready)
    if when == "running":
        session.proceed()
        expect(session, linx.Running)
    agent = session._channel.state.agent_pid
    assert agent is not None and agent != ready.host_pid
    assert pid_alive(agent) and pid_alive(ready.host_pid)
    with killed_afterwards(ready.host_pid):
        os.kill(agent, signal.SIGKILL)
        failed = expect(session, linx.Failed)
        error = failed.error
        assert isinstance(error, linx.ProcessError)
        assert error.stage == "agent_died"
        assert error.errno is None
        assert error.code == -signal.SIGKILL
        assert str(error) == "process agent died: killed by signal 9"
        assert no_more_events(session)
        with pytest.raises(linx.ProcessError) as raised:
            session.wait(timeout=10)
        error = raised.value
        assert (error.stage, error.errno, error.code) == ("agent_died", None, -9)
        assert session.info().stage == linx.Stage.ERRORED
        # PR_SET_PDEATHSIG: the workload does not outlive its agent.
        assert wait_until(lambda: not pid_alive(ready.host_pid))
        with pytest.raises(linx.NoProcess):
            session.signal(signal.SIGTERM)


# --- the launcher cannot start ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "error"),
    [("/nonexistent/linx-agent", "RuntimeError"), ("/tmp", "PermissionError")],
    ids=["missing", "not-a-program"],
)
def test_a_launcher_that_cannot_start_raises_and_leaves_no_fd_or_process(
    agent: str, error: str
) -> None:
    result = run_python(
        """
        import os, linx
        def fds():
            return sorted(os.listdir("/proc/self/fd"))
        def attempt():
            try:
                linx.spawn(["/bin/true"], auto_proceed=True)
            except Exception as exc:
                print(type(exc).__name__)
        attempt()  # also makes what a process keeps: the reactor's epoll and eventfd
        before = fds()
        attempt()  # tries again from scratch: a leak would show now
        same = fds() == before
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            print(same, repr(f.read().strip()))
        """,
        # an fd left to the garbage collector shows as a ResourceWarning
        env={"LINX_AGENT": agent, "PYTHONWARNINGS": "always::ResourceWarning"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == [error, error, "True ''"]
    assert "ResourceWarning" not in result.stderr, result.stderr


# --- the kernel refuses a process -------------------------------------------------------------


def _pids_hierarchy() -> Path:
    """A cgroup hierarchy with the pids controller: v1's own, or v2 where it is enabled."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, target, kind, options = line.split()[:4]
        if kind == "cgroup" and "pids" in options.split(","):
            return Path(target)
        controllers = Path(target) / "cgroup.subtree_control"
        if kind == "cgroup2" and "pids" in controllers.read_text().split():
            return Path(target)
    # The machine kind CI runs on has one (cgroup v1 controllers); a machine
    # without it cannot run these tests, and must say so rather than pass them by.
    pytest.fail("no cgroup hierarchy with the pids controller: these tests need one")


@pytest.fixture
def pids_group() -> Iterator[Path]:
    """A pids cgroup of its own for a test's interpreter (it moves itself in), emptied and
    removed afterwards: the launcher and agents leave once the interpreter has gone."""
    group = _pids_hierarchy() / f"linx-test-{os.getpid()}"
    group.mkdir()
    try:
        yield group
    finally:
        procs = group / "cgroup.procs"
        if not wait_until(lambda: procs.read_text() == "", 20):
            for pid in procs.read_text().split():
                os.kill(int(pid), signal.SIGKILL)
            wait_until(lambda: procs.read_text() == "")
        group.rmdir()


def test_a_pids_limit_makes_clone_and_fork_fail_as_process_errors_and_spawns_recover(
    pids_group: Path,
) -> None:
    # A fresh interpreter in a cgroup of its own, so that its launcher and agents are in it
    # too. With one session running (its agent and workload hold their places), the limit
    # goes one below what is there: the spare agent cannot clone its child, and the
    # launcher, even once that agent has gone, cannot fork the next.
    result = run_python(
        """
        import json, os, pathlib, time, linx
        group = pathlib.Path(os.environ["LINX_TEST_GROUP"])
        (group / "cgroup.procs").write_text(str(os.getpid()))
        def ppid(pid):
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            return int(stat.rsplit(")", 1)[1].split()[1])
        def failure():
            session = linx.spawn(["/bin/true"], auto_proceed=True)
            try:
                session.wait(timeout=20)
            except linx.ProcessError as exc:
                return [exc.stage, exc.errno]
            finally:
                session.close()
        held = linx.spawn(["/bin/sleep", "60"])
        agent = ppid(held.events.get(timeout=20).host_pid)
        launcher = ppid(agent)
        children = pathlib.Path(f"/proc/{launcher}/task/{launcher}/children")
        while len(children.read_text().split()) < 2:  # the spare, asked for by now
            time.sleep(0.01)
        current = int((group / "pids.current").read_text())
        (group / "pids.max").write_text(str(current - 1))
        refused = [failure(), failure()]
        (group / "pids.max").write_text("max")
        after = linx.spawn(["/bin/sh", "-c", "exit 3"], auto_proceed=True)
        print(json.dumps({"refused": refused, "after": repr(after.wait(timeout=20))}))
        held.close()
        """,
        env={
            "LINX_TEST_GROUP": str(pids_group),
            # LeakSanitizer's leak check at exit needs a task of its own, which the limit
            # refuses the sanitizer build's agents (a "fatal error" report); the other
            # sanitizers run on
            "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0",
        },
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {
        "refused": [["clone", errno.EAGAIN], ["fork", errno.EAGAIN]],
        "after": "Exited(code=3)",
    }


def test_a_spawn_refused_its_reactor_thread_leaves_no_fd_and_the_next_one_runs(
    pids_group: Path,
) -> None:
    # A pids limit reached before a process's first spawn: the reactor's thread cannot
    # start (RuntimeError "can't start new thread"), and each such spawn left its eventfd
    # open, and its epoll fd until the garbage collector came.
    result = run_python(
        """
        import json, os, pathlib, linx
        group = pathlib.Path(os.environ["LINX_TEST_GROUP"])
        (group / "cgroup.procs").write_text(str(os.getpid()))
        before = sorted(os.listdir("/proc/self/fd"))
        (group / "pids.max").write_text((group / "pids.current").read_text())
        refused = []
        for _ in range(3):
            try:
                linx.spawn(["/bin/true"], auto_proceed=True)
            except RuntimeError as exc:
                refused.append(str(exc))
        left = sorted(os.listdir("/proc/self/fd")) == before
        (group / "pids.max").write_text("max")
        after = linx.spawn(["/bin/sh", "-c", "exit 3"], auto_proceed=True)
        print(json.dumps([refused, left, repr(after.wait(timeout=20))]))
        """,
        env={"LINX_TEST_GROUP": str(pids_group)},
    )
    assert result.returncode == 0, result.stderr
    refused, left, after = json.loads(result.stdout.splitlines()[-1])
    assert len(refused) == 3, refused  # RuntimeError: can't start new thread
    assert left, "a refused reactor thread left fds open"
    assert after == "Exited(code=3)"


INTERRUPTED_LAUNCHER_START = (
    INTERRUPTED_SPAWN
    + """
import gc, os, time
import linx, linx._fds, linx._reactor
from linx._runtime import get_runtime

def fds():
    return sorted(os.listdir("/proc/self/fd"))

def children():
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        return f.read().strip()

get_runtime()  # the reactor's own fds
before = fds()
calls = []

def interrupted_once(real):
    def call(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt  # where a SIGINT's handler raises at the call
        return real(*args, **kwargs)
    return call

if os.environ["INTERRUPTED_AT"] == "opening-its-pidfd":
    linx._fds.new = interrupted_once(linx._fds.new)
else:
    linx._reactor.Reactor.register = interrupted_once(linx._reactor.Reactor.register)
spawn_interrupted()
settle(lambda: not children() and fds() == before)
print(repr(children()), fds() == before)
"""
)


@pytest.mark.parametrize("where", ["opening-its-pidfd", "watching-it"])
def test_a_keyboard_interrupt_while_the_launcher_starts_leaves_no_zombie_or_fd(
    where: str,
) -> None:
    # Ctrl-C in the first spawn() of a process, once the launcher runs but before the
    # reactor watches it: the launcher's pid was dropped, so when it exited (at the EOF of
    # its socket, closed by the garbage collector) nothing reaped it, and its pidfd leaked.
    # A SIGINT that comes during posix_spawn lands as it returns: 9 of 160 interrupted
    # first spawns left a zombie.
    result = run_python(INTERRUPTED_LAUNCHER_START, env={"INTERRUPTED_AT": where})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["interrupted", "'' True"]


# --- request size -------------------------------------------------------------------------------


def test_a_request_of_several_mib_spawns() -> None:
    # 40 x 100 KiB of argv (each string under the kernel's 128 KiB limit): about 4 MiB,
    # which execve accepts once RLIMIT_STACK allows it (a quarter of the stack, at most 6 MiB).
    result = run_python(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_STACK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        import linx
        argv = ["/bin/true"] + ["%02d" % i + "x" * (100 * 1024 - 2) for i in range(40)]
        with linx.spawn(argv, env={"BIG": "y" * (100 * 1024)}, auto_proceed=True) as s:
            events = [s.events.get(timeout=30) for _ in range(3)]
            print([type(e).__name__ for e in events], s.wait(timeout=30))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['Ready', 'Running', 'Exited'] Exited(code=0)"


def test_a_several_mib_argv_at_the_default_stack_limit_is_refused_by_execve() -> None:
    # The same request under an 8 MiB stack: linx carries it, the kernel refuses it.
    result = run_python(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, resource.RLIM_INFINITY))
        import linx
        argv = ["/bin/true"] + ["x" * (100 * 1024)] * 40
        with linx.spawn(argv, auto_proceed=True) as s:
            try:
                s.wait(timeout=30)
            except linx.ProcessError as e:
                print(e.stage, e.errno_name)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "execve E2BIG"


def test_a_request_beyond_the_64_mib_cap_fails_with_request_too_big(
    session_factory: Factory,
) -> None:
    chunk = "x" * (100 * 1024)
    argv = ["/bin/true"] + [chunk] * 660  # 660 x 100 KiB > 64 MiB
    session = session_factory(argv)
    del argv
    events = drain(session, timeout=30)
    assert [type(e) for e in events] == [linx.Failed]  # no Ready
    failed = events[0]
    assert isinstance(failed, linx.Failed)
    assert_process_error(failed.error, "request_too_big", errno.EMSGSIZE)
    assert session.host_pid is None
    assert no_more_events(session)


def _release_byte_waiting(pid: int) -> bool:
    """Whether the parked child `pid` has its release byte waiting, unread, in its release
    pipe: the only pipe read end it holds above fd 2."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        if int(name) < 3 or not os.readlink(f"/proc/{pid}/fd/{name}").startswith("pipe:"):
            continue
        flags = next(
            line
            for line in Path(f"/proc/{pid}/fdinfo/{name}").read_text().splitlines()
            if line.startswith("flags:")
        )
        if int(flags.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY:
            continue
        fd = os.open(f"/proc/{pid}/fd/{name}", os.O_RDONLY | os.O_NONBLOCK)
        try:
            waiting: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
        finally:
            os.close(fd)
        return waiting > 0
    return False


def assert_fails_at_exec_outcome_only(session: linx.Session) -> None:
    """The session's next and last event is Failed(exec_outcome, EIO): no Running."""
    events = drain(session)
    assert [type(e) for e in events] == [linx.Failed], events
    failed = events[0]
    assert isinstance(failed, linx.Failed)
    assert_process_error(failed.error, "exec_outcome", errno.EIO)
    assert session.info().stage == "errored"


def test_a_child_killed_between_release_and_execve_is_exec_outcome_never_running(
    session_factory: Factory,
) -> None:
    # Stopped at the checkpoint, the child cannot take the release byte; killed there, it
    # dies before execve with nothing reported. The reference would call that Running.
    # Each step waits to be true: a SIGSTOP stops its target only once that runs (a loaded
    # machine may first let it read the byte), and a kill before the byte is in the pipe
    # lets the agent's write find the child dead (EPIPE): a failure of another kind.
    session = session_factory(["/bin/sleep", "30"])
    ready = expect(session, linx.Ready)
    os.kill(ready.host_pid, signal.SIGSTOP)
    assert wait_until(lambda: process_state(ready.host_pid) == "T")
    session.proceed()
    assert wait_until(lambda: _release_byte_waiting(ready.host_pid))
    os.kill(ready.host_pid, signal.SIGKILL)
    assert_fails_at_exec_outcome_only(session)


def test_a_child_killed_while_parked_is_exec_outcome_eio(session_factory: Factory) -> None:
    # No PROCEED: the child dies at the checkpoint, and its report pipe's EOF is the only
    # sign (protocol.md: EOF while parked). The session fails at once, not at a later
    # PROCEED, and not never.
    session = session_factory(["/bin/sleep", "30"])
    ready = expect(session, linx.Ready)
    os.kill(ready.host_pid, signal.SIGKILL)
    assert_fails_at_exec_outcome_only(session)


INTERRUPTED_AS_THE_LAUNCHER_IS_STORED = """
import os, sys
import linx
from linx._runtime import get_runtime

def children():
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        return f.read().split()

runtime = get_runtime()
started = []

def trace(frame, event, arg):
    if event == "call":
        frame.f_trace_opcodes = frame.f_code.co_name == "_current_launcher"
    elif event == "return" and frame.f_code.co_qualname == "Launcher.__init__":
        started.append(True)
    elif event == "opcode" and frame.f_code.co_name == "_current_launcher" and started:
        sys.settrace(None)
        raise KeyboardInterrupt  # as the call of the class returned: a C call's return
    return trace

sys.settrace(trace)
try:
    linx.spawn(["/bin/true"], auto_proceed=True)
except KeyboardInterrupt:
    print("interrupted")
sys.settrace(None)
print(linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10))
print(children() == [str(runtime._launcher.pid)])
"""


def test_a_keyboard_interrupt_as_the_launcher_starts_leaves_no_idle_launcher() -> None:
    # Ctrl-C in the first spawn() as Launcher(...) returned, before the runtime stored it:
    # the reactor watched that launcher, so it ran on, never asked for an agent, for the
    # life of the process, while the next spawn started a second one.
    result = run_python(INTERRUPTED_AS_THE_LAUNCHER_IS_STORED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["interrupted", "Exited(code=0)", "True"]


INTERRUPTED_AS_THE_LAUNCHERS_END_IS_COPIED = (
    INTERRUPTED_SPAWN
    + """
import gc, os, sys, time
import linx
from linx._runtime import get_runtime

def sockets():
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.add(name)
        except OSError:
            pass
    return found

runtime = get_runtime()
before = sockets()
base = []

def interrupt(frame, event, arg):
    if frame.f_code.co_name != "duplicate_socket":
        return
    if event == "call":
        base.append(sockets())
    elif event == "c_return" and sockets() != base[0]:  # the first return once the copy exists
        sys.setprofile(None)
        raise KeyboardInterrupt

spawn_interrupted(interrupt)
settle(lambda: not sockets() - before)
print(sorted(sockets() - before))
"""
)


def test_a_keyboard_interrupt_as_the_launchers_socket_end_is_copied_leaks_no_socket() -> None:
    # Ctrl-C in the first spawn() as fcntl returned the copy of the launcher's end of its
    # socket pair (made at fd 10 or above for the launcher's fd 3), or as socket.socket's
    # __init__ was entered with it: the fd was lost, open for the life of the process.
    result = run_python(INTERRUPTED_AS_THE_LAUNCHERS_END_IS_COPIED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["interrupted", "[]"]
