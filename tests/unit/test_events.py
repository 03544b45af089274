"""Events: values whose `session` link never keeps a session alive."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import cast

import pytest

import linx


class FakeSession:
    """Stands in for a `Session`: events only need something weakly referenceable."""


def fake_session() -> linx.Session:
    return cast(linx.Session, FakeSession())


@pytest.mark.usefixtures("no_gc")  # by reference counting alone
def test_session_is_reachable_while_it_lives_and_none_after() -> None:
    session = fake_session()
    event = linx.Exited(3, session=session)
    assert event.session is session
    del session
    assert event.session is None


@pytest.mark.usefixtures("no_gc")
def test_an_event_in_its_sessions_own_store_is_no_reference_cycle() -> None:
    # The shape that leaked before: the session holds its queue, the queue the event.
    class Owner:
        def __init__(self) -> None:
            self.store = [linx.Ready(41, session=cast(linx.Session, self))]

    owner = Owner()
    store = owner.store
    del owner
    assert store[0].session is None


def test_session_takes_no_part_in_equality_hash_or_repr() -> None:
    with_session = linx.Signaled(9, session=fake_session())
    assert with_session == linx.Signaled(9) and hash(with_session) == hash(linx.Signaled(9))
    assert repr(with_session) == "Signaled(signum=9)"


def test_events_stay_frozen_and_default_to_no_session() -> None:
    event = linx.Exited(0)
    assert event.session is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.session = fake_session()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.code = 1  # type: ignore[misc]


def test_replace_keeps_the_session_and_a_sessionless_event_pickles() -> None:
    session = fake_session()
    event = linx.Exited(1, session=session)
    assert dataclasses.replace(event, code=2).session is session
    assert pickle.loads(pickle.dumps(linx.Exited(5))) == linx.Exited(5)


@pytest.mark.parametrize(
    "event",
    [
        linx.Ready(7),
        linx.Running(),
        linx.Exited(3),
        linx.Signaled(9),
        linx.Aborted(),
        linx.Failed(linx.ProcessError("execve", 2)),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_event_of_a_live_session_pickles_without_it_and_copies_with_it(
    event: linx.Event,
) -> None:
    session = fake_session()
    bound = dataclasses.replace(event, session=session)
    restored = pickle.loads(pickle.dumps(bound))
    assert restored == bound and restored.session is None
    assert copy.copy(bound).session is session
    assert copy.deepcopy([bound])[0].session is session
