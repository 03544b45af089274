"""The agent and the launcher as running programs, fed a valid start and then anything.

Hypothesis drives a raw agent (`linx-agent --agent`) with a valid `SPAWN` and then a random
stream: valid commands in any order, frames with wrong lengths, unknown types, bad fields,
garbage, split across writes at random points with pauses, ended by Python's close or
half-close. The launcher gets `START_AGENT` frames with 0, 1 or 2 fds, garbage and EOF.

Invariants (docs/protocol.md): the program never dies by a signal, never writes a
sanitizer report, and exits 0 (1 only for its own failure, never after a terminal frame);
what it sends decodes and follows the protocol's order, with exactly one terminal frame
unless Python closed first; nothing it started outlives it; it never hangs.

The bounded form runs in the suite. The long form, by hand, against the sanitizer build:

    make -C agent SAN=1 && LINX_AGENT=agent/build/linx-agent-san \\
        LINX_FUZZ_EXAMPLES=2000 python -m pytest -q tests/integration/test_live_fuzz.py
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import itertools
import os
import secrets
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from linx import _launcher, _wire

EXAMPLES = int(os.environ.get("LINX_FUZZ_EXAMPLES", "0"))
LONG = EXAMPLES > 0
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES or 60,
    deadline=None,
    derandomize=not LONG,
    database=None,
    suppress_health_check=list(HealthCheck),
)
HANG = 60.0  # seconds: far beyond any grace or workload the fuzz picks

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000

NAMESPACES = {
    "none": 0,
    "pid": CLONE_NEWPID,
    "pid+mnt": CLONE_NEWPID | CLONE_NEWNS,
    "user+pid+uts": CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWUTS,
}
# A workload forks only in its own pid namespace: elsewhere a grandchild is free to outlive
# the workload by design, and the check that nothing outlives the agent would not hold.
WORKLOADS = {
    "exits": (["/bin/true"], False),
    "fails": (["/bin/sh", "-c", "exit 7"], False),
    "sleeps": (["/bin/sleep", "1000"], False),
    "ignores_term": (["/bin/sh", "-c", "trap '' TERM; exec /bin/sleep 1000"], False),
    "missing": (["/nonexistent/program"], False),
    "forks": (["/bin/sh", "-c", "/bin/sleep 1000 & exec /bin/sleep 1000"], True),
}
PLACEHOLDER = "0" * 16  # the size of secrets.token_hex(8)
STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}

TERMINAL_FRAMES = (_wire.Exited, _wire.Signaled, _wire.Aborted, _wire.Error)


@dataclass(frozen=True)
class Start:
    workload: str
    namespaces: str
    auto_proceed: bool
    linger: bool
    grace_ms: int
    vfork: bool


@dataclass(frozen=True)
class Plan:
    start: Start
    # (bytes of one write, pause in ms before it, how many fds it carries: commands take none)
    pieces: tuple[tuple[bytes, int, int], ...]
    # "close": Python closes at once; "shutdown": it half-closes and reads to EOF; "kill": it
    # brings the agent's framing back in step, sends KILL and reads, never closing first;
    # "deaf": it never reads, and closes once it has sent all (or its sends stall)
    ending: str


def _frame(mtype: int, body: bytes) -> bytes:
    return struct.pack("<IH", len(body) + 2, mtype) + body


def _field(tag: int, value: bytes) -> bytes:
    return struct.pack("<HI", tag, len(value)) + value


def _signals(linger: bool) -> st.SearchStrategy[int]:
    """A signal number, mostly a real one; never one that stops a workload that lingers
    (it would wait forever, as designed)."""
    numbers = st.one_of(
        st.sampled_from([0, 1, 2, 9, 10, 15, 18, 19, 20, 28, 34, 64]),
        st.integers(0, 70),
        st.sampled_from([65, 128, 0x7FFFFFFF, 0xFFFFFFFF]),
    )
    return numbers.filter(lambda n: not (linger and n in STOP_SIGNALS))


def _commands(linger: bool) -> st.SearchStrategy[bytes]:
    valid = st.one_of(
        st.sampled_from(
            [_wire.encode(_wire.Proceed()), _wire.encode(_wire.Abort()), _wire.encode(_wire.Kill())]
        ),
        _signals(linger).map(lambda n: _wire.encode(_wire.Signal(signum=n))),
    )
    odd = st.one_of(
        # below the minimum length: skipped, the stream stays in step
        st.integers(0, 1).flatmap(
            lambda n: st.binary(min_size=n, max_size=n).map(lambda b: struct.pack("<I", n) + b)
        ),
        # unknown, reserved or request types, with a body of fields or not
        st.tuples(
            st.sampled_from([0x0000, 0x0001, 0x0002, 0x0013, 0x0014, 0x0016, 0x0081, 0xFFFF]),
            st.binary(max_size=24),
        ).map(lambda t: _frame(*t)),
        # known commands with bad or extra fields
        st.tuples(
            st.sampled_from([0x0010, 0x0011, 0x0012, 0x0015]),
            st.lists(
                st.tuples(st.integers(0, 3), st.binary(max_size=9)).map(lambda t: _field(*t)),
                max_size=3,
            ).map(b"".join),
        ).map(lambda t: _frame(*t)),
        # a field whose size runs past the frame
        st.sampled_from([0x0010, 0x0012]).map(
            lambda t: _frame(t, struct.pack("<HI", 1, 0xFFFFFFFF))
        ),
    )
    garbage = st.one_of(
        st.binary(min_size=1, max_size=16),
        # a length the agent buffers for, or refuses (over 1 MiB)
        st.sampled_from([1 << 16, (1 << 20) - 1, (1 << 20) + 1, 0xFFFFFFFF]).map(
            lambda n: struct.pack("<IH", n, 0x0010)
        ),
    )
    # past the 65536 signals the agent buffers before RUNNING; the SIGKILL is never dropped
    flood = st.just(
        _wire.encode(_wire.Signal(signum=0)) * 65540 + _wire.encode(_wire.Signal(signum=9))
    )
    return st.one_of(valid, valid, valid, valid, odd, odd, odd, garbage, garbage, flood)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    linger = draw(st.booleans())
    workload = draw(st.sampled_from(sorted(WORKLOADS)))
    if WORKLOADS[workload][1]:
        namespaces = draw(st.sampled_from(["pid", "pid+mnt", "user+pid+uts"]))
    else:
        namespaces = draw(st.sampled_from(sorted(NAMESPACES)))
    if linger and workload in ("sleeps", "ignores_term", "forks"):
        linger = False  # it would wait out a sleep of 1000 s, as designed
    start = Start(
        workload=workload,
        namespaces=namespaces,
        auto_proceed=draw(st.booleans()),
        linger=linger,
        grace_ms=draw(st.sampled_from([0, 1, 50, 300])),
        vfork=draw(st.booleans()),
    )
    stream = b"".join(draw(st.lists(_commands(linger), max_size=14)))
    request = _request(start, PLACEHOLDER)
    data = request + stream
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
    pieces = tuple(
        (data[a:b], draw(st.sampled_from([0, 0, 0, 1, 20])), draw(st.sampled_from([0, 0, 0, 1, 2])))
        for a, b in itertools.pairwise(bounds)
    )
    ending = draw(st.sampled_from(["close", "shutdown", "kill", "deaf"]))
    if ending != "kill" and draw(st.integers(0, 3)) == 0:
        # EOF at any byte, the request's included: what is sent is cut short
        keep = draw(st.integers(0, len(data) - 1))
        pieces = tuple(
            (piece[: max(0, keep - a)], pause, fds)
            for (piece, pause, fds), a in zip(
                pieces, [0, *itertools.accumulate(len(p) for p, _, _ in pieces)], strict=False
            )
            if keep > a
        )
    return Plan(start=start, pieces=pieces, ending=ending)


def _request(start: Start, tag: str) -> bytes:
    argv, _ = WORKLOADS[start.workload]
    flags = NAMESPACES[start.namespaces]
    fields: dict[str, object] = {
        "version": 1,
        "argv": tuple(a.encode() for a in argv),
        "env": (b"PATH=/bin:/usr/bin", f"LINX_FUZZ_TAG={tag}".encode()),
        "stdin": _wire.stdio_devnull(),
        "stdout": _wire.stdio_devnull(),
        "auto_proceed": int(start.auto_proceed),
        "namespaces": flags,
    }
    if flags & CLONE_NEWUSER:
        fields["uid_map"] = b"0 0 1"
        fields["gid_map"] = b"0 0 1"
        fields["setgroups"] = b"deny"
    if flags & CLONE_NEWUTS:
        fields["hostname"] = b"fuzz"
    if start.linger:
        fields["orphan_linger"] = 1
    else:
        fields["orphan_grace_ms"] = start.grace_ms
    return _wire.encode(_wire.Spawn(**fields))  # type: ignore[arg-type]


def _retag(plan: Plan, tag: str) -> list[tuple[bytes, int, int]]:
    """The plan's writes with the placeholder tag replaced by this run's (of equal size)."""
    old, new = _request(plan.start, PLACEHOLDER), _request(plan.start, tag)
    data = b"".join(p for p, _, _ in plan.pieces)
    assert old.startswith(data) or data.startswith(old)
    assert len(old) == len(new)
    data = new[: len(data)] + data[len(old) :]
    out, pos = [], 0
    for piece, pause, fds in plan.pieces:
        out.append((data[pos : pos + len(piece)], pause, fds))
        pos += len(piece)
    return out


@pytest.fixture(scope="module")
def san_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="linx-fuzz-") as directory:
        yield Path(directory)


def _san_env(directory: Path) -> dict[str, str]:
    asan = os.environ.get("ASAN_OPTIONS", "")
    ubsan = os.environ.get("UBSAN_OPTIONS", "")
    return {
        "ASAN_OPTIONS": f"{asan}:log_path={directory}/asan",
        "UBSAN_OPTIONS": f"{ubsan}:print_stacktrace=1:log_path={directory}/ubsan",
    }


def _start(mode: str, env: dict[str, str]) -> tuple[int, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    high = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
    path = _launcher.agent_path()
    pid = os.posix_spawn(
        path,
        [path, mode],
        {**os.environ, **env},
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, high, 3),
        ],
    )
    os.close(high)
    theirs.close()
    return pid, ours


def _send(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    try:
        if fds:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            sent = sock.sendmsg([data], rights)
            sock.sendall(data[sent:])
        else:
            sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the peer may stop reading (a refused frame); what it said is still there


def _send_with_fds(sock: socket.socket, data: bytes, count: int) -> None:
    """`data` with `count` fds (of /dev/null) attached to its first byte."""
    fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]
    try:
        _send(sock, data, fds)
    finally:
        for fd in fds:
            os.close(fd)


def _read_all(sock: socket.socket, types: dict[int, type[_wire.Message]]) -> list[_wire.Message]:
    sock.settimeout(HANG)
    reader = _wire.FrameReader(types)
    out: list[_wire.Message] = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            raise AssertionError(f"no EOF within {HANG}s; so far {out}") from None
        if not data:
            assert reader.pending == 0, f"a partial frame before EOF after {out}"
            return out
        out += reader.feed(data)


def _reap(pid: int) -> int:
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"pid {pid} still running after {HANG}s")


def _tagged(tag: str) -> list[int]:
    needle = f"LINX_FUZZ_TAG={tag}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
    return found


def _none_left(tag: str) -> list[int]:
    deadline = time.monotonic() + 10
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.02)  # a zombie the agent left to init is reaped by it
    return left


def _in_step(stream: bytes) -> bytes:
    """What to send after `stream` (the commands) so that the agent's framing ends at a
    frame boundary: zeros completing a frame it still waits for (an unknown type, or a
    known one with fields of tag 0, both answered with a notice)."""
    pad = b""
    while True:
        data, pos = stream + pad, 0
        while len(data) - pos >= 4:
            (length,) = struct.unpack_from("<I", data, pos)
            if length > _wire.MAX_COMMAND:
                return pad  # the agent ends the session at this frame
            if len(data) - pos - 4 < length:
                break
            pos += 4 + length
        left = len(data) - pos
        if left == 0:
            return pad
        pad += bytes(4 - left if left < 4 else length - (left - 4))


def _check_order(messages: list[_wire.Message], closed_first: bool) -> None:
    progress = [_wire.Spawned, _wire.Ready, _wire.Running]
    step = 0
    terminal = 0
    spawned: _wire.Spawned | None = None
    for message in messages:
        if isinstance(message, _wire.Notice):
            continue
        assert terminal == 0, f"a frame after the terminal one: {messages}"
        if isinstance(message, TERMINAL_FRAMES):
            terminal += 1
            continue
        kind = type(message)
        assert kind in progress[step:], f"out of order: {messages}"
        step = progress.index(kind) + 1
        if isinstance(message, _wire.Spawned):
            spawned = message
        if isinstance(message, _wire.Ready):
            assert spawned is not None and message.host_pid == spawned.host_pid, messages
    if not closed_first:
        assert terminal == 1, f"no terminal frame: {messages}"
    assert terminal <= 1


def _san_reports(directory: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(directory.iterdir()))


def _exit_code(status: int, what: str) -> int:
    assert os.WIFEXITED(status), f"{what} died: {os.waitstatus_to_exitcode(status)}"
    return os.WEXITSTATUS(status)


class Reader(threading.Thread):
    """Reads the agent's frames while the test sends: the agent takes no command while its
    own frames wait for the socket (protocol.md), so a sender that does not read blocks."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.messages: list[_wire.Message] = []
        self.failure: BaseException | None = None
        self.cut = False  # we shut our reading down: a partial frame is ours, not its

    def run(self) -> None:
        reader = _wire.FrameReader(_wire.AGENT_MESSAGES)
        self.sock.settimeout(HANG)
        try:
            while data := self.sock.recv(65536):
                self.messages += reader.feed(data)
            assert self.cut or reader.pending == 0, "a partial frame before EOF"
        except ConnectionResetError:
            pass
        except BaseException as exc:  # re-raised in the test's thread
            self.failure = exc

    def result(self) -> list[_wire.Message]:
        self.join(HANG + 5)
        assert not self.is_alive(), f"no EOF within {HANG}s; so far {self.messages}"
        if self.failure is not None:
            raise self.failure
        return self.messages


def run_agent_plan(plan: Plan, san: Path) -> None:
    tag = secrets.token_hex(8)
    env = {**_san_env(san), "LINX_AGENT_NO_VFORK": "0" if plan.start.vfork else "1"}
    pid, sock = _start("--agent", env)
    reader = Reader(sock)
    if plan.ending == "deaf":
        sock.settimeout(3)  # the agent takes no command while its frames wait for us
    else:
        reader.start()
    got_request = sum(len(p) for p, _, _ in plan.pieces) >= len(_request(plan.start, tag))
    try:
        with contextlib.suppress(TimeoutError):
            for piece, pause, fds in _retag(plan, tag):
                if pause:
                    time.sleep(pause / 1000)
                _send_with_fds(sock, piece, fds)
        if plan.ending == "deaf":
            sock.close()
            messages: list[_wire.Message] = []
        elif plan.ending == "close":
            reader.cut = True
            sock.shutdown(socket.SHUT_RDWR)  # as close(), and wakes our reader
        elif plan.ending == "shutdown":
            sock.shutdown(socket.SHUT_WR)  # the agent's EOF: Python is gone
        else:
            commands = b"".join(p for p, _, _ in plan.pieces)[len(_request(plan.start, tag)) :]
            _send(sock, _in_step(commands) + _wire.encode(_wire.Kill()))
        if plan.ending != "deaf":
            messages = reader.result()
    finally:
        sock.close()
        status = _reap(pid)
    assert _san_reports(san) == "", plan
    code = _exit_code(status, "the agent")
    _check_order(messages, closed_first=plan.ending != "kill")
    ended = any(isinstance(m, TERMINAL_FRAMES) for m in messages)
    last = [m for m in messages if not isinstance(m, _wire.Notice)][-1:]
    event(f"{plan.ending}: {last[0] if last and ended else 'no terminal frame'}")
    assert code == 0 or (code == 1 and not ended), (code, messages, plan)
    if not got_request:
        assert messages == [], messages
    assert _none_left(tag) == [], plan


@pytest.mark.slow
@FUZZ_SETTINGS
@given(plan=plans())
def test_live_agent_survives_any_command_stream(plan: Plan, san_dir: Path) -> None:
    run_agent_plan(plan, san_dir)


# --- the launcher -----------------------------------------------------------------------


@dataclass(frozen=True)
class LauncherStep:
    kind: str  # "start" (a START_AGENT with `fds`), "garbage"
    fds: tuple[str, ...]  # of FD_KINDS: what the launcher would make the agent's channel
    data: bytes


# The agent's channel as a caller could hand it over: the stream socket of protocol.md, or
# anything else, which the agent it starts must fail on without harm.
FD_KINDS = ("stream", "stream", "stream", "dgram", "seqpacket", "pipe", "devnull")


@st.composite
def launcher_steps(draw: st.DrawFn) -> list[LauncherStep]:
    steps = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 4)) == 0:
            garbage = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=12),
                    st.sampled_from([struct.pack("<IH", 5000, 1), struct.pack("<I", 1)]),
                )
            )
            steps.append(LauncherStep("garbage", (), garbage))
        else:
            count = draw(st.sampled_from([1, 1, 1, 0, 2]))
            fds = tuple(draw(st.sampled_from(FD_KINDS)) for _ in range(count))
            steps.append(LauncherStep("start", fds, b""))
    return steps


def _channel(kind: str) -> tuple[socket.socket | None, int, str]:
    """Our end (a stream socket, to check the agent behind it), the fd to hand over, and
    how /proc names what that fd is (empty for /dev/null, which everyone holds)."""
    if kind == "devnull":
        return None, os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC), ""
    if kind == "pipe":
        theirs, write_end = os.pipe()
        os.close(write_end)
        return None, theirs, f"pipe:[{os.fstat(theirs).st_ino}]"
    sock_type = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM}.get(
        kind, socket.SOCK_SEQPACKET
    )
    ours, their_end = socket.socketpair(socket.AF_UNIX, sock_type)
    theirs = their_end.detach()
    link = f"socket:[{os.fstat(theirs).st_ino}]"
    if kind != "stream":
        ours.close()
        return None, theirs, link
    return ours, theirs, link


def _holders(links: set[str]) -> list[int]:
    """The processes but us holding an fd /proc names as one of `links`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            fds = os.listdir(f"/proc/{pid}/fd")
            if int(pid) != os.getpid() and any(
                os.readlink(f"/proc/{pid}/fd/{fd}") in links for fd in fds
            ):
                found.append(int(pid))
    return found


def _check_session(sock: socket.socket, tag: str) -> None:
    """The agent behind `sock`, if the launcher started one, serves a spawn to its end."""
    request = _wire.encode(
        _wire.Spawn(
            version=1,
            argv=(b"/bin/true",),
            env=(f"LINX_FUZZ_TAG={tag}".encode(),),
            auto_proceed=1,
        )
    )
    _send(sock, request)  # and no EOF: an agent that gets one need not say how it ended
    messages = _read_all(sock, _wire.AGENT_MESSAGES)
    if messages:  # none: the launcher never got to this frame, or refused it
        assert [type(m) for m in messages] == [
            _wire.Spawned,
            _wire.Ready,
            _wire.Running,
            _wire.Exited,
        ], messages
        assert messages[-1] == _wire.Exited(code=0)


def run_launcher_plan(steps: list[LauncherStep], san: Path) -> None:
    tag = secrets.token_hex(8)
    pid, sock = _start("--launcher", _san_env(san))
    sessions: list[socket.socket] = []
    links: set[str] = set()
    try:
        for token, step in enumerate(steps):
            if step.kind == "garbage":
                _send(sock, step.data)
                continue
            ends = [_channel(kind) for kind in step.fds]
            _send(sock, _wire.encode(_wire.StartAgent(token=token)), [t for _, t, _ in ends])
            for ours, theirs, link in ends:
                os.close(theirs)
                links.add(link)
                if ours is not None:
                    sessions.append(ours)
        # EOF: the launcher takes no more requests, and exits once its agents have ended
        sock.shutdown(socket.SHUT_WR)
        for session in sessions:
            _check_session(session, tag)
        replies = _read_all(sock, _wire.LAUNCHER_REPLIES)
        status = _reap(pid)
    finally:
        sock.close()
        for session in sessions:
            session.close()
    assert _exit_code(status, "the launcher") in (0, 1), status
    assert all(isinstance(r, _wire.AgentExited | _wire.LaunchFailed) for r in replies), replies
    assert _none_left(tag) == []
    # every agent it forked is gone once its session is over (or it never had one)
    links.discard("")
    deadline = time.monotonic() + 10
    while (left := _holders(links)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"agents left behind: {steps}"
    assert _san_reports(san) == "", steps


@FUZZ_SETTINGS
@given(steps=launcher_steps())
def test_live_launcher_survives_any_request_stream(
    steps: list[LauncherStep], san_dir: Path
) -> None:
    run_launcher_plan(steps, san_dir)
