"""Resource hygiene: no fd, thread or zombie is left behind, and nothing leaks into workloads.

Real processes throughout. The reference point for "nothing leaked" is taken after a warm-up
session, so the reactor thread and the launcher already exist.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

import linx
from linx._runtime import get_runtime
from tests.conftest import (
    INTERRUPTED_SPAWN,
    drain,
    expect,
    launcher_pid,
    pid_alive,
    process_state,
    run_python,
    wait_until,
)

# --- helpers -------------------------------------------------------------------------------


def _open_fds() -> dict[int, str]:
    """This process's open fds and what they point at, but the spare agent's socket.

    linx keeps one agent asked for ahead of need; each spawn takes it and a new one comes,
    so its socket is a different one after every session but never more than one.
    """
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the fd of the listdir itself
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    spare = get_runtime()._spare
    if spare is not None:
        fds.pop(spare.sock.fileno(), None)
    return fds


def _thread_counts() -> tuple[int, int]:
    return threading.active_count(), len(os.listdir("/proc/self/task"))


def _process_table() -> dict[int, tuple[str, int]]:
    """pid -> (state letter, ppid) for every process visible in /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(name)] = (fields[0], int(fields[1]))
    return table


def _zombies_under(root: int) -> list[int]:
    """Zombies among the descendants of `root` (children, agents, workloads...)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid) in table.items():
        children.setdefault(ppid, []).append(pid)
    zombies, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if table[child][0] == "Z":
                zombies.append(child)
            todo.append(child)
    return zombies


def _zombie_children_of(*parents: int) -> list[int]:
    return [pid for pid, (st, ppid) in _process_table().items() if st == "Z" and ppid in parents]


def _fd_targets(pid: int) -> dict[int, str]:
    fds = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            fds[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return fds


def _settled(pid: int) -> None:
    """Wait until a just-exec'd workload blocks (in its sleep): its dynamic loader, which
    briefly holds libc.so open on fd 3, is done by then."""
    assert wait_until(lambda: process_state(pid) == "S", timeout=5), process_state(pid)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


# --- the six endings ---------------------------------------------------------------------
# Each ending is (start, finish): start spawns, finish drives the session to its end and
# checks the outcome. A batch starts one of each, then finishes them, so they overlap.

Start = Callable[[], linx.Session]
Finish = Callable[[linx.Session], None]


def _finish_exited(code: int) -> Finish:
    def finish(session: linx.Session) -> None:
        events = drain(session)
        assert [type(e) for e in events] == [linx.Ready, linx.Running, linx.Exited], events
        assert events[-1] == linx.Exited(code=code)
        session.close()

    return finish


def _finish_signaled(session: linx.Session) -> None:
    expect(session, linx.Ready)
    expect(session, linx.Running)
    session.signal(signal.SIGTERM)
    assert expect(session, linx.Signaled) == linx.Signaled(signum=signal.SIGTERM)
    session.close()


def _finish_aborted(session: linx.Session) -> None:
    expect(session, linx.Ready)
    session.abort()
    expect(session, linx.Aborted)
    session.close()


def _finish_execve_failed(session: linx.Session) -> None:
    expect(session, linx.Ready)
    failed = expect(session, linx.Failed)
    assert (failed.error.stage, failed.error.errno) == ("execve", 2), failed
    session.close()


def _finish_closed_running(session: linx.Session) -> None:
    expect(session, linx.Ready)
    expect(session, linx.Running)
    host_pid = session.host_pid
    assert host_pid is not None
    session.close()
    assert not pid_alive(host_pid)


ENDINGS: list[tuple[str, Start, Finish]] = [
    (
        "exited 0",
        lambda: linx.spawn(["/bin/true"], namespaces=["pid"], auto_proceed=True),
        _finish_exited(0),
    ),
    (
        "exited nonzero",
        lambda: linx.spawn(["/bin/sh", "-c", "exit 3"], auto_proceed=True),
        _finish_exited(3),
    ),
    (
        "signaled",
        lambda: linx.spawn(["/bin/sleep", "60"], auto_proceed=True),
        _finish_signaled,
    ),
    ("aborted", lambda: linx.spawn(["/bin/sleep", "60"]), _finish_aborted),
    (
        "execve failed",
        lambda: linx.spawn(["/nonexistent/linx-test-program"], auto_proceed=True),
        _finish_execve_failed,
    ),
    (
        "closed while running",
        lambda: linx.spawn(["/bin/sleep", "60"], auto_proceed=True),
        _finish_closed_running,
    ),
]


def _run_batch() -> None:
    started: list[tuple[linx.Session, Finish]] = []
    try:
        for _name, start, finish in ENDINGS:
            started.append((start(), finish))
        for session, finish in started:
            finish(session)
    finally:
        for session, _ in started:
            session.close()


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_thousand_sessions_with_mixed_endings_leak_no_fd_thread_or_zombie() -> None:
    _run_batch()  # warm-up: the reactor and the launcher exist from here on
    gc.collect()
    time.sleep(0.2)  # the reactor closes released sockets asynchronously
    zombies_before = set(_zombies_under(os.getpid()))  # not ours to judge: other tests'
    fds_before = _open_fds()
    threads_before = _thread_counts()
    launcher = launcher_pid()

    batches = -(-1000 // len(ENDINGS))
    for _ in range(batches):
        _run_batch()
    gc.collect()

    # The reactor closes sockets asynchronously, so give it a moment to catch up.
    wait_until(lambda: _open_fds() == fds_before, timeout=5)
    fds_after = _open_fds()
    leaked = {fd: target for fd, target in fds_after.items() if fd not in fds_before}
    lost = {fd: target for fd, target in fds_before.items() if fd not in fds_after}
    assert not leaked and not lost, f"fds leaked: {leaked}; fds lost: {lost}"
    assert _thread_counts() == threads_before
    assert launcher_pid() == launcher, "the launcher was replaced during the run"

    def new_zombies() -> set[int]:
        return set(_zombies_under(os.getpid())) - zombies_before

    wait_until(lambda: not new_zombies(), timeout=5)
    assert new_zombies() == set()
    assert set(_zombie_children_of(os.getpid(), launcher)) - zombies_before == set()


def test_workload_has_only_fds_0_1_2_although_this_process_has_inheritable_fds() -> None:
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    os.set_inheritable(write_end, True)
    pipe = os.readlink(f"/proc/self/fd/{read_end}")
    # Replace the launcher so the new one starts while the inheritable pipe is open.
    old = get_runtime()._launcher
    if old is not None and old.alive:
        os.kill(old.pid, signal.SIGKILL)
        assert wait_until(lambda: not old.alive)
    try:
        with linx.spawn(["/bin/sleep", "60"], auto_proceed=True) as session:
            expect(session, linx.Ready)
            expect(session, linx.Running)
            host_pid = session.host_pid
            assert host_pid is not None
            _settled(host_pid)
            workload_fds = _fd_targets(host_pid)
            assert sorted(workload_fds) == [0, 1, 2], workload_fds
            assert pipe not in workload_fds.values()
            # Nor does the pipe reach the programs in between.
            agent = _ppid(host_pid)
            assert pipe not in _fd_targets(agent).values()
            assert pipe not in _fd_targets(launcher_pid()).values()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_workload_gets_a_passed_fd_as_stdout_and_no_other_extra_fd() -> None:
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    pipe = os.readlink(f"/proc/self/fd/{write_end}")
    try:
        with linx.spawn(
            ["/bin/sleep", "60"], stdio={"stdout": write_end}, auto_proceed=True
        ) as session:
            expect(session, linx.Ready)
            expect(session, linx.Running)
            assert session.host_pid is not None
            _settled(session.host_pid)
            workload_fds = _fd_targets(session.host_pid)
            assert sorted(workload_fds) == [0, 1, 2], workload_fds
            assert workload_fds[1] == pipe
            assert workload_fds[0] != pipe and workload_fds[2] != pipe
    finally:
        os.close(read_end)
        os.close(write_end)


# Reports, from inside the workload, which of its fds 0, 1, 2 are open and what they are.
_STDIO_PROBE = (
    'for f in 0 1 2; do if [ -e /proc/$$/fd/$f ]; then echo "$f $(readlink /proc/$$/fd/$f)"'
    ' >> "$0"; fi; done; echo end >> "$0"'
)


@pytest.mark.parametrize("closed", [(0, 1, 2), (1, 2)], ids=["all-closed", "1-and-2-closed"])
def test_a_process_with_closed_standard_fds_passes_them_closed_and_nothing_of_linx(
    closed: tuple[int, ...], tmp_path: Path
) -> None:
    # A daemon runs with its standard fds closed. linx's own fds (epoll, eventfd, sockets,
    # the stdio copies of a spawn) must not land on them: a later "inherit" would hand
    # them to the workload, even while a refill in the reactor thread creates one. Many
    # spawns: the first creates linx's machinery, each makes the reactor refill.
    report = tmp_path / "fds"
    done = run_python(
        f"""
        import os
        for fd in {closed!r}:
            os.close(fd)
        import linx
        for _ in range(30):
            session = linx.spawn(["/bin/sh", "-c", {_STDIO_PROBE!r}, {str(report)!r}],
                                 auto_proceed=True)
            assert session.wait(timeout=20) == linx.Exited(0)
        """,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    kept = "0 /dev/null\n" if 0 not in closed else ""
    assert report.read_text() == f"{kept}end\n" * 30


def _signal_set(pid: int, field: str) -> set[int]:
    """The signals in a /proc/<pid>/status mask line (SigIgn, SigBlk...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            mask = int(line.split()[1], 16)
            return {n + 1 for n in range(64) if mask >> n & 1}
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_workload_starts_with_no_ignored_or_blocked_signal() -> None:
    # Python itself ignores SIGPIPE and SIGXFSZ; the launcher is started with posix_spawn.
    assert {signal.SIGPIPE, signal.SIGXFSZ} <= _signal_set(os.getpid(), "SigIgn")
    with linx.spawn(["/bin/sleep", "60"], auto_proceed=True) as session:
        expect(session, linx.Ready)
        expect(session, linx.Running)
        assert session.host_pid is not None
        _settled(session.host_pid)
        assert _signal_set(session.host_pid, "SigIgn") == set()
        assert _signal_set(session.host_pid, "SigBlk") == set()


def _forked_child_checks(
    parked: linx.Session, running: linx.Session, parent_launcher: int, report: int
) -> int:
    """Runs in the forked child; returns its exit status (0: every check passed)."""

    def say(message: str) -> None:
        os.write(report, message.encode() + b"\n")

    for name, session in (("parked", parked), ("running", running)):
        verbs: list[tuple[str, Callable[[], object]]] = [
            ("wait", lambda s=session: s.wait(timeout=1)),  # type: ignore[misc]
            ("info", session.info),
            ("proceed", session.proceed),
            ("abort", session.abort),
            ("signal", lambda s=session: s.signal(signal.SIGKILL)),  # type: ignore[misc]
        ]
        for verb, call in verbs:
            try:
                call()
            except linx.NoProcess:
                continue
            except BaseException as exc:
                say(f"{name}.{verb}() in the child raised {exc!r}, not NoProcess")
                return 2
            say(f"{name}.{verb}() in the child did not raise NoProcess")
            return 3
    with linx.spawn(["/bin/sh", "-c", "exit 0"], auto_proceed=True) as own:
        outcome = own.wait(timeout=10)
    if outcome != linx.Exited(code=0):
        say(f"the child's own session ended with {outcome!r}")
        return 4
    launcher = launcher_pid()
    if launcher == parent_launcher or _ppid(launcher) != os.getpid():
        say(f"the child uses launcher {launcher}, not one of its own")
        return 5
    return 0


def test_forked_child_gets_its_own_launcher_and_parent_sessions_are_unaffected() -> None:
    go_read, go_write = os.pipe()
    parked = linx.spawn(["/bin/sh", "-c", "exit 0"])
    running = linx.spawn(["/bin/sh", "-c", "read line; exit 3"], stdio={"stdin": go_read})
    os.close(go_read)
    try:
        expect(parked, linx.Ready)
        expect(running, linx.Ready)
        running.proceed()
        expect(running, linx.Running)
        parent_launcher = launcher_pid()
        report_read, report_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            status = 1
            try:
                status = _forked_child_checks(parked, running, parent_launcher, report_write)
            except BaseException as exc:
                os.write(report_write, f"the child raised {exc!r}\n".encode())
            finally:
                os._exit(status)
        os.close(report_write)
        _, wait_status = os.waitpid(pid, 0)
        with os.fdopen(report_read) as report:
            message = report.read()
        assert os.waitstatus_to_exitcode(wait_status) == 0, message

        # The parent's sessions did not notice: the parked one still parks, the running one runs.
        assert parked.info().stage == linx.Stage.READY
        assert running.info().stage == linx.Stage.RUNNING
        assert launcher_pid() == parent_launcher
        parked.proceed()
        assert parked.wait(timeout=10) == linx.Exited(code=0)
        os.write(go_write, b"go\n")  # the shell reads its line and exits 3
        assert running.wait(timeout=10) == linx.Exited(code=3)
    finally:
        os.close(go_write)
        parked.close()
        running.close()


def test_a_fork_while_another_thread_places_an_fd_waits_and_the_child_can_spawn() -> None:
    # linx makes its fds under a lock (_fds.py), and a fork waits for it: no fd is half made
    # at the fork (a raw one the child could not know to close). The child gets a fresh
    # lock, since the thread that held it does not exist there.
    from linx import _fds

    holding, release = threading.Event(), threading.Event()
    released_at: list[float] = []

    def hold() -> None:
        with _fds._placing:
            holding.set()
            release.wait(0.3)
            released_at.append(time.monotonic())

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        pid = os.fork()
        forked_at = time.monotonic()
        if pid == 0:  # the child: never return into pytest
            status = 1
            try:
                outcome = linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
                status = 0 if outcome == linx.Exited(0) else 2
            finally:
                os._exit(status)
    finally:
        release.set()
        holder.join()
    ended: list[int] = []

    def reaped() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            ended.append(os.waitstatus_to_exitcode(status))
        return bool(done)

    if not wait_until(reaped, 15):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child hangs on linx's fd lock")
    assert ended == [0]
    assert forked_at >= released_at[0]  # the fork waited for the fd being made


def test_a_fork_inside_linx_fd_making_in_the_same_thread_does_not_deadlock() -> None:
    # As a signal handler's fork would be: it interrupts this thread while it holds the lock
    # under which linx makes an fd, and the fork takes that lock first.
    result = run_python(
        """
        import os
        import linx
        from linx import _fds

        with _fds._placing:
            child = os.fork()
            if child == 0:
                outcome = linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
                os._exit(0 if outcome == linx.Exited(0) else 1)
        _, status = os.waitpid(child, 0)
        print(os.waitstatus_to_exitcode(status))
        print(linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10))
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0", "Exited(code=0)"]


# A thread spawns while the main thread forks a child that lives on (a multiprocessing
# worker, say); the parent then drops the session. Its agent must see EOF, and so end the
# workload, although the spawn was under way at the fork, its socket in no table yet.
FORK_DURING_SPAWN = """
    import os, threading, time
    import linx

    def workload_outlives_its_dropped_session(delay):
        made, go = {}, threading.Barrier(2)

        def spawn():
            go.wait()
            made["session"] = linx.spawn(["/bin/sleep", "1000"], auto_proceed=True,
                                         stdio="devnull", orphan_policy=("kill", 0.0))

        spawner = threading.Thread(target=spawn)
        spawner.start()
        go.wait()
        time.sleep(delay)  # the fork lands at different points of the spawn
        child = os.fork()
        if child == 0:
            time.sleep(5)
            os._exit(0)
        spawner.join()
        session = made.pop("session")
        assert isinstance(session.events.get(timeout=10), linx.Ready)
        workload = session.host_pid
        del session
        deadline = time.monotonic() + 2
        while os.path.exists(f"/proc/{workload}") and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(child, 9)
        os.waitpid(child, 0)
        return os.path.exists(f"/proc/{workload}")

    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)  # the launcher is up
    print(sum(workload_outlives_its_dropped_session(i % 20 * 0.00005) for i in range(40)))
"""


def test_a_child_forked_during_a_spawn_keeps_no_copy_of_its_socket() -> None:
    result = run_python(FORK_DURING_SPAWN, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def _has_stage(session: linx.Session, stage: linx.Stage) -> bool:
    return session.info().stage == stage


@pytest.mark.parametrize("read_events", [True, False], ids=["events-read", "events-unread"])
@pytest.mark.usefixtures("no_gc")
def test_dropped_session_kills_its_running_workload_without_the_garbage_collector(
    read_events: bool,
) -> None:
    # Nothing a session holds leads back to it (its queued events hold it weakly), so
    # `del` alone frees it and its workload gets the orphan policy at once; a reference
    # cycle would wait for a collection, which an idle program may never run.
    session = linx.spawn(["/bin/sleep", "60"], auto_proceed=True, orphan_policy=("kill", 1.0))
    if read_events:
        expect(session, linx.Ready)
        expect(session, linx.Running)
    else:  # both stay queued in the session's own queue
        assert wait_until(functools.partial(_has_stage, session, linx.Stage.RUNNING))
    host_pid = session.host_pid
    assert host_pid is not None
    ref = weakref.ref(session)
    try:
        assert pid_alive(host_pid)
        del session
        # Not at once: the reactor thread holds a session for the moment it hands an event
        # over. Without the collector, only reference counting can free it.
        assert wait_until(lambda: ref() is None, 5), "a dropped session is in a cycle"
        assert wait_until(lambda: not pid_alive(host_pid), timeout=5), (
            "a dropped session's workload is still running"
        )
    finally:
        if pid_alive(host_pid):
            os.kill(host_pid, signal.SIGKILL)


@pytest.mark.usefixtures("no_gc")
def test_dropped_and_closed_sessions_leave_no_entry_in_the_runtime() -> None:
    from linx._runtime import get_runtime

    runtime = get_runtime()
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
    before = len(runtime._agents)
    hosts = []
    for _ in range(5):
        dropped = linx.spawn(["/bin/sleep", "30"], auto_proceed=True)
        assert dropped.events is not None
        assert isinstance(dropped.events.get(timeout=10), linx.Ready)
        hosts.append(dropped.host_pid)
        del dropped
        closed = linx.spawn(["/bin/sleep", "30"])
        closed.close()
    assert wait_until(lambda: len(runtime._agents) == before, 10), runtime._agents
    assert wait_until(lambda: not any(pid_alive(p) for p in hosts if p is not None), 10)


class _Owner:
    """An owner that a weak reference can watch."""

    def __init__(self) -> None:
        self.events: list[linx.Event] = []

    def put(self, event: linx.Event) -> None:
        self.events.append(event)


@pytest.mark.usefixtures("no_gc")
def test_a_finished_sessions_owner_is_freed_although_the_reactor_has_no_more_work() -> None:
    # The reactor thread's loop kept the last handler it ran (a local of its loop) until the
    # next event on any fd: in a process that then spawns nothing more, the last session's
    # channel, and with it the caller's owner and whatever that holds, stayed for ever.
    owner = _Owner()
    ref = weakref.ref(owner)
    session = linx.spawn(["/bin/true"], auto_proceed=True, owner=owner)
    assert session.wait(timeout=10) == linx.Exited(0)
    session.close()
    del session, owner
    assert wait_until(lambda: ref() is None, 10), "the reactor still holds the owner"


def test_closing_or_dropping_a_finished_session_asks_nothing_of_the_reactor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its terminal step released it already; a call would only wake the reactor thread as
    # the caller starts its next spawn.
    reactor = get_runtime().reactor
    asked: list[object] = []
    closed = linx.spawn(["/bin/true"], auto_proceed=True)
    dropped = linx.spawn(["/bin/true"], auto_proceed=True)
    assert closed.wait(timeout=10) == dropped.wait(timeout=10) == linx.Exited(code=0)
    # The reactor's own calls for them (refill, close) come just after the outcome.
    channels = [closed._channel, dropped._channel]
    assert wait_until(lambda: all(channel._sock is None for channel in channels))
    monkeypatch.setattr(reactor, "call_soon", asked.append)
    closed.close()
    del dropped
    gc.collect()
    assert asked == []
    with pytest.raises(linx.NoProcess):
        closed.wait()


def test_dropping_a_session_never_waits_for_its_channels_lock() -> None:
    # __del__ runs wherever the last reference goes: in a garbage collection inside the
    # channel's own locked section, or at interpreter exit while the frozen reactor thread
    # holds that lock. Simulated by holding it in the dropping thread: that deadlocked.
    code = """
        import gc, os, time
        import linx
        gc.disable()
        session = linx.spawn(["/bin/sleep", "30"], auto_proceed=True)
        while session.info().stage != "running":
            time.sleep(0.01)
        host_pid, channel = session.host_pid, session._channel
        with channel._lock:
            del session
        for _ in range(500):
            if not os.path.exists(f"/proc/{host_pid}"):  # killed and reaped by its agent
                break
            time.sleep(0.01)
        else:
            raise SystemExit("the dropped session's workload is still running")
        print("ok")
    """
    try:
        done = run_python(code, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("dropping a session waited for its channel's lock")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]


FORK_WHILE_A_SPAWN_HOLDS_A_COPY = """
import os
from linx import _options

read_end, write_end = os.pipe()
pipe = os.fstat(write_end).st_ino
# What a spawn under way in another thread holds at the fork: its copies of the caller's fds.
plan = _options.plan_spawn(["/bin/true"], stdio={"stdout": write_end})
child = os.fork()
if child == 0:
    copies = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            same = os.stat(f"/proc/self/fd/{fd}").st_ino == pipe
            copies += same and int(fd) not in (read_end, write_end)
        except OSError:
            pass
    os._exit(copies)
_, status = os.waitpid(child, 0)
plan.close_fds()
print(os.waitstatus_to_exitcode(status))
"""


def test_a_child_forked_while_a_spawn_holds_copies_of_the_callers_fds_closes_them() -> None:
    # Kept, the copy of a pipe given as stdout would hold the pipe open for as long as the
    # forked child lives (a worker process, say), and the parent's reader would not see EOF
    # when the workload exits.
    result = run_python(FORK_WHILE_A_SPAWN_HOLDS_A_COPY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", "the forked child kept linx's copy of the pipe"


def _interrupt(*_args: object, **_kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["planning", "starting"])
def test_a_keyboard_interrupt_in_spawn_leaks_no_copy_of_the_callers_fds(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Ctrl-C in a spawn() after the caller's fds were copied: while the request is made
    # from them, or between planning the spawn and starting it.
    import linx._wire
    import linx.session

    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)  # the runtime is up
    runtime = get_runtime()
    assert wait_until(lambda: runtime._spare is not None and not runtime._refilling)
    read_end, write_end = os.pipe()
    try:
        before = _open_fds()
        if where == "planning":
            monkeypatch.setattr(linx._wire, "Spawn", _interrupt)
        else:
            monkeypatch.setattr(linx.session, "_start_plan", _interrupt)
        with pytest.raises(KeyboardInterrupt):
            linx.spawn(["/bin/true"], stdio={"stdout": write_end, "stderr": write_end})
        monkeypatch.undo()
        gc.collect()
        leaked = {fd: t for fd, t in _open_fds().items() if fd not in before}
        assert leaked == {}
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.usefixtures("no_gc")
def test_a_session_dropped_in_a_forked_child_writes_nothing_to_its_files(
    tmp_path: Path,
) -> None:
    # The child's copy of the parent's reactor has no thread, and its wake fd is closed:
    # the number goes to the next file the child opens. Dropping a parent's session there
    # must not wake that reactor, which would write 8 bytes into the child's file.
    holder = [linx.spawn(["/bin/sleep", "30"], auto_proceed=True)]
    expect(holder[0], linx.Ready)
    expect(holder[0], linx.Running)
    wake_fd = get_runtime().reactor._wake_fd
    log = tmp_path / "log"
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            opened = []
            while True:  # the child's own files, one of them at the freed number
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                opened.append(fd)
                if fd == wake_fd or fd > wake_fd + 16:
                    break
            os.write(fd, b"line\n")
            holder.clear()  # the child drops its copy of the session
            status = 0
        finally:
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(wait_status) == 0
        assert log.read_bytes() == b"line\n"
    finally:
        holder[0].close()


@pytest.mark.parametrize("where", ["taking-the-spare", "after-sending"])
def test_a_keyboard_interrupt_in_spawn_leaves_no_entry_in_the_agent_table(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Ctrl-C in a spawn() once its agent is in the runtime's agent table, before the spawn
    # hands it to its session: as the spare is taken, or as the request's fds are released
    # after the request went out. The entry stayed there for the life of the process, one
    # more for each such interrupt (2000 spawns under random SIGINTs left 3 to 6).
    import linx._options
    from linx._runtime import Runtime

    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
    runtime = get_runtime()
    assert wait_until(lambda: runtime._spare is not None and not runtime._refilling)
    before = dict(runtime._agents)
    if where == "taking-the-spare":
        take_spare = Runtime._take_spare

        def interrupted(self: Runtime, *args: object) -> object:
            take_spare(self, *args)  # type: ignore[arg-type]
            raise KeyboardInterrupt  # where a SIGINT lands as it returns

        monkeypatch.setattr(Runtime, "_take_spare", interrupted)
    else:
        close_fds = linx._options.SpawnPlan.close_fds
        calls: list[object] = []

        def interrupted_once(plan: linx._options.SpawnPlan) -> None:
            calls.append(plan)
            if len(calls) == 1:
                raise KeyboardInterrupt
            close_fds(plan)

        monkeypatch.setattr(linx._options.SpawnPlan, "close_fds", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        linx.spawn(["/bin/sleep", "30"], auto_proceed=True)
    monkeypatch.undo()
    gc.collect()
    assert runtime._agents == before
    # and linx goes on working
    assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10) == linx.Exited(0)


INTERRUPTED_REACTOR_START = (
    INTERRUPTED_SPAWN
    + """
import os, threading, time
import linx

before = sorted(os.listdir("/proc/self/fd"))
start = threading.Thread.start

def interrupted(self):
    start(self)  # the thread runs
    raise KeyboardInterrupt  # as if it came while start() waited for that

threading.Thread.start = interrupted
spawn_interrupted()
threading.Thread.start = start
settle(lambda: threading.active_count() == 1)
print(threading.active_count(), sorted(os.listdir("/proc/self/fd")) == before)
print(linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10))
"""
)


def test_a_keyboard_interrupt_while_the_reactor_thread_starts_leaves_no_thread_or_fd() -> None:
    # Ctrl-C in the first spawn() of a process as the reactor's thread started (start()
    # waits for it; 34 of 109 first spawns interrupted at random): the runtime was never
    # made, but its reactor thread ran on for good, holding an epoll fd and an eventfd,
    # and the next spawn made a second one.
    result = run_python(INTERRUPTED_REACTOR_START)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["interrupted", "1 True", "Exited(code=0)"]


SLOW_WAKE_AT_INTERRUPTED_REACTOR_START = (
    INTERRUPTED_SPAWN
    + """
import _thread, os, sys, threading, time
import linx

before = sorted(os.listdir("/proc/self/fd"))
write = os.eventfd_write
os.eventfd_write = lambda fd, n: (time.sleep(0.2), write(fd, n))[1]

def interrupt(frame, event, arg):
    # as the reactor's thread is made, before start() waits for it: this thread keeps
    # the GIL, so the new one runs only once the slow write sleeps
    if event == "c_return" and arg is _thread.start_new_thread:
        sys.setprofile(None)
        raise KeyboardInterrupt

spawn_interrupted(interrupt)
os.eventfd_write = write
settle(lambda: threading.active_count() == 1)
print(threading.active_count(), sorted(os.listdir("/proc/self/fd")) == before)
print(linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10))
"""
)


def test_an_interrupted_reactor_start_wakes_its_thread_before_the_thread_closes_its_fds() -> None:
    # The thread, once it sees it is to stop, closes the reactor's fds; it could see that
    # before the interrupted start had written its wake-up, which then went to a closed
    # eventfd: OSError(EBADF) in place of the KeyboardInterrupt (or 8 bytes into whatever
    # file had the number by then). A slow write makes that order certain.
    result = run_python(SLOW_WAKE_AT_INTERRUPTED_REACTOR_START)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["interrupted", "1 True", "Exited(code=0)"]


def test_an_fd_that_epoll_refuses_is_not_taken_for_watched(tmp_path: Path) -> None:
    # epoll refuses a regular file (EPERM), as it refuses any fd past
    # fs.epoll.max_user_watches (ENOSPC): the handler stayed stored, so `watches` said yes,
    # and a launcher whose pidfd was refused was neither ended at once nor ever reaped.
    reactor = get_runtime().reactor
    with (tmp_path / "plain").open("wb") as plain:
        with pytest.raises(PermissionError):
            reactor.register(plain.fileno(), 1, lambda events: None)
        assert not reactor.watches(plain.fileno())


def test_a_keyboard_interrupt_as_spawn_sends_a_large_requests_rest_frees_its_channel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A request too big for the socket is finished by the channel once it has the socket,
    # which the reactor then watches. A Ctrl-C there had spawn() close that socket itself:
    # the reactor kept its handler, and with it the channel and the caller's owner, for the
    # life of the process, and logged EBADF tracebacks as the channel wrote on.
    import linx._channel

    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
    owner = _Owner()
    ref = weakref.ref(owner)
    flush = linx._channel.Channel._flush
    calls: list[int] = []

    def interrupted_once(channel: linx._channel.Channel) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # where a SIGINT's handler raises at the call
        flush(channel)

    monkeypatch.setattr(linx._channel.Channel, "_flush", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        linx.spawn(["/bin/true", "x" * (4 << 20)], auto_proceed=True, owner=owner)
    monkeypatch.undo()
    del owner
    # the channel holds the owner: a reactor handler left for it would keep both
    assert wait_until(lambda: gc.collect() >= 0 and ref() is None, 10), "the owner is kept"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10) == linx.Exited(0)


# A C function's return is where CPython 3.11 runs a pending signal's handler: an exception
# raised there by a profile function ("c_return") loses the result just as a
# KeyboardInterrupt would. A C function that map calls from C has no such event.
INTERRUPTED_AS_AN_FD_IS_MADE = (
    INTERRUPTED_SPAWN
    + """
import gc, os, sys, time
import linx, linx._fds
from linx._runtime import get_runtime

where = os.environ["INTERRUPTED_AT"]

def fds():
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link == f"anon_inode:[{where}]":
            found.add(name)
        elif where == "closing-copies" and not link.startswith(("socket:", "anon_inode:", "/proc")):
            found.add(name)  # copies of stdin, stdout and stderr
    return found

if where == "closing-copies":
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
before = fds()

def due(function):
    if where != "closing-copies":
        return fds() != before  # the first return once the fd exists
    return getattr(function, "__self__", None) is linx._fds._copies and (
        function.__name__ == "difference_update"
    )

def interrupt(frame, event, arg):
    if event == "c_return" and due(arg):
        sys.setprofile(None)
        raise KeyboardInterrupt

spawn_interrupted(interrupt)
runtime = get_runtime()
launcher = runtime._launcher
own = {str(runtime.reactor._wake_fd)} if where == "eventfd" else set()
if where == "pidfd" and launcher is not None and launcher.alive:
    own.add(str(launcher._pidfd))
settle(lambda: not fds() - before - own)
print(sorted(fds() - before - own))
"""
)


@pytest.mark.parametrize("where", ["eventfd", "pidfd", "closing-copies"])
def test_a_keyboard_interrupt_as_a_spawn_makes_or_closes_an_fd_leaks_none(where: str) -> None:
    # Ctrl-C as os.eventfd returned in the first spawn (the reactor's wake fd; 7 of 110
    # first spawns interrupted at random) lost that eventfd for good, as one when
    # pidfd_open returned lost the launcher's pidfd. One as the request's
    # copies of the caller's fds were being closed, once the list holding them was emptied
    # and before they were closed, lost all three ("inherit" stdio).
    result = run_python(INTERRUPTED_AS_AN_FD_IS_MADE, env={"INTERRUPTED_AT": where})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["interrupted", "[]"]


INTERRUPTED_ATTACH = (
    INTERRUPTED_SPAWN
    + """
import gc, os, sys, time
import linx
from linx._runtime import get_runtime

runtime = get_runtime()
linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)  # a spare, as most spawns
where = os.environ["INTERRUPTED_AT"]
watched = []

def interrupt(frame, event, arg):
    if where == "entering" and event == "call" and frame.f_code.co_name == "attach":
        due = frame.f_globals["__name__"] == "linx._runtime"
    elif where == "registered" and event == "c_return" and frame.f_code.co_name == "register":
        due = frame.f_back.f_code.co_name == "attach"  # the session socket, from Channel
        watched.extend([frame.f_locals["fd"]] if due else [])
    else:
        due = False
    if due:
        sys.setprofile(None)
        raise KeyboardInterrupt

spawn_interrupted(interrupt)

def left():
    return [fd for fd in watched if runtime.reactor.watches(fd)], len(runtime._agents)

settle(lambda: left() == ([], 0))
print(left())
print(linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10))
"""
)


@pytest.mark.parametrize("where", ["entering", "registered"])
def test_a_keyboard_interrupt_as_a_spawn_attaches_its_channel_leaves_nothing_behind(
    where: str,
) -> None:
    # Ctrl-C as Runtime.attach was entered (its handler not yet in force) left the agent's
    # entry in the agent table for good. One once the channel had registered the session
    # socket with the reactor closed that socket from the caller's thread, though only the
    # reactor thread may close a registered fd: the reactor went on watching the number
    # (its handler kept, for whatever file the number names next).
    result = run_python(INTERRUPTED_ATTACH, env={"INTERRUPTED_AT": where})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["interrupted", "([], 0)", "Exited(code=0)"]


SIGNALED_GROUP = """
import os, queue, signal
import linx

signum = SIGNUM
signal.signal(signum, signal.SIG_IGN)  # ours to ignore; the agent must do without it
session = linx.spawn(["/bin/sleep", "30"])
assert isinstance(session.events.get(timeout=10), linx.Ready)
os.killpg(0, signum)  # as a terminal or a supervisor would: to the whole group
session.abort()
try:
    print(type(session.events.get(timeout=10)).__name__)
except queue.Empty:
    print("no answer")
os.killpg(0, signal.SIGCONT)  # a stopped agent (the failure) must not stay stopped
session.close()
"""


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGHUP,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGTERM,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
    ],
    ids=lambda s: signal.Signals(s).name,
)
def test_a_signal_to_the_callers_process_group_neither_kills_nor_stops_the_agent(
    signum: int,
) -> None:
    # A terminal's Ctrl-C/Ctrl-Z/hang-up and a job's background stops go to the whole
    # process group, launcher and agents included: killed, the session would be lost;
    # stopped, it would answer nothing until a SIGCONT. The agent still answers an ABORT.
    # Against the sanitizer agent, LeakSanitizer's check at the launcher's exit, which stops
    # every thread with ptrace, spins for good in a process group that got such a signal
    # (the check, not linx: without it the same runs end at once), and this interpreter's
    # exit waits for its launcher. The check is for leaks; this test is not.
    sanitizer = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"}
    done = run_python(
        SIGNALED_GROUP.replace("SIGNUM", str(int(signum))), process_group=0, env=sanitizer
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Aborted"]
