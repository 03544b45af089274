"""Shared test helpers. Integration tests run real processes and need root (CI runs as root)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

import linx

E = TypeVar("E", bound=linx.Event)
ROOT = Path(__file__).resolve().parent.parent


def next_event(session: linx.Session, timeout: float = 10.0) -> linx.Event:
    """The next event on a session's default owner queue."""
    assert session.events is not None
    try:
        return session.events.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no event within {timeout}s from {session!r}") from None


def expect(session: linx.Session, kind: type[E], timeout: float = 10.0) -> E:
    event = next_event(session, timeout)
    assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
    return event


def drain(session: linx.Session, timeout: float = 10.0) -> list[linx.Event]:
    """Every event up to and including the terminal one."""
    events = []
    while True:
        event = next_event(session, timeout)
        events.append(event)
        if isinstance(event, linx.Exited | linx.Signaled | linx.Aborted | linx.Failed):
            return events


def no_more_events(session: linx.Session, within: float = 0.3) -> bool:
    assert session.events is not None
    try:
        session.events.get(timeout=within)
    except queue.Empty:
        return True
    return False


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def run_python(
    code: str, *, user: int | None = None, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter importing this checkout's linx (optionally as `user`)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        cwd="/",
    )


@pytest.fixture
def session_factory() -> Iterator[Callable[..., linx.Session]]:
    """`spawn` that closes every session it made at the end of the test."""
    made: list[linx.Session] = []

    def factory(*args: object, **kwargs: object) -> linx.Session:
        session = linx.spawn(*args, **kwargs)  # type: ignore[arg-type]
        made.append(session)
        return session

    yield factory
    for session in made:
        session.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests create namespaces and need root")
        for item in items:
            if "integration" in item.nodeid:
                item.add_marker(skip)
