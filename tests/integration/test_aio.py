"""`linx.aio`: the asyncio front on real processes. Each test runs its own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import itertools
import logging
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TypeVar

import pytest

import linx
import linx.aio
from linx._runtime import get_runtime
from tests.conftest import pid_alive, wait_until

T = TypeVar("T")


async def _next(queue: asyncio.Queue[linx.Event], timeout: float = 10.0) -> linx.Event:
    return await asyncio.wait_for(queue.get(), timeout)


async def _running(session: linx.aio.Session) -> int:
    """Consume Ready and Running; return the workload's host pid."""
    assert session.events is not None
    assert isinstance(await _next(session.events), linx.Ready)
    assert isinstance(await _next(session.events), linx.Running)
    assert session.host_pid is not None
    return session.host_pid


def test_aio_spawn_delivers_ready_running_exited_in_order_on_an_asyncio_queue() -> None:
    async def main() -> None:
        async with await linx.aio.spawn(["/bin/sh", "-c", "exit 2"]) as session:
            assert isinstance(session.events, asyncio.Queue)
            ready = await _next(session.events)
            assert isinstance(ready, linx.Ready) and ready.host_pid == session.host_pid
            session.proceed()
            assert isinstance(await _next(session.events), linx.Running)
            assert await _next(session.events) == linx.Exited(code=2)
            assert await session.wait() == linx.Exited(code=2)
            assert session.events.empty()

    asyncio.run(main())


@pytest.mark.parametrize("own_queue", [False, True], ids=["default-owner", "given-owner"])
def test_aio_events_name_the_aio_session_from_the_first_one(own_queue: bool) -> None:
    async def main() -> None:
        given: asyncio.Queue[linx.Event] | None = asyncio.Queue() if own_queue else None
        async with await linx.aio.spawn(["/bin/true"], auto_proceed=True, owner=given) as s:
            assert (s.events is None) == own_queue  # no default queue beside a given owner
            queue = given or s.events
            assert queue is not None
            events = [await _next(queue) for _ in range(3)]
            assert [type(e) for e in events] == [linx.Ready, linx.Running, linx.Exited]
            assert all(e.session is s for e in events), [e.session for e in events]
            outcome = await s.wait()
            assert outcome.session is s

    asyncio.run(main())


def test_aio_wait_returns_the_outcome_and_raises_process_error_for_pre_exec_failure() -> None:
    async def main() -> None:
        async with await linx.aio.spawn(["/bin/true"], auto_proceed=True) as session:
            assert await session.wait(timeout=10) == linx.Exited(code=0)
        async with await linx.aio.spawn(["/nonexistent/x"], auto_proceed=True) as failing:
            with pytest.raises(linx.ProcessError) as caught:
                await failing.wait(timeout=10)
            assert caught.value.stage == "execve"

    asyncio.run(main())


def test_aio_async_with_kills_a_running_session_on_exit() -> None:
    async def main() -> None:
        async with await linx.aio.spawn(["/bin/sleep", "60"], auto_proceed=True) as session:
            host_pid = await _running(session)
            assert pid_alive(host_pid)
        assert not pid_alive(host_pid)
        with pytest.raises(linx.NoProcess):
            await session.wait()
        assert session.exit_reason == ("signaled", 9)

    asyncio.run(main())


def test_aio_async_with_cancelled_again_while_closing_still_closes() -> None:
    # A second cancel lands in __aexit__'s wait for the end (wait_for, a TaskGroup,
    # asyncio.run's shutdown all cancel again): the session must be closed all the same.
    async def main() -> linx.aio.Session:
        sessions: list[linx.aio.Session] = []

        async def body() -> None:
            async with await linx.aio.spawn(["/bin/sleep", "30"], auto_proceed=True) as s:
                sessions.append(s)
                await asyncio.sleep(30)

        task = asyncio.ensure_future(body())
        # until its pid is known: closed before that, nothing here could see it killed
        while not sessions or sessions[0].host_pid is None:
            await asyncio.sleep(0.01)
        task.cancel()  # into the body: __aexit__ starts closing
        await asyncio.sleep(0)
        task.cancel()  # into aclose's wait
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return sessions[0]

    session = asyncio.run(main())
    with pytest.raises(linx.NoProcess):
        session.info()
    pid = session.host_pid
    assert pid is not None and wait_until(lambda: not pid_alive(pid))


@pytest.mark.parametrize("verb", ["aclose", "wait"])
def test_a_task_cancelled_as_the_outcome_comes_is_cancelled_not_returned(verb: str) -> None:
    # asyncio.wait_for on Python 3.11 returns the result of a future that is done when the
    # cancellation wakes it, dropping the cancellation: a task cancelled (by a TaskGroup,
    # asyncio.timeout, asyncio.run's shutdown) just as its session ended ran on.
    async def main() -> None:
        session = await linx.aio.spawn(["/bin/sleep", "30"], auto_proceed=True)
        await _running(session)
        awaiting = asyncio.ensure_future(
            session.aclose() if verb == "aclose" else session.wait(timeout=30)
        )
        await asyncio.sleep(0)  # it awaits the outcome now
        later = session._core._channel.outcome.future()  # given the outcome after its own
        if verb == "wait":
            session.signal(signal.SIGKILL)

        def cancel_as_the_outcome_comes() -> None:
            later.result(10)  # blocks the loop: the task's outcome is queued on it by now
            awaiting.cancel()

        asyncio.get_running_loop().call_soon(cancel_as_the_outcome_comes)
        with pytest.raises(asyncio.CancelledError):
            await awaiting
        await session.aclose()

    asyncio.run(main())


def test_aio_wait_timeout_raises_timeout_error_and_leaves_the_session_alive() -> None:
    async def main() -> None:
        async with await linx.aio.spawn(["/bin/sleep", "60"], auto_proceed=True) as session:
            host_pid = await _running(session)
            with pytest.raises(TimeoutError):
                await session.wait(timeout=0.1)
            assert pid_alive(host_pid)
            assert session.info().stage == linx.Stage.RUNNING
            session.signal(15)
            assert await session.wait(timeout=10) == linx.Signaled(signum=15)

    asyncio.run(main())


def test_aio_wait_zero_polls_as_the_sync_wait_does() -> None:
    async def main() -> None:
        async with await linx.aio.spawn(["/bin/sleep", "60"], auto_proceed=True) as session:
            await _running(session)
            with pytest.raises(TimeoutError):
                await session.wait(0)
            session.signal(15)
            assert await session.wait() == linx.Signaled(signum=15)
            # known now: a timeout of 0 (or less) answers at once, not TimeoutError
            assert await session.wait(0) == linx.Signaled(signum=15)
            assert await session.wait(-1) == linx.Signaled(signum=15)

    asyncio.run(main())


def test_aio_cancelling_one_waiter_does_not_disturb_another() -> None:
    async def main() -> None:
        async with await linx.aio.spawn(["/bin/sleep", "60"], auto_proceed=True) as session:
            await _running(session)
            doomed = asyncio.create_task(session.wait())
            survivor = asyncio.create_task(session.wait())
            await asyncio.sleep(0.05)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert not survivor.done()
            session.signal(15)
            assert await asyncio.wait_for(survivor, 10) == linx.Signaled(signum=15)
            # A wait started after the cancellation gets the same answer.
            assert await session.wait(timeout=1) == linx.Signaled(signum=15)

    asyncio.run(main())


def test_asyncio_queue_owner_works_with_the_sync_api_inside_a_loop() -> None:
    async def main() -> None:
        queue: asyncio.Queue[linx.Event] = asyncio.Queue()
        with linx.spawn(["/bin/sh", "-c", "exit 3"], owner=queue, auto_proceed=True) as session:
            assert session.events is None
            events = [await _next(queue) for _ in range(3)]
            assert [type(e) for e in events] == [linx.Ready, linx.Running, linx.Exited]
            assert events[-1] == linx.Exited(code=3)
            assert all(e.session is session for e in events)
            assert session.wait(timeout=1) == linx.Exited(code=3)

    asyncio.run(main())


def test_an_asyncio_queue_used_on_a_loop_in_another_thread_is_fed_on_that_loop() -> None:
    # The queue's own loop, not the caller's: spawn() from a thread with no running loop
    # (a worker thread handing events to the app's loop) feeds a queue already used there.
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    async def bound_queue() -> asyncio.Queue[linx.Event]:
        queue: asyncio.Queue[linx.Event] = asyncio.Queue()
        getter = asyncio.ensure_future(queue.get())  # waiting on it binds it to this loop
        await asyncio.sleep(0)
        getter.cancel()
        return queue

    async def take(queue: asyncio.Queue[linx.Event]) -> list[linx.Event]:
        return [await _next(queue) for _ in range(3)]

    try:
        queue = asyncio.run_coroutine_threadsafe(bound_queue(), loop).result(10)
        with linx.spawn(["/bin/true"], owner=queue, auto_proceed=True):
            events = asyncio.run_coroutine_threadsafe(take(queue), loop).result(30)
        assert [type(e) for e in events] == [linx.Ready, linx.Running, linx.Exited]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()


def test_an_unbound_asyncio_queue_of_another_loop_fails_there_rather_than_hang() -> None:
    # asyncio binds a queue to its loop only when a task first waits on it. Given before
    # that, from loop A, it was fed on A; a task of its own loop B then waiting on it was
    # woken from A's thread, which B never noticed: it waited for ever. Bound to A at the
    # call, the wait on B raises asyncio's "bound to a different event loop" at once.
    other = asyncio.new_event_loop()
    runner = threading.Thread(target=other.run_forever, daemon=True)
    runner.start()

    async def made_there() -> asyncio.Queue[linx.Event]:
        return asyncio.Queue()

    async def waiting_there(queue: asyncio.Queue[linx.Event]) -> Future[linx.Event]:
        # Its outcome is passed on from its own loop's thread: asking that loop for it
        # (run_coroutine_threadsafe) would wake the loop, which a hanging wait needs.
        got: Future[linx.Event] = Future()
        getter = asyncio.ensure_future(queue.get())
        getter.add_done_callback(functools.partial(_pass_on, got))
        await asyncio.sleep(0)  # it has run: raised, or waits on the empty queue
        return got

    async def main() -> None:
        queue = asyncio.run_coroutine_threadsafe(made_there(), other).result(10)
        async with await linx.aio.spawn(["/bin/sleep", "30"], auto_proceed=True) as session:
            await _running(session)
            session.set_owner(queue)  # nothing is on its way: the workload sleeps
            getter = asyncio.run_coroutine_threadsafe(waiting_there(queue), other).result(10)
            session.signal(signal.SIGKILL)  # its terminal event goes to `queue`
            assert await session.wait(timeout=10) == linx.Signaled(signum=signal.SIGKILL)
            with pytest.raises(RuntimeError, match="different event loop"):
                await asyncio.wait_for(asyncio.wrap_future(getter), 30)

    try:
        asyncio.run(main())
    finally:
        other.call_soon_threadsafe(other.stop)
        runner.join(10)
        other.close()


def test_the_default_queue_of_a_session_outliving_its_loop_fails_on_the_next_one() -> None:
    # A session started in one asyncio.run() and used in the next: its events go to the
    # first loop, closed, and are dropped; `events.get()` on the second one waited for ever.
    async def first() -> linx.aio.Session:
        return await linx.aio.spawn(["/bin/sleep", "30"], auto_proceed=True)

    async def second(session: linx.aio.Session) -> None:
        events = session.events
        assert events is not None
        async with session:
            while not events.empty():  # what reached it before its loop closed
                events.get_nowait()
            with pytest.raises(RuntimeError, match="different event loop"):
                await asyncio.wait_for(events.get(), 30)
            session.signal(signal.SIGTERM)  # the session is not lost
            assert await session.wait(timeout=10) == linx.Signaled(signum=signal.SIGTERM)

    asyncio.run(second(asyncio.run(first())))


def _pass_on(to: Future[T], task: asyncio.Future[T]) -> None:
    if task.exception() is None:
        to.set_result(task.result())
    else:
        to.set_exception(task.exception())


def test_aio_sessions_never_block_the_event_loop() -> None:
    async def main() -> tuple[float, int]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        sessions = [
            await linx.aio.spawn(["/bin/sh", "-c", "sleep 1; exit 7"], auto_proceed=True)
            for _ in range(20)
        ]
        try:
            outcomes = await asyncio.gather(*(s.wait(timeout=20) for s in sessions))
        finally:
            for session in sessions:
                await session.aclose()
        stop.set()
        await ticking
        assert outcomes == [linx.Exited(code=7)] * 20
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        return max(gaps), len(ticks)

    longest_gap, ticks = asyncio.run(main())
    # The sessions took at least 1 s; a loop blocked on them would show a gap that long.
    assert longest_gap < 0.5, longest_gap
    assert ticks >= 40, ticks


@contextlib.contextmanager
def a_refill_under_way() -> Iterator[None]:
    """The runtime as a spawn finds it right after an outcome: no spare, the reactor's
    refill not done yet (held so here, the real spare set aside)."""
    runtime = get_runtime()
    assert wait_until(lambda: runtime._spare is not None and not runtime._refilling)
    with runtime._lock:
        spare, runtime._spare = runtime._spare, None
        runtime._refilling = True
    try:
        yield
    finally:
        with runtime._lock:
            runtime._refilling = False
            spare, runtime._spare = runtime._spare, spare
        if spare is not None:
            runtime._discard(spare)


def test_a_spawn_in_a_running_event_loop_never_waits_for_the_refill_of_the_spare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A sync spawn waits for the refill under way (up to REFILL_WAIT), which a blocking
    # caller can afford; in a running loop that wait would block every task of the loop.
    runtime = get_runtime()
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)
    waited: list[bool] = []
    wait_for = runtime._refilled.wait_for

    def recording(predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        waited.append(True)
        return wait_for(predicate, timeout)

    monkeypatch.setattr(runtime._refilled, "wait_for", recording)

    async def main() -> linx.Outcome:
        session = await linx.aio.spawn(["/bin/true"], auto_proceed=True)
        return await session.wait(timeout=10)

    with a_refill_under_way():
        assert asyncio.run(main()) == linx.Exited(0)
    assert waited == []
    with a_refill_under_way():  # the same spawn outside a loop does wait
        assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10) == linx.Exited(0)
    assert waited == [True]


def test_an_aio_callable_owner_can_use_the_session_from_the_first_event() -> None:
    # The reactor may deliver `Ready` before `linx.aio.spawn` returns: the handle the event
    # names must already be bound to its session by then.
    seen: list[object] = []

    def owner(event: linx.Event) -> None:
        if isinstance(event, linx.Ready):
            session = event.session
            assert isinstance(session, linx.aio.Session)
            seen.append(session.info().stage)  # AttributeError if not bound yet
            session.proceed()

    async def main() -> None:
        for _ in range(30):
            async with await linx.aio.spawn(["/bin/true"], owner=owner) as session:
                assert await session.wait(timeout=10) == linx.Exited(code=0)

    asyncio.run(main())
    assert seen == [linx.Stage.READY] * 30


@pytest.mark.usefixtures("no_gc")
def test_a_dropped_aio_session_is_freed_at_once_and_its_workload_ends() -> None:
    async def scenario() -> tuple[bool, int]:
        session = await linx.aio.spawn(["/bin/sleep", "30"], auto_proceed=True)
        assert session.events is not None and session.owner is session.events
        assert isinstance(await session.events.get(), linx.Ready)
        pid = session.host_pid
        assert pid is not None
        ref = session._core._channel._session_ref
        # `Running` may still be on its way (in the reactor, or on this loop): events hold
        # their session weakly, so neither keeps it alive; no collection is needed. (The
        # reactor thread holds a session for the moment it hands an event over: hence the
        # short wait.)
        del session
        return wait_until(lambda: ref() is None, 5), pid

    collected, pid = asyncio.run(scenario())
    assert collected
    assert wait_until(lambda: not pid_alive(pid), 10)


def test_asyncio_queue_owner_works_when_asyncio_is_imported_after_linx() -> None:
    # linx looks asyncio up in sys.modules rather than import it: a program importing it
    # after linx must still get its queue fed on its loop, not taken for a `put` owner.
    program = """
import linx, asyncio
async def main():
    queue = asyncio.Queue()
    s = linx.spawn(["/bin/true"], owner=queue, auto_proceed=True)
    kinds = []
    while not kinds or kinds[-1] != "Exited":
        kinds.append(type(await asyncio.wait_for(queue.get(), 10)).__name__)
    s.wait(10)
    print(" ".join(kinds))
asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["Ready", "Running", "Exited"]


def test_events_for_an_asyncio_queue_whose_loop_has_closed_are_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A session outliving the asyncio.run() that made it: its queue's loop is closed, and
    # call_soon_threadsafe raises RuntimeError. Nobody can read that queue any more; the
    # events are dropped with a debug line, not logged as an owner's failure per event.
    async def main() -> linx.aio.Session:
        session = await linx.aio.spawn(["/bin/true"])
        assert session.events is not None
        assert isinstance(await _next(session.events), linx.Ready)
        return session

    session = asyncio.run(main())
    with caplog.at_level(logging.DEBUG, logger="linx"):
        session.proceed()
        assert session._core.wait(timeout=10) == linx.Exited(code=0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 2  # Running, Exited


def test_a_bounded_asyncio_queue_owner_is_refused() -> None:
    # put_nowait on a full one raises in the loop's callback: the terminal event could be
    # lost, so the owner is refused at the call, as a bounded queue.Queue is.
    async def main() -> None:
        for spawn in (linx.spawn, linx.aio.spawn):
            with pytest.raises(ValueError, match="bounded queue"):
                started = spawn(["/bin/true"], owner=asyncio.Queue(maxsize=1))
                if asyncio.iscoroutine(started):
                    await started

    asyncio.run(main())


def test_an_asyncio_queue_of_a_closed_loop_is_refused_as_owner_at_the_call() -> None:
    # A queue of an earlier asyncio.run() (an app-wide one, a fixture's): every event was
    # dropped where nothing could read it, and the caller heard nothing of it.
    async def given() -> asyncio.Queue[linx.Event]:
        queue: asyncio.Queue[linx.Event] = asyncio.Queue()
        async with await linx.aio.spawn(["/bin/true"], auto_proceed=True, owner=queue) as s:
            assert await s.wait(timeout=10) == linx.Exited(code=0)
        return queue

    async def waited_on() -> asyncio.Queue[linx.Event]:
        queue: asyncio.Queue[linx.Event] = asyncio.Queue()
        getter = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)  # it waits on the queue: bound to this loop
        getter.cancel()
        return queue

    stale = [asyncio.run(given()), asyncio.run(waited_on())]  # bound by linx, by asyncio

    async def main() -> None:
        for queue in stale:
            for spawn in (linx.spawn, linx.aio.spawn):
                with pytest.raises(ValueError, match="event loop that is closed"):
                    started = spawn(["/bin/true"], owner=queue)
                    if asyncio.iscoroutine(started):
                        await started
            async with await linx.aio.spawn(["/bin/sleep", "30"]) as session:
                with pytest.raises(ValueError, match="event loop that is closed"):
                    session.set_owner(queue)
                assert session.owner is session.events

    asyncio.run(main())


def test_sessions_are_made_by_spawn_only() -> None:
    # made directly, an aio session had no core, and every use failed with AttributeError
    with pytest.raises(TypeError, match=r"linx\.spawn\(\)"):
        linx.Session()
    with pytest.raises(TypeError, match=r"linx\.aio\.spawn\(\)"):
        linx.aio.Session(None)


def test_aio_spawn_names_itself_in_the_type_error_for_a_bad_call() -> None:
    # Its options are linx.spawn's, checked against that signature at the call: a typo is
    # linx.aio.spawn()'s TypeError, not one naming an internal function.
    async def main() -> None:
        with pytest.raises(TypeError, match=r"^linx\.aio\.spawn\(\): .*'auto_procede'"):
            await linx.aio.spawn(["/bin/true"], auto_procede=True)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"^linx\.aio\.spawn\(\): "):
            await linx.aio.spawn(["/bin/true"], ["/bin/false"])  # type: ignore[call-arg]

    asyncio.run(main())


class _AsyncCall:
    async def __call__(self, event: linx.Event) -> None: ...


class _AsyncPut:
    async def put(self, event: linx.Event) -> None: ...


async def _async_owner(event: linx.Event) -> None: ...


@pytest.mark.parametrize(
    "owner",
    [_async_owner, functools.partial(_async_owner), _AsyncCall(), _AsyncPut()],
    ids=["function", "partial", "async-call", "async-put"],
)
def test_a_coroutine_function_owner_is_refused_not_silently_never_awaited(owner: object) -> None:
    # Called in the reactor thread it only made a coroutine nobody awaited: every event lost,
    # at most a "never awaited" RuntimeWarning.
    async def main() -> None:
        with pytest.raises(TypeError, match="coroutine function"):
            await linx.aio.spawn(["/bin/true"], auto_proceed=True, owner=owner)  # type: ignore[arg-type]
        async with await linx.aio.spawn(["/bin/sleep", "30"]) as session:
            with pytest.raises(TypeError, match="coroutine function"):
                session.set_owner(owner)  # type: ignore[arg-type]
            assert session.owner is session.events

    with pytest.raises(TypeError, match="coroutine function"):
        linx.spawn(["/bin/true"], auto_proceed=True, owner=owner)  # type: ignore[arg-type]
    asyncio.run(main())


def _wrapped_as_plain(function: Callable[[linx.Event], object]) -> Callable[[linx.Event], object]:
    @functools.wraps(function)  # a plain decorator around an async handler (tracing, say)
    def wrapper(event: linx.Event) -> object:
        return function(event)

    return wrapper


@pytest.mark.parametrize(
    "owner",
    [_wrapped_as_plain(_async_owner), lambda event: _async_owner(event)],
    ids=["decorated", "lambda"],
)
def test_an_owner_returning_a_coroutine_is_logged_as_an_error_for_each_lost_event(
    owner: Callable[[linx.Event], object], caplog: pytest.LogCaptureFixture
) -> None:
    # A plain function cannot be refused for what it returns before it is called; the
    # coroutine it made was dropped with at most a "never awaited" RuntimeWarning, which
    # names neither linx nor the event, and every event was lost without a word.
    async def main() -> None:
        async with await linx.aio.spawn(["/bin/true"], auto_proceed=True, owner=owner) as s:
            assert await s.wait(timeout=10) == linx.Exited(code=0)  # after its last event

    with caplog.at_level(logging.ERROR, logger="linx"):
        asyncio.run(main())
    lost = [r.getMessage() for r in caplog.records if "returned a coroutine" in r.getMessage()]
    assert len(lost) == 3 and all("(_async_owner)" in m for m in lost)
    for message, event in zip(lost, ["Ready(", "Running() ", "Exited(code=0) "], strict=True):
        assert f" for {event}" in message


def test_a_copied_session_is_the_same_handle_and_pickling_one_is_refused() -> None:
    # A shallow copy of a linx.Session shared its channel: dropped, it closed the original's
    # session (the orphan policy, no outcome). A deep copy of an aio one dragged in the loop.
    async def main() -> None:
        async with await linx.aio.spawn(["/bin/sleep", "30"], auto_proceed=True) as session:
            host_pid = await _running(session)
            assert copy.copy(session) is session and copy.deepcopy(session) is session
            with pytest.raises(TypeError, match="pickled"):
                pickle.dumps(session)
            assert session.info().stage == linx.Stage.RUNNING and pid_alive(host_pid)

    asyncio.run(main())
    with linx.spawn(["/bin/sleep", "30"], auto_proceed=True) as session:
        assert session.events is not None
        assert isinstance(session.events.get(timeout=10), linx.Ready)
        copied = copy.copy(session)
        assert copied is session and copy.deepcopy([session])[0] is session
        del copied
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(session)
        time.sleep(0.2)  # the orphan policy a dropped copy set off took the reactor a round
        session.info()  # NoProcess: closed by its copy's __del__
        assert session.host_pid is not None and pid_alive(session.host_pid)
