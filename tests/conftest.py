"""Shared test helpers. Integration tests run real processes and need root (CI runs as root)."""

from __future__ import annotations

import contextlib
import gc
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
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


# The agent's two ways to clone an auto_proceed child, by the LINX_AGENT_NO_VFORK they take.
SPAWN_PATHS = {"vfork": "0", "fork": "1"}


def build_helper(factory: pytest.TempPathFactory, name: str, *flags: str) -> Path:
    """Compile tests/integration/helpers/`name`.c (warnings are errors) into a temp dir."""
    program = factory.mktemp("helpers") / name
    source = ROOT / "tests" / "integration" / "helpers" / f"{name}.c"
    command = ["cc", "-O2", "-Wall", "-Wextra", "-Werror", *flags, "-o", str(program)]
    subprocess.run([*command, str(source)], check=True)
    return program


def spawn_path_env(path: str) -> dict[str, str]:
    """The environment variable that makes an agent clone on `path` (of SPAWN_PATHS)."""
    return {"LINX_AGENT_NO_VFORK": SPAWN_PATHS[path]}


def process_state(pid: int) -> str:
    """The state letter of `pid` in /proc (R, S, T, Z...); raises if it is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return process_state(pid) != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def gone_and_reaped(pid: int) -> bool:
    """`pid` is not even a zombie: somebody reaped it."""
    return not Path(f"/proc/{pid}").exists()


def launcher_pid() -> int:
    """The pid of this process's current linx launcher (one must have started)."""
    from linx._runtime import get_runtime

    launcher = get_runtime()._launcher
    assert launcher is not None
    return launcher.pid


def child_pids(pid: int) -> list[int]:
    """The children of `pid`'s main thread, oldest first; none once it is gone."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector off for the test: what it shows must happen by
    reference counting alone, as in a program where no collection runs for a while."""
    enabled = gc.isenabled()
    gc.collect()  # nothing of earlier tests left for the test to trip over
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def short_tmp_dir() -> Iterator[str]:
    """A fresh directory with a short path (sockets: sun_path holds 107 bytes), then removed."""
    directory = tempfile.mkdtemp(prefix="linx-", dir="/tmp")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def short_dir() -> Iterator[str]:
    with short_tmp_dir() as directory:
        yield directory


class Pipe:
    """A pipe between a test and a workload: either end can go to the workload, and closing
    the write end is the workload's EOF (`close_write`)."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self._buffer = b""

    def close_write(self) -> None:
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1

    def close(self) -> None:
        self.close_write()
        os.close(self.read_end)

    def read_lines(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while self._buffer.count(b"\n") < count:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.read_end], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no {count} lines within {timeout}s: {self._buffer!r}")
            chunk = os.read(self.read_end, 65536)
            if not chunk:
                raise AssertionError(f"EOF before {count} lines: {self._buffer!r}")
            self._buffer += chunk
        lines = self._buffer.split(b"\n")
        self._buffer = b"\n".join(lines[count:])
        return [line.decode() for line in lines[:count]]

    def read_to_eof(self, timeout: float = 10.0) -> bytes:
        data, self._buffer = self._buffer, b""
        return read_to_eof(self.read_end, timeout, already=data)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    p.close()


def read_to_eof(fd: int, timeout: float = 10.0, already: bytes = b"") -> bytes:
    """Everything readable from `fd` until EOF (after `already`); fails without EOF in time."""
    deadline = time.monotonic() + timeout
    data = already
    while True:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"no EOF within {timeout}s (read so far: {data!r})")
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk


def capture_stdout(
    spawn: Callable[..., linx.Session],
    argv: list[str],
    *,
    wrap: Callable[[int], object] = lambda fd: fd,
    stdio: dict[str, object] | None = None,
    at_checkpoint: Callable[[linx.Ready], object] = lambda ready: None,
    **options: object,
) -> tuple[linx.Session, bytes]:
    """Run `argv` with stdout on a fresh pipe and return the session and all it wrote.

    The caller's write end is closed right after `spawn` (linx must hold its own copy), the
    child is released (unless `auto_proceed`) after `at_checkpoint(ready)`, and the output
    is read up to EOF, which comes only once no copy of the write end is left anywhere.
    """
    read_end, write_end = os.pipe()
    try:
        session = spawn(argv, stdio={**(stdio or {}), "stdout": wrap(write_end)}, **options)
    finally:
        os.close(write_end)
    try:
        if not options.get("auto_proceed"):
            at_checkpoint(expect(session, linx.Ready))
            session.proceed()
        return session, read_to_eof(read_end)
    finally:
        os.close(read_end)


# A prelude for programs (run with run_python) that interrupt a spawn at a chosen point.
INTERRUPTED_SPAWN = """
import gc, sys, time
import linx

def spawn_interrupted(profile=None):
    # spawn /bin/true with `profile` (a sys.setprofile function that raises a
    # KeyboardInterrupt at its point) in force; says "interrupted" if it was
    sys.setprofile(profile)
    try:
        linx.spawn(["/bin/true"], auto_proceed=True)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        sys.setprofile(None)

def settle(done):
    # up to 10 s for done(): the reactor thread closes what it may watch, the collector
    # what the interrupted spawn dropped
    deadline = time.monotonic() + 10
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
"""


def run_python(
    code: str,
    *,
    user: int | None = None,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    stdin: int | None = None,
    process_group: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter importing this checkout's linx (optionally as `user`,
    or in a process group of its own with `process_group=0`)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        process_group=process_group,
        cwd="/",
    )


NOBODY = 65534


def _runs_as_nobody(python: str) -> bool:
    try:
        done = subprocess.run(
            [python, "-c", "import sys; assert sys.version_info >= (3, 11)"],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            timeout=30,
            cwd="/",
        )
    except (PermissionError, FileNotFoundError):
        return False
    return done.returncode == 0


@pytest.fixture
def nobody_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `run_python(user=NOBODY)` work: it needs an interpreter nobody may execute.

    The test venv may live under a directory only root can enter (/root/.pyenv); then a
    system Python 3.11+ is used instead (linx has no dependencies, the checkout is on
    PYTHONPATH).
    """
    if _runs_as_nobody(sys.executable):
        return
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if candidate and _runs_as_nobody(candidate):
            monkeypatch.setattr(sys, "executable", candidate)
            return
    pytest.fail(
        f"rootless use cannot be tested: no Python >= 3.11 that uid {NOBODY} may run "
        f"({sys.executable} is not); install one outside /root (e.g. Debian's python3)"
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
