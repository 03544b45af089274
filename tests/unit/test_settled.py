"""`Settled`: the one-shot value a session's waiters block on."""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linx._settled import Settled


def test_wait_returns_a_value_set_before() -> None:
    cell: Settled[str] = Settled()
    cell.set("done")
    assert cell.wait() == "done"
    assert cell.wait(timeout=0) == "done"  # and again: the gate stays open


def test_wait_times_out_while_unset_and_still_gets_the_value_later() -> None:
    cell: Settled[int] = Settled()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        cell.wait(timeout=0.05)
    assert time.monotonic() - started >= 0.05
    with pytest.raises(TimeoutError):
        cell.wait(timeout=-1.0)  # a negative timeout is an immediate check, as for Future
    cell.set(7)
    assert cell.wait(timeout=0) == 7


def test_every_waiting_thread_wakes_with_the_value() -> None:
    cell: Settled[int] = Settled()
    seen: list[int] = []
    lock = threading.Lock()

    def waiter() -> None:
        value = cell.wait(timeout=10)
        with lock:
            seen.append(value)

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # let them block
    assert seen == []
    cell.set(42)
    for thread in threads:
        thread.join(10)
    assert seen == [42] * 8


@given(st.lists(st.integers(), min_size=1, max_size=5))
def test_only_the_first_set_counts(values: list[int]) -> None:
    cell: Settled[int] = Settled()
    before = cell.future()
    for value in values:
        cell.set(value)
    after = cell.future()
    assert cell.wait(timeout=0) == values[0]
    assert before.result(timeout=0) == values[0]
    assert after.result(timeout=0) == values[0]


def test_a_future_made_before_the_value_gets_it_in_asyncio() -> None:
    cell: Settled[str] = Settled()

    async def main() -> str:
        waiting = asyncio.ensure_future(asyncio.wrap_future(cell.future()))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        threading.Thread(target=cell.set, args=("late",)).start()
        return await asyncio.wait_for(waiting, 10)

    assert asyncio.run(main()) == "late"


def test_cancelling_one_future_leaves_the_others_their_value() -> None:
    cell: Settled[int] = Settled()
    given_up, kept = cell.future(), cell.future()
    assert given_up.cancel()
    cell.set(1)
    assert given_up.cancelled()
    assert kept.result(timeout=0) == 1
    assert cell.wait(timeout=0) == 1


def test_futures_given_up_on_are_not_kept() -> None:
    cell: Settled[int] = Settled()
    refs = []
    for _ in range(50):  # a caller polling with a timeout: each wait_for cancels its future
        future = cell.future()
        assert future.cancel()
        refs.append(weakref.ref(future))
        del future
    kept = cell.future()  # pruning happens here
    gc.collect()
    assert all(ref() is None for ref in refs)
    cell.set(3)
    assert kept.result(timeout=0) == 3


def test_an_interrupted_waiter_leaves_the_others_to_their_value() -> None:
    cell: Settled[int] = Settled()
    seen: list[int] = []
    other = threading.Thread(target=lambda: seen.append(cell.wait(timeout=10)))
    other.start()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            cell.wait(timeout=10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    cell.set(5)
    other.join(10)
    assert seen == [5]
    assert cell.wait() == 5  # the interrupted thread can wait again
