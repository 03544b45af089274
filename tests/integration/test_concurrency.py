"""Many threads and tasks at once, and an application that reaps children itself (SPEC §2)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import linx
import linx.aio
import linx.session
from linx._launcher import Credentials, Launcher
from linx._runtime import Agent, _Unattached, get_runtime
from linx._state import SessionState
from tests.conftest import child_pids, run_python, wait_until


def test_spawning_from_many_threads_at_once_gives_every_session_its_own_outcome() -> None:
    outcomes: dict[tuple[int, int], tuple[int, linx.Outcome]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        try:
            start.wait()
            for round_ in range(25):
                code = (index * 25 + round_) % 200
                session = linx.spawn(
                    ["/bin/sh", "-c", f"exit {code}"], auto_proceed=True, stdio="devnull"
                )
                outcomes[index, round_] = (code, session.wait(timeout=30))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(outcomes) == 200
    for code, outcome in outcomes.values():
        assert outcome == linx.Exited(code=code)


def test_many_asyncio_tasks_spawn_and_wait_concurrently() -> None:
    async def one(code: int) -> tuple[int, linx.Outcome]:
        async with await linx.aio.spawn(
            ["/bin/sh", "-c", f"exit {code}"], auto_proceed=True, stdio="devnull"
        ) as session:
            return code, await session.wait(timeout=30)

    async def main() -> list[tuple[int, linx.Outcome]]:
        return await asyncio.gather(*(one(code) for code in range(60)))

    for code, outcome in asyncio.run(main()):
        assert outcome == linx.Exited(code=code)


@contextlib.contextmanager
def reactor_held() -> Iterator[None]:
    """Keep the reactor thread busy (reading nothing) for the length of the block."""
    held, gate = threading.Event(), threading.Event()

    def hold_reactor() -> None:
        held.set()
        gate.wait(10)

    get_runtime().reactor.call_soon(hold_reactor)
    assert held.wait(10), "the reactor never ran the hold"
    try:
        yield
    finally:
        gate.set()


def test_an_application_reaping_the_launcher_itself_does_not_confuse_linx() -> None:
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
    launcher = get_runtime()._launcher
    assert launcher is not None
    running = linx.spawn(["/bin/sleep", "0.5"], auto_proceed=True)
    assert running.events is not None
    assert isinstance(running.events.get(timeout=10), linx.Ready)  # its agent exists
    # Hold the reactor so that the application's own reaper surely takes the launcher first.
    with reactor_held():
        os.kill(launcher.pid, signal.SIGKILL)
        reaped_pid, _ = os.waitpid(launcher.pid, 0)
        assert reaped_pid == launcher.pid
    assert wait_until(lambda: not launcher.alive, 10)
    assert running.wait(timeout=10) == linx.Exited(code=0)  # its agent did not depend on it
    assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10) == linx.Exited(code=0)
    fresh = get_runtime()._launcher
    assert fresh is not None and fresh.pid != launcher.pid


def _take_spare_agent() -> Agent:
    """Wait for the runtime's spare agent and take it, as a spawn would."""
    runtime = get_runtime()
    assert wait_until(lambda: runtime._spare is not None, 10)
    with runtime._lock:
        spare, runtime._spare = runtime._spare, None
    assert spare is not None
    return spare


def _forked_spare_agent() -> tuple[Launcher, int]:
    """The launcher, and the pid of the spare agent it has forked (not only been asked for)."""
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
    runtime = get_runtime()
    launcher = runtime._launcher
    assert launcher is not None
    before = set(child_pids(launcher.pid))  # the spare, and agents other tests left
    # This spawn takes the spare (forked yet or not); the one it asks for is new.
    session = linx.spawn(["/bin/true"], auto_proceed=True)
    session.wait(timeout=10)
    used = session._channel.state.agent_pid

    def new_agents() -> set[int]:
        return set(child_pids(launcher.pid)) - before - {used}

    assert wait_until(lambda: len(new_agents()) == 1, 10)
    # The launcher may fork it before the reactor, back from asking, records the spare.
    assert wait_until(lambda: runtime._spare is not None, 10)
    (agent,) = new_agents()
    return launcher, agent


def test_a_spawn_takes_the_spare_agent_so_it_does_not_wait_for_the_launcher() -> None:
    launcher, _ = _forked_spare_agent()
    os.kill(launcher.pid, signal.SIGSTOP)
    try:
        session = linx.spawn(["/bin/true"], auto_proceed=True)
        assert session.wait(timeout=10) == linx.Exited(code=0)
    finally:
        os.kill(launcher.pid, signal.SIGCONT)


def test_a_spawn_right_after_an_outcome_takes_the_spare_being_refilled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The refill runs in the reactor right after the outcome, while the caller already
    # starts its next spawn: that spawn waits for it instead of asking the launcher itself.
    runtime = get_runtime()
    took: list[bool] = []
    take_spare = runtime._take_spare

    def recording(entry: _Unattached, credentials: Credentials) -> Agent | None:
        spare = take_spare(entry, credentials)
        took.append(spare is not None)
        return spare

    monkeypatch.setattr(runtime, "_take_spare", recording)
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
    for _ in range(100):
        assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10) == linx.Exited(0)
    misses = took[1:].count(False)
    assert misses <= 3, f"{misses} of 100 spawns found no spare"  # without the wait: ~25


def test_a_spare_agent_that_dies_waiting_is_replaced_not_handed_to_a_spawn() -> None:
    _, spare_agent = _forked_spare_agent()
    runtime = get_runtime()
    os.kill(spare_agent, signal.SIGKILL)
    assert wait_until(lambda: runtime._spare is None, 10)
    assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10) == linx.Exited(code=0)


def test_a_spawn_lost_with_a_dying_launcher_fails_as_agent_died_not_hangs() -> None:
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
    launcher = get_runtime()._launcher
    assert launcher is not None
    _take_spare_agent().sock.close()  # so the next spawn needs the launcher
    os.kill(launcher.pid, signal.SIGSTOP)  # it cannot take the next request...
    lost = linx.spawn(["/bin/true"], auto_proceed=True)
    os.kill(launcher.pid, signal.SIGKILL)  # ...and dies with it unread
    try:
        outcome: object = lost.wait(timeout=10)
    except linx.ProcessError as error:
        outcome = error
    assert isinstance(outcome, linx.ProcessError), outcome
    assert outcome.stage == "agent_died" and outcome.errno is None and outcome.code is None
    assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10) == linx.Exited(code=0)


def test_the_launchers_word_on_an_agent_dead_before_its_channel_exists_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The request goes out before the session's channel is made (overlapping the clone);
    # an agent reaped in that gap must still fail the session with its exit status, not
    # as an agent of unknown status once the grace for a lost report has passed.
    _, agent = _forked_spare_agent()  # the next spawn's request goes to this agent
    runtime = get_runtime()
    real_state = SessionState

    def agent_killed_first(*args: Any, **kwargs: Any) -> SessionState:
        os.kill(agent, signal.SIGKILL)
        assert wait_until(
            lambda: not any(isinstance(e, _Unattached) for e in list(runtime._agents.values())),
            10,
        ), "the launcher never reported the agent"
        return real_state(*args, **kwargs)

    monkeypatch.setattr(linx.session, "SessionState", agent_killed_first)
    # Not /bin/true: should this thread wait for the GIL between the send and the kill, a
    # quick workload could be over, and its agent gone cleanly, before the kill.
    session = linx.spawn(["/bin/sleep", "5"], auto_proceed=True)
    with pytest.raises(linx.ProcessError) as raised:
        session.wait(timeout=10)  # the status shows the report was used, not the grace
    error = raised.value
    assert (error.stage, error.errno, error.code) == ("agent_died", None, -signal.SIGKILL)


def test_a_spare_agent_dead_before_its_report_is_read_fails_its_spawn_with_its_status() -> None:
    # The other order than above: with the reactor held, the launcher's report of the death
    # is not read before a spawn takes the spare and sends it its request.
    _, spare_agent = _forked_spare_agent()
    with reactor_held():
        os.kill(spare_agent, signal.SIGKILL)
        assert wait_until(lambda: not Path(f"/proc/{spare_agent}").exists(), 10)  # reaped
        session = linx.spawn(["/bin/true"], auto_proceed=True)
    with pytest.raises(linx.ProcessError) as raised:
        session.wait(timeout=10)  # the status shows the report was used, not the grace
    error = raised.value
    assert (error.stage, error.errno, error.code) == ("agent_died", None, -signal.SIGKILL)


def test_another_thread_changing_os_environ_never_breaks_a_spawn() -> None:
    # A spawn that inherits the environment reads os.environ, and so does the launcher's
    # start (the first spawn here, in a fresh interpreter). Walking it while another
    # thread changes it raised RuntimeError or KeyError; a tiny switch interval makes the
    # other thread run in the middle of such a walk.
    done = run_python(
        """
        import os, sys, threading, linx
        stop = False

        def churn():
            i = 0
            while not stop:
                os.environ[f"LINX_CHURN_{i % 50}"] = str(i)
                if i % 7 == 0:
                    os.environ.pop(f"LINX_CHURN_{i * 3 % 50}", None)
                i += 1

        os.environ["LINX_STABLE"] = "kept"
        thread = threading.Thread(target=churn)
        thread.start()
        sys.setswitchinterval(1e-6)
        failures = []
        try:
            for _ in range(200):
                try:
                    r, w = os.pipe()
                    s = linx.spawn(["/bin/sh", "-c", "echo $LINX_STABLE"],
                                   stdio={"stdout": w}, auto_proceed=True)
                    os.close(w)
                    with os.fdopen(r) as out:
                        seen = out.read().strip()
                    s.wait(timeout=20)
                    if seen != "kept":
                        failures.append(seen)
                except Exception as exc:
                    failures.append(repr(exc))
        finally:
            stop = True
            thread.join()
        print(failures[:3], len(failures))
        """,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] 0", done.stdout


@pytest.mark.parametrize("where", ["making", "encoding"])
def test_a_keyboard_interrupt_in_proceed_never_leaves_the_child_parked_for_good(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Ctrl-C in proceed() once the state machine had counted the child as released, but
    # before the command was queued (as it was made, or encoded): the child stayed parked,
    # a second proceed() raised AlreadyRunning, and wait() never returned.
    import linx._wire

    session = linx.spawn(["/bin/true"])
    assert session.events is not None
    assert isinstance(session.events.get(timeout=10), linx.Ready)
    real = getattr(linx._wire, "Proceed" if where == "making" else "encode")
    calls: list[object] = []

    def interrupted_once(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt  # where a SIGINT's handler raises at the call
        return real(*args)

    monkeypatch.setattr(linx._wire, "Proceed" if where == "making" else "encode", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        session.proceed()
    # What a caller does after a Ctrl-C; the first proceed() may have got through already
    # (or done: the reactor sends what an interrupted verb left queued).
    with contextlib.suppress(linx.AlreadyRunning, linx.NoProcess):
        session.proceed()
    assert session.wait(timeout=10) == linx.Exited(0)


# The end marker is the next real-time signal: sigwaitinfo takes the lowest-numbered
# pending signal first, so it comes after every `rt` still queued (a SIGUSR2, numbered
# below them, overtook those the workload had not taken yet, and they went uncounted).
RT_SIGNAL_COUNTER = """
import os, signal
rt, end = signal.SIGRTMIN + 1, signal.SIGRTMIN + 2
signal.pthread_sigmask(signal.SIG_BLOCK, {rt, end})
os.write(1, b"r")
count = 0
while signal.sigwaitinfo({rt, end}).si_signo == rt:
    count += 1
os.write(1, str(count).encode())
"""


def test_a_keyboard_interrupt_in_signal_never_sends_the_signal_twice() -> None:
    # A Ctrl-C during signal() lands, nearly always, as sendmsg returns: the frame had gone
    # out, but stayed queued as unsent, and the next verb sent it again (a second SIGHUP,
    # say). Real-time signals are queued, not merged, so the workload counts every one.
    read_end, write_end = os.pipe()
    try:
        session = linx.spawn(
            [sys.executable, "-c", RT_SIGNAL_COUNTER],
            auto_proceed=True,
            stdio={"stdout": write_end},
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as output, session:
        assert output.read(1) == b"r"  # its real-time signal is blocked: queued, not fatal
        rt = signal.SIGRTMIN + 1
        armed, stop = threading.Semaphore(0), threading.Event()

        def interrupt_when_armed() -> None:
            while armed.acquire() and not stop.is_set():
                time.sleep(random.random() / 1000)
                signal.raise_signal(signal.SIGINT)

        interrupter = threading.Thread(target=interrupt_when_armed)
        # A shell starts a background job with SIGINT ignored, and Python then keeps that:
        # the test would wait for ever for its KeyboardInterrupts.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupter.start()
        returned = interrupted = 0
        try:
            while interrupted < 20:
                try:
                    armed.release()
                    while True:
                        session.signal(rt)
                        returned += 1
                except KeyboardInterrupt:
                    interrupted += 1
        finally:
            stop.set()
            armed.release()
            interrupter.join()
            signal.signal(signal.SIGINT, previous)
        session.signal(signal.SIGRTMIN + 2)  # the end marker
        received = int(output.read())
        assert session.wait(timeout=10) == linx.Exited(0)
    # each interrupted call sent its signal once, or not at all
    assert returned <= received <= returned + interrupted


SIGNAL_HANDLER_PROGRAM = """
import signal, sys, linx
session = linx.spawn(["/bin/sleep", "30"], auto_proceed=True)
seen = []

def forward(signum, frame):
    try:
        seen.append(getattr(session, sys.argv[1])(*eval(sys.argv[2])))
    except RuntimeError as exc:
        seen.append(exc)

signal.signal(signal.SIGUSR1, forward)
# As a Python handler lands in the main thread between two bytecodes: here, inside a
# locked section of the session's own (what info() or signal() would be running).
with session._channel._lock:
    signal.raise_signal(signal.SIGUSR1)
print(repr(seen[0]))
outcome = session.wait(timeout=20) if sys.argv[1] == "signal" else session.close()
print(outcome)
"""


def test_a_verb_from_a_signal_handler_that_interrupted_a_call_on_the_session_runs_after_it() -> (
    None
):
    # The supervisor's pattern: SIGTERM forwarded by a handler while the main thread polls
    # info(). The handler found the session's lock held by the call it interrupted, in its
    # own thread, and waited for it for ever.
    code = SIGNAL_HANDLER_PROGRAM.replace("sys.argv[1]", "'signal'").replace(
        "eval(sys.argv[2])", "(signal.SIGTERM,)"
    )
    done = run_python(code, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "Signaled(signum=15)"]


@pytest.mark.parametrize("verb", ["info", "close", "wait"])
def test_a_blocking_call_from_such_a_signal_handler_raises_instead_of_hanging(verb: str) -> None:
    code = SIGNAL_HANDLER_PROGRAM.replace("sys.argv[1]", repr(verb)).replace(
        "eval(sys.argv[2])", "()"
    )
    done = run_python(code, timeout=30)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("RuntimeError(") and f"{verb}() called by a signal handler" in first


def test_a_spawn_from_a_signal_handler_that_interrupted_a_spawn_raises_instead_of_hanging() -> None:
    # A handler that spawns (a supervisor restarting on SIGHUP) run while this thread was
    # inside the runtime's locked section of another spawn waited for it for ever.
    done = run_python(
        """
        import os, signal, threading, time, linx
        from linx._runtime import get_runtime
        first = linx.spawn(["/bin/true"], auto_proceed=True)
        first.wait(timeout=10)
        # the spare that spawn asked for in place (its refill makes fds and closes some),
        # and its own socket closed (the reactor takes it after the round of its outcome,
        # then closes it: a call queued after that runs once it is closed)
        runtime, deadline = get_runtime(), time.monotonic() + 10
        def settling():
            return runtime._spare is None or runtime._refilling or first._channel._sock
        while settling() and time.monotonic() < deadline:
            time.sleep(0.01)
        synced = threading.Event()
        runtime.reactor.call_soon(synced.set)
        synced.wait(10)
        def open_fds():  # not the listing's own, whose number varies with what is open
            return {n for n in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{n}")}
        before = open_fds()
        seen = []
        def restart(signum, frame):
            try:
                seen.append(linx.spawn(["/bin/true"], auto_proceed=True))
            except RuntimeError as exc:
                seen.append(exc)
        signal.signal(signal.SIGHUP, restart)
        with get_runtime()._lock:  # where a spawn in this thread may be interrupted
            signal.raise_signal(signal.SIGHUP)
        print(type(seen[0]).__name__, "signal handler" in str(seen[0]))
        print(open_fds() == before)
        signal.raise_signal(signal.SIGHUP)  # outside it, a spawn like any other
        print(seen[1].wait(timeout=10))
        """,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["RuntimeError True", "True", "Exited(code=0)"]
