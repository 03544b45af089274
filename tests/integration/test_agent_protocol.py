"""The agent (and launcher) on its own: malformed and oversized input over a raw channel.

These drive `linx-agent --agent` (or `--launcher`) directly with hand-made frames
(docs/protocol.md), the way a buggy or hostile peer would: every bad input gets its transport
stage and errno, the agent exits, and no process is left behind.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import resource
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linx import _launcher, _wire
from tests.conftest import (
    SPAWN_PATHS,
    Pipe,
    build_helper,
    child_pids,
    pid_alive,
    process_state,
    run_python,
    spawn_path_env,
    wait_until,
)


class RawAgent:
    """One `linx-agent --agent` (or `mode`) with its socket on fd 3."""

    def __init__(
        self, env: dict[str, str] | None = None, mode: str = "--agent", sndbuf: int = 0
    ) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if sndbuf:  # what the agent's sends may have in flight (the kernel keeps a minimum)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        high = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        path = _launcher.agent_path()
        self.pid = os.posix_spawn(
            path,
            [path, mode],
            {**os.environ, **(env or {})},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, high, 3),
            ],
        )
        os.close(high)
        theirs.close()
        self.sock = ours
        self.reader = _wire.FrameReader(_wire.AGENT_MESSAGES)
        self.status: int | None = None

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent may refuse before reading it all; its answer is still there

    def messages(self, timeout: float = 10.0) -> list[_wire.Message]:
        """Everything the agent says until it closes the channel."""
        self.sock.settimeout(timeout)
        out: list[_wire.Message] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return out
            out += self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()
        if self.status is None:
            _, status = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(status)


class RawLauncher(RawAgent):
    """One `linx-agent --launcher` with its channel on fd 3."""

    def __init__(self, sndbuf: int = 0) -> None:
        super().__init__(mode="--launcher", sndbuf=sndbuf)
        self.reader = _wire.FrameReader(_wire.LAUNCHER_REPLIES)

    def exited(self) -> bool:
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.status = os.waitstatus_to_exitcode(status)
        return pid != 0


@pytest.fixture
def agent() -> Iterator[RawAgent]:
    raw = RawAgent()
    yield raw
    raw.close()
    assert raw.status == 0, f"the agent ended with status {raw.status}"


CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000


def _spawn(**fields: object) -> bytes:
    base: dict[str, object] = {"version": 1, "argv": (b"/bin/true",), "env": ()}
    base.update(fields)
    return _wire.encode(_wire.Spawn(**base))  # type: ignore[arg-type]


def _send_with_fds(sock: socket.socket, frame: bytes, *fds: int) -> None:
    """`frame` in one sendmsg, `fds` riding on its first byte (SCM_RIGHTS)."""
    sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def _error(messages: list[_wire.Message]) -> tuple[str, int]:
    assert messages, "the agent said nothing"
    last = messages[-1]
    assert isinstance(last, _wire.Error), messages
    return last.stage.decode(), last.errno


def test_garbage_request_is_malformed_request_einval(agent: RawAgent) -> None:
    body = struct.pack("<H", _wire.Spawn.TYPE) + b"\xff\xff\x01\x00\x00\x00"
    agent.send(struct.pack("<I", len(body)) + body)
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)


def test_wrong_protocol_version_is_malformed_request(agent: RawAgent) -> None:
    agent.send(_spawn(version=2))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)


def test_a_command_as_first_frame_is_malformed_request(agent: RawAgent) -> None:
    agent.send(_wire.encode(_wire.Proceed()))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)


def test_nul_inside_argv_is_malformed_request(agent: RawAgent) -> None:
    agent.send(_spawn(argv=(b"/bin/tr\0ue",)))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)


def test_a_request_without_argv_is_malformed_request(agent: RawAgent) -> None:
    # nothing to execute: refused as a request, never cloned to fail at execve
    agent.send(_spawn(argv=(), auto_proceed=1))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)
    assert child_pids(agent.pid) == []


@pytest.mark.parametrize(
    "tail",
    [b"\x04\x00\x01", struct.pack("<HI", 4, 2) + b"/"],
    ids=["short-header", "short-value"],
)
def test_a_request_ending_in_a_partial_field_is_malformed_request(
    agent: RawAgent, tail: bytes
) -> None:
    # every field whole: a request cut short inside its last field is refused, not run
    # on what came before the cut
    body = _spawn(auto_proceed=1)[4:] + tail
    agent.send(struct.pack("<I", len(body)) + body)
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)
    assert child_pids(agent.pid) == []


@pytest.mark.parametrize("field", ["uid", "gid"])
def test_an_id_of_all_ones_is_malformed_request(agent: RawAgent, field: str) -> None:
    # (u32)-1 means "leave unchanged" to setresuid/setresgid: the workload would keep ours
    agent.send(_spawn(auto_proceed=1, **{field: 0xFFFFFFFF}))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)
    assert child_pids(agent.pid) == []


def test_stdio_fd_index_one_past_the_fds_sent_is_malformed_request(agent: RawAgent) -> None:
    # one fd sent: index 0 is it, index 1 is past the end of what the agent took
    read_end, write_end = os.pipe()
    try:
        _send_with_fds(agent.sock, _spawn(auto_proceed=1, stdout=_wire.stdio_fd(1)), write_end)
        os.close(write_end)
        assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)
        assert os.read(read_end, 1) == b""  # and the fd it took is closed
    finally:
        os.close(read_end)


def test_a_hostname_without_a_uts_namespace_is_malformed_request(agent: RawAgent) -> None:
    # the child's sethostname would rename the host's UTS namespace (ours)
    before = socket.gethostname()
    agent.send(_spawn(auto_proceed=1, hostname=b"renamed-by-linx"))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)
    assert child_pids(agent.pid) == []
    assert socket.gethostname() == before


@pytest.mark.parametrize("value", [b"", b"bogus", b"denyx", b"Allow"])
def test_setgroups_other_than_allow_or_deny_is_malformed_request(
    agent: RawAgent, value: bytes
) -> None:
    request = _spawn(namespaces=CLONE_NEWUSER, setgroups=value, auto_proceed=1)
    agent.send(request)
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)
    assert child_pids(agent.pid) == []


@pytest.mark.parametrize("size", [1, 5, 7])
def test_groups_not_a_whole_number_of_u32s_is_malformed_request(agent: RawAgent, size: int) -> None:
    agent.send(_spawn(auto_proceed=1, uid=0, gid=0, groups=b"\0" * size))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)
    assert child_pids(agent.pid) == []


@pytest.mark.parametrize("bit", [0x20, 0x80000000], ids=["exit_signal_byte", "clone_io"])
def test_namespaces_bit_of_no_namespace_is_malformed_request(agent: RawAgent, bit: int) -> None:
    # Neither is a CLONE_NEW* flag: 0x20 lies in clone's exit-signal byte, 0x80000000 is
    # CLONE_IO. The agent took both, and cloned with them.
    agent.send(_spawn(namespaces=bit, auto_proceed=1))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)


def test_empty_connect_unix_path_is_malformed_request(agent: RawAgent) -> None:
    # The agent adds the terminating NUL, so an empty path was the abstract address "\0",
    # which any process may listen on: the workload's stdout went to whoever did.
    agent.send(_spawn(stdout=_wire.stdio_connect_unix(b""), auto_proceed=1))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)


def _lowest_free_fd(pid: int) -> int:
    held = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return min(set(range(len(held) + 1)) - held)


def at_its_fd_limit(who: str) -> pytest.MarkDecorator:
    """For a test that holds the agent or launcher at its fd limit: skipped against the
    sanitizer build, whose runtime opens files of its own as the process exits."""
    sanitizer = "ASAN_OPTIONS" in os.environ or _launcher.agent_path().endswith("-san")
    reason = f"a sanitizer runtime opens files of its own as the {who} exits (at its fd limit)"
    return pytest.mark.skipif(sanitizer, reason=reason)


def _hold_at_fd_limit(pid: int) -> None:
    """Lower `pid`'s RLIMIT_NOFILE to its lowest free fd: the next fd it gets is refused.
    Again until it holds, since an fd of its start-up may close meanwhile."""
    limit = -1
    while limit != _lowest_free_fd(pid):
        limit = _lowest_free_fd(pid)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, 1024))
        time.sleep(0.05)


@at_its_fd_limit("agent")
def test_fds_the_agent_cannot_take_are_stage_recvmsg_emfile(agent: RawAgent) -> None:
    # The request is well formed; the kernel drops its fd at the agent's RLIMIT_NOFILE
    # (MSG_CTRUNC). That is the agent's resource failure, reported as the launcher reports
    # the same, not the caller's malformed request.
    # Once it waits for the request: before, its start-up (a dynamic loader, say) may still
    # open files, and would fail at the limit
    assert wait_until(lambda: "poll" in Path(f"/proc/{agent.pid}/wchan").read_text())
    _hold_at_fd_limit(agent.pid)
    read_end, write_end = os.pipe()
    try:
        _send_with_fds(agent.sock, _spawn(stdout=_wire.stdio_fd(0)), write_end)
    finally:
        os.close(write_end)
    assert _error(agent.messages()) == ("recvmsg", errno.EMFILE)
    assert os.read(read_end, 1) == b""  # nobody holds the pipe's write end any more
    os.close(read_end)


def test_stdio_fd_index_without_fds_is_malformed_request(agent: RawAgent) -> None:
    agent.send(_spawn(stdout=_wire.stdio_fd(5)))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)


@pytest.mark.parametrize("tag", [0, 99])
def test_unknown_tags_even_repeated_are_skipped(agent: RawAgent, tag: int) -> None:
    extra = b"".join(struct.pack("<HI", tag, 1) + value for value in (b"x", b"y"))
    request = _spawn(auto_proceed=1)
    body = request[4:] + extra
    agent.send(struct.pack("<I", len(body)) + body)
    assert agent.messages()[-1] == _wire.Exited(code=0)


@pytest.mark.parametrize(
    ("tag", "value"),
    [(1, struct.pack("<I", 1)), (4, b"/"), (10, struct.pack("<I", 0))],
    ids=["version", "cwd", "uid"],
)
def test_a_known_field_given_twice_is_malformed_request(
    agent: RawAgent, tag: int, value: bytes
) -> None:
    # only argv and env repeat; a second cwd or uid is not a value to pick one of
    request = _spawn(auto_proceed=1, cwd=b"/", uid=0)
    body = request[4:] + struct.pack("<HI", tag, len(value)) + value
    agent.send(struct.pack("<I", len(body)) + body)
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)
    assert child_pids(agent.pid) == []


def test_request_over_the_cap_is_refused_from_its_header(agent: RawAgent) -> None:
    agent.send(struct.pack("<IH", _wire.MAX_REQUEST + 1, _wire.Spawn.TYPE))
    assert _error(agent.messages()) == ("request_too_big", errno.EMSGSIZE)


def test_frame_length_below_two_is_malformed_request(agent: RawAgent) -> None:
    agent.send(struct.pack("<I", 1) + b"x")
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)


def test_command_over_the_cap_tears_the_session_down(agent: RawAgent) -> None:
    agent.send(_spawn(argv=(b"/bin/sleep", b"30")))
    agent.sock.settimeout(10)
    ready: list[_wire.Message] = []
    while not any(isinstance(m, _wire.Ready) for m in ready):
        ready += agent.reader.feed(agent.sock.recv(65536))
    host_pid = next(m.host_pid for m in ready if isinstance(m, _wire.Ready))
    agent.send(struct.pack("<IH", _wire.MAX_COMMAND + 1, _wire.Signal.TYPE))
    assert _error(agent.messages()) == ("command_too_big", errno.EMSGSIZE)
    assert wait_until(lambda: not pid_alive(host_pid), 5)


def test_unknown_command_is_a_notice_and_the_session_goes_on(agent: RawAgent) -> None:
    # the workload outlives the command's arrival: after the outcome there is no notice
    agent.send(_spawn(auto_proceed=1, argv=(b"/bin/sh", b"-c", b"sleep 0.3; exit 4")))
    agent.send(struct.pack("<IH", 2, 0x0777))
    messages = agent.messages()
    notices = [m for m in messages if isinstance(m, _wire.Notice)]
    assert notices and notices[0].stage == b"malformed_command"
    assert messages[-1] == _wire.Exited(code=4)


def test_kill_aborts_a_parked_child_kills_a_running_one_and_takes_no_body(
    agent: RawAgent,
) -> None:
    agent.send(_spawn(argv=(b"/bin/sleep", b"30")))
    host_pid = _until_ready(agent)
    agent.send(struct.pack("<IH", 3, _wire.Kill.TYPE) + b"x")  # a KILL has no fields
    agent.send(_wire.encode(_wire.Kill()))
    messages = agent.messages()
    assert [type(m) for m in messages] == [_wire.Notice, _wire.Aborted], messages
    assert isinstance(messages[0], _wire.Notice)
    assert messages[0].stage == b"malformed_command"
    assert not pid_alive(host_pid)
    running = RawAgent()
    try:
        running.send(_spawn(auto_proceed=1, argv=(b"/bin/sleep", b"30")))
        _until_ready(running)
        running.send(_wire.encode(_wire.Kill()))
        assert running.messages()[-1] == _wire.Signaled(signum=signal.SIGKILL)
    finally:
        running.close()
    assert running.status == 0


@pytest.mark.parametrize(
    "tail",
    [b"\x01\x00\x04", struct.pack("<HI", 7, 4) + b"xy"],
    ids=["short-header", "short-value"],
)
def test_a_command_ending_in_a_partial_field_is_a_notice(agent: RawAgent, tail: bytes) -> None:
    # a SIGNAL whose signum is whole but whose frame ends inside another field: malformed,
    # like a request cut short, so the SIGKILL in it is not sent
    agent.send(_spawn(auto_proceed=1, argv=(b"/bin/sh", b"-c", b"sleep 0.3; exit 4")))
    body = _wire.encode(_wire.Signal(signum=signal.SIGKILL))[4:] + tail
    agent.send(struct.pack("<I", len(body)) + body)
    messages = agent.messages()
    assert MALFORMED_COMMAND in messages, messages
    assert messages[-1] == _wire.Exited(code=4)


def test_a_signal_with_two_signums_is_a_notice(agent: RawAgent) -> None:
    # which of the two was meant is not for the agent to pick: neither is sent
    agent.send(_spawn(auto_proceed=1, argv=(b"/bin/sh", b"-c", b"sleep 0.3; exit 4")))
    body = _wire.encode(_wire.Signal(signum=0))[4:] + struct.pack("<HII", 1, 4, signal.SIGKILL)
    agent.send(struct.pack("<I", len(body)) + body)
    messages = agent.messages()
    assert MALFORMED_COMMAND in messages, messages
    assert messages[-1] == _wire.Exited(code=4)


def test_a_command_of_exactly_the_cap_is_taken(agent: RawAgent) -> None:
    # the cap is the largest length allowed, not the first refused: a SIGNAL padded with
    # an unknown field to MAX_COMMAND bytes is acted on like any other
    agent.send(_spawn(argv=(b"/bin/sleep", b"30")))
    _read_until(agent, _wire.Ready)
    signal_body = _wire.encode(_wire.Signal(signum=0))[4:]
    pad = _wire.MAX_COMMAND - len(signal_body) - 6
    body = signal_body + struct.pack("<HI", 99, pad) + b"\0" * pad
    assert len(body) == _wire.MAX_COMMAND
    agent.send(struct.pack("<I", len(body)) + body + _wire.encode(_wire.Abort()))
    assert agent.messages() == [_wire.Aborted()]


def test_a_peer_that_does_not_read_never_keeps_the_workload_unreaped(agent: RawAgent) -> None:
    agent.send(_spawn(auto_proceed=1, argv=(b"/bin/sleep", b"0.3")))
    assert wait_until(lambda: child_pids(agent.pid) != [], 5)
    workload = child_pids(agent.pid)[0]
    # commands each answered by a NOTICE, and nothing read: the agent's frames fill the
    # socket, it reads no more commands, and ours fill the socket too
    agent.sock.setblocking(False)
    flood = struct.pack("<IH", 2, 0x0777) * 10000
    with pytest.raises(BlockingIOError):
        for _ in range(1000):
            agent.sock.send(flood)
    # the workload exits meanwhile, and is reaped while its peer still reads nothing
    assert wait_until(lambda: not Path(f"/proc/{workload}").exists(), 5), "a zombie"
    messages = agent.messages()
    notices = [m for m in messages if isinstance(m, _wire.Notice)]
    assert notices and {n.stage for n in notices} == {b"malformed_command"}
    lifecycle = [type(m) for m in messages if not isinstance(m, _wire.Notice)]
    assert lifecycle == [_wire.Spawned, _wire.Ready, _wire.Running, _wire.Exited]
    assert messages[-1] == _wire.Exited(code=0)


def test_eof_before_a_whole_request_ends_the_agent_quietly(agent: RawAgent) -> None:
    agent.send(_spawn()[:7])
    agent.sock.shutdown(socket.SHUT_WR)
    assert agent.messages() == []


def test_auto_proceed_child_failing_before_ready_reports_its_own_error() -> None:
    # Fork-style path (a map the child may not write itself). The agent writes the maps,
    # then the release byte; long maps keep it busy while the child fails sethostname (a
    # name too long) and exits, so the byte often finds no reader. The child's error
    # record is in the report pipe by then and must be what comes out, never the EPIPE.
    id_map = b"".join(b"%d %d 1\n" % (i, i) for i in range(340))
    request = _spawn(
        namespaces=CLONE_NEWUSER | CLONE_NEWUTS,
        hostname=b"h" * 100,
        setgroups=b"deny",
        uid_map=id_map,
        gid_map=id_map,
        auto_proceed=1,
    )
    for _ in range(40):
        raw = RawAgent(env={"LINX_AGENT_NO_VFORK": "1"})
        try:
            raw.send(request)
            assert _error(raw.messages()) == ("sethostname", errno.EINVAL)
        finally:
            raw.close()
        assert raw.status == 0


def _start_agent(launcher: RawLauncher, token: int) -> socket.socket:
    """Python's end of a session whose other end goes with a START_AGENT(`token`)."""
    ours, agent_end = socket.socketpair()
    _send_with_fds(launcher.sock, _wire.encode(_wire.StartAgent(token=token)), agent_end.fileno())
    agent_end.close()
    return ours


def test_start_agent_with_two_fds_is_malformed_and_forks_no_agent() -> None:
    launcher = RawLauncher()
    first, first_agent_end = socket.socketpair()
    second, second_agent_end = socket.socketpair()
    frame = _wire.encode(_wire.StartAgent(token=111))
    _send_with_fds(launcher.sock, frame, first_agent_end.fileno(), second_agent_end.fileno())
    first_agent_end.close()
    second_agent_end.close()
    # the launcher exits as for any malformed frame; neither socket got an agent, nor is
    # one kept for a later START_AGENT that brings none
    assert wait_until(lambda: launcher.exited(), 5), "the launcher took a 2-fd START_AGENT"
    for ours in (first, second):
        ours.settimeout(5)
        assert ours.recv(1) == b"", "an agent holds the socket"
        ours.close()
    launcher.close()
    assert launcher.status == 0


def test_after_a_malformed_frame_the_launcher_stays_for_its_agents_and_reads_no_more() -> None:
    # It stays while an agent of its own runs (to reap it, and kill its child should it
    # die: design.md), refuses further sends (EPIPE), and closes the session fds it will
    # not act on at once: kept in its queue, they would wait for its exit.
    launcher = RawLauncher()
    served = _start_agent(launcher, 1)
    try:
        assert wait_until(lambda: child_pids(launcher.pid) != []), "no agent for the request"
        os.kill(launcher.pid, signal.SIGSTOP)  # so that all that follows is queued at once
        launcher.sock.sendall(struct.pack("<IH", 2, 0x7777))  # an unknown type
        unread = _start_agent(launcher, 2)
        os.kill(launcher.pid, signal.SIGCONT)
        unread.settimeout(5)
        assert unread.recv(1) == b"", "an agent holds the socket"
        unread.close()

        def refused() -> bool:
            try:
                launcher.sock.send(_wire.encode(_wire.StartAgent(token=3)))
            except BrokenPipeError:
                return True
            return False

        assert wait_until(refused), "the launcher still reads"
        assert not launcher.exited(), "the launcher left its agent"
    finally:
        served.close()  # its agent sees EOF and ends: then so does the launcher
    assert wait_until(lambda: launcher.exited(), 5)
    launcher.close()
    assert launcher.status == 0


def test_a_retired_launcher_sends_every_report_before_it_exits() -> None:
    # Retired (its channel shut for writing) while Python is alive but slow to read, it
    # still reports each agent that dies; the last reports wait for room in the socket.
    # It exited after its last agent with those unsent, and their sessions lost the
    # status the launcher's word carries (agent_died with none).
    launcher = RawLauncher(sndbuf=1)  # the kernel's minimum: a few reports fill it
    count = 20
    sessions = [_start_agent(launcher, token) for token in range(count)]
    try:
        assert wait_until(lambda: len(child_pids(launcher.pid)) == count)
        agents = child_pids(launcher.pid)
        launcher.sock.shutdown(socket.SHUT_WR)
        for pid in agents:
            os.kill(pid, signal.SIGKILL)
        # none left to reap (or the launcher gone), before a word of its replies is read
        assert wait_until(lambda: child_pids(launcher.pid) == []), "agents not reaped"
        replies = launcher.messages()
    finally:
        for session in sessions:
            session.close()
    assert sorted(r.token for r in replies if isinstance(r, _wire.AgentExited)) == list(
        range(count)
    ), replies
    launcher.close()
    assert launcher.status == 0


@at_its_fd_limit("launcher")
def test_a_session_fd_the_launcher_cannot_take_is_launch_failed_recvmsg_emfile() -> None:
    # At the launcher's RLIMIT_NOFILE the kernel drops START_AGENT's fd (MSG_CTRUNC): the
    # request was fine, so it is that token's LAUNCH_FAILED, and the launcher goes on
    launcher = RawLauncher()
    ours = None
    try:
        assert wait_until(lambda: "poll" in Path(f"/proc/{launcher.pid}/wchan").read_text())
        _hold_at_fd_limit(launcher.pid)
        ours = _start_agent(launcher, 7)
        launcher.sock.settimeout(10)
        replies: list[_wire.Message] = []
        while not replies:
            data = launcher.sock.recv(65536)
            assert data, "the launcher closed its channel"
            replies += launcher.reader.feed(data)
        assert replies == [_wire.LaunchFailed(token=7, stage=b"recvmsg", errno=errno.EMFILE)]
        assert not launcher.exited()
    finally:
        if ours is not None:
            ours.close()
        launcher.close()
    assert launcher.status == 0


def test_a_start_agent_over_the_launcher_cap_forks_no_agent() -> None:
    # MAX_LAUNCHER_REQUEST is the launcher's cap: a START_AGENT padded past it (with an
    # unknown field, otherwise well formed, its fd attached) is refused like any
    # malformed frame, and the launcher exits without forking
    launcher = RawLauncher()
    ours, agent_end = socket.socketpair()
    body = _wire.encode(_wire.StartAgent(token=5))[4:]
    pad = _wire.MAX_LAUNCHER_REQUEST + 1 - len(body) - 6
    body += struct.pack("<HI", 99, pad) + b"\0" * pad
    assert len(body) == _wire.MAX_LAUNCHER_REQUEST + 1
    _send_with_fds(launcher.sock, struct.pack("<I", len(body)) + body, agent_end.fileno())
    agent_end.close()
    assert wait_until(lambda: launcher.exited(), 5), "the launcher took an oversized frame"
    ours.settimeout(5)
    assert ours.recv(1) == b"", "an agent holds the socket"
    ours.close()
    launcher.close()
    assert launcher.status == 0


def _holders(sock: socket.socket) -> list[int]:
    """The processes holding the other end of `sock`'s pair (by its inode), but us."""
    inode = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            fds = os.listdir(f"/proc/{pid}/fd")
            if int(pid) != os.getpid() and any(
                os.readlink(f"/proc/{pid}/fd/{fd}") == inode for fd in fds
            ):
                found.append(int(pid))
    return found


def test_start_agent_with_a_datagram_socket_is_malformed_and_forks_no_agent() -> None:
    # A datagram socket never reads EOF: an agent forked on one outlived the launcher and
    # Python, waiting in poll for ever (found by the live fuzz, test_live_fuzz.py).
    launcher = RawLauncher()
    ours, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    _send_with_fds(launcher.sock, _wire.encode(_wire.StartAgent(token=112)), agent_end.fileno())
    launcher.sock.shutdown(socket.SHUT_WR)  # EOF behind it: the launcher ends either way
    assert launcher.messages() == []
    launcher.close()
    held_by = _holders(agent_end)
    agent_end.close()
    for pid in held_by:
        os.kill(pid, signal.SIGKILL)
    ours.close()
    assert held_by == [], "an agent was forked on a datagram socket"
    assert launcher.status == 0


def test_agent_on_a_datagram_socket_exits_at_once() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = _launcher.agent_path()
    high = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
    pid = os.posix_spawn(
        path, [path, "--agent"], dict(os.environ), file_actions=[(os.POSIX_SPAWN_DUP2, high, 3)]
    )
    os.close(high)
    theirs.close()
    ours.close()
    try:
        assert wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid), "the agent waits"
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def test_legacy_clone_fallback_spawns_in_every_namespace() -> None:
    result = run_python(
        """
        import os
        import linx
        s = linx.spawn(["/bin/sleep", "30"], namespaces=list(linx.Namespace),
                       uid_map=[(0, 0, 1)], gid_map=[(0, 0, 1)])
        ready = s.events.get(timeout=10)
        assert isinstance(ready, linx.Ready), ready
        s.proceed()
        assert isinstance(s.events.get(timeout=10), linx.Running)
        # time and cgroup are the child's own unshares: all eight are there once it runs
        for name in ("user", "mnt", "pid", "uts", "ipc", "net", "cgroup", "time"):
            assert os.readlink(f"/proc/{ready.host_pid}/ns/{name}") != os.readlink(
                f"/proc/self/ns/{name}"), name
        s.signal(9)
        print(s.wait(10))
        """,
        env={"LINX_AGENT_NO_CLONE3": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Signaled(signum=9)"


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_linger_keeps_a_released_workload_whose_exec_is_not_in_yet(
    tmp_path: Path, path: str
) -> None:
    # auto_proceed, then EOF at once (a program that spawns with linger and ends): the EOF
    # is in the socket before the agent learns the exec outcome. On the fork-style path the
    # child is released already (committed: an ABORT gets EBUSY); linger must keep it, as it
    # keeps one that the vfork path saw exec.
    marker = tmp_path / "ran"
    env = spawn_path_env(path)
    for _ in range(3):
        raw = RawAgent(env=env)
        raw.send(
            _spawn(
                argv=(b"/bin/sh", b"-c", b"sleep 0.2; echo ran > " + bytes(marker)),
                auto_proceed=1,
                orphan_linger=1,
            )
        )
        raw.close()  # waits for the agent, which waits for its lingering workload
        assert raw.status == 0
        assert marker.read_text() == "ran\n", "a lingering workload was killed"
        marker.unlink()


def _late_marker(marker: Path) -> bytes:
    # a workload that leaves a marker only if it lives for 0.3 s after its exec
    return b"sleep 0.3; echo ran > " + bytes(marker)


def _until_ready(raw: RawAgent) -> int:
    raw.sock.settimeout(10)
    seen: list[_wire.Message] = []
    while not any(isinstance(m, _wire.Ready) for m in seen):
        data = raw.sock.recv(65536)
        assert data, f"the agent closed the channel: {seen}"
        seen += raw.reader.feed(data)
    return next(m.host_pid for m in seen if isinstance(m, _wire.Ready))


def _stopped(pid: int) -> bool:
    return process_state(pid) in "Tt"


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_linger_acts_on_a_signal_sent_right_before_the_close(tmp_path: Path, path: str) -> None:
    # SPAWN (auto_proceed, linger), SIGNAL(9), close at once, unread frames and all: the
    # agent's write of SPAWNED/READY/RUNNING may fail (EPIPE) before it has read the SIGNAL,
    # and its EOF may come before the exec outcome. The SIGNAL was sent while Python was
    # there: it is acted on (at RUNNING) before the orphan policy keeps what is left.
    marker = tmp_path / "ran"
    env = spawn_path_env(path)
    for _ in range(5):
        raw = RawAgent(env=env)
        raw.send(
            _spawn(argv=(b"/bin/sh", b"-c", _late_marker(marker)), auto_proceed=1, orphan_linger=1)
            + _wire.encode(_wire.Signal(signum=9))
        )
        raw.close()  # waits for the agent, which waits for its lingering workload
        assert raw.status == 0
        assert not marker.exists(), "the SIGNAL sent before the close was lost"


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_linger_delivers_signals_buffered_for_running_after_the_close(
    tmp_path: Path, path: str
) -> None:
    # A parked child, PROCEED and SIGNAL(SIGTERM), then close. The child is stopped while
    # parked, so the exec outcome cannot be in before the agent's EOF: linger keeps the
    # released child, and the SIGTERM buffered for RUNNING is still sent once it runs.
    marker = tmp_path / "ran"
    env = spawn_path_env(path)
    raw = RawAgent(env=env)
    raw.send(_spawn(argv=(b"/bin/sh", b"-c", _late_marker(marker)), orphan_linger=1))
    host_pid = _until_ready(raw)
    os.kill(host_pid, signal.SIGSTOP)
    assert wait_until(lambda: _stopped(host_pid), 5)
    raw.send(_wire.encode(_wire.Proceed()) + _wire.encode(_wire.Signal(signum=signal.SIGTERM)))
    raw.sock.close()
    # the agent applies its orphan policy: lingering, it lets go of our stderr first
    assert wait_until(lambda: os.readlink(f"/proc/{raw.pid}/fd/2") == os.devnull, 5)
    os.kill(host_pid, signal.SIGCONT)
    raw.close()
    assert raw.status == 0
    assert not pid_alive(host_pid)
    assert not marker.exists(), "the workload never got the SIGTERM sent before the close"


@pytest.mark.parametrize("path", SPAWN_PATHS)
@pytest.mark.parametrize("parked", [False, True], ids=["auto_proceed", "proceed"])
def test_kill_policy_ends_a_workload_whose_python_closed_at_once(
    tmp_path: Path, path: str, parked: bool
) -> None:
    # the kill policy is unchanged by reading to EOF first: released, running or not, the
    # workload is gone when the agent exits, and no signal sent before the close is needed
    marker = tmp_path / "ran"
    env = spawn_path_env(path)
    for _ in range(3):
        raw = RawAgent(env=env)
        request = _spawn(
            argv=(b"/bin/sh", b"-c", _late_marker(marker)),
            auto_proceed=0 if parked else 1,
            orphan_grace_ms=100,
        )
        raw.send(request)
        if parked:
            host_pid = _until_ready(raw)
            raw.send(_wire.encode(_wire.Proceed()) + _wire.encode(_wire.Signal(signum=0)))
        raw.close()
        assert raw.status == 0
        if parked:
            assert not pid_alive(host_pid)
        time.sleep(0.4)
        assert not marker.exists(), "an orphaned workload outlived the kill policy"


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_abort_that_reaches_an_auto_proceed_child_before_ready_is_busy(path: str) -> None:
    # SPAWN with auto_proceed and ABORT in one write: on the fork-style path the agent
    # reads the ABORT before the child's ready record, when the child is released already.
    # Committed to run, it is refused with a NOTICE at READY, never buffered into an ABORTED.
    raw = RawAgent(env=spawn_path_env(path))
    try:
        raw.send(
            _spawn(argv=(b"/bin/sh", b"-c", b"exit 3"), auto_proceed=1)
            + _wire.encode(_wire.Abort())
        )
        messages = raw.messages()
    finally:
        raw.close()
    assert raw.status == 0
    assert _wire.Notice(stage=b"abort", errno=errno.EBUSY) in messages, messages
    lifecycle = [type(m) for m in messages if not isinstance(m, _wire.Notice)]
    assert lifecycle == [_wire.Spawned, _wire.Ready, _wire.Running, _wire.Exited], messages
    assert messages[-1] == _wire.Exited(code=3)


def test_a_spawn_frame_of_another_type_is_malformed_request(agent: RawAgent) -> None:
    # a SPAWN's fields under another type (ENTER, 0x0002, is reserved): the type alone
    # says what the first frame is, so nothing is started
    frame = bytearray(_spawn())
    struct.pack_into("<H", frame, 4, 0x0002)
    agent.send(bytes(frame))
    assert _error(agent.messages()) == ("malformed_request", errno.EINVAL)
    assert child_pids(agent.pid) == []


@pytest.fixture(scope="module")
def kill_at_syscall(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_helper(tmp_path_factory, "kill_at_syscall")


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_child_that_dies_before_its_ready_record_is_ready_frame_eio(
    path: str, kill_at_syscall: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent under helpers/kill_at_syscall.c: the child dies at its sethostname, after
    # the clone and before its ready record, leaving no error record. Its EOF is all the
    # agent gets: ERROR(ready_frame, EIO), never READY, and never a wait for a record that
    # cannot come.
    env = {
        **spawn_path_env(path),
        "LINX_REAL_AGENT": _launcher.agent_path(),
        "LINX_KILL_SYSCALL": "sethostname",
    }
    monkeypatch.setenv("LINX_AGENT", str(kill_at_syscall))
    raw = RawAgent(env=env)
    try:
        auto = 1 if path == "vfork" else 0
        raw.send(_spawn(namespaces=CLONE_NEWUTS, hostname=b"box", auto_proceed=auto))
        messages = raw.messages()
    finally:
        raw.close()
    assert raw.status == 0
    assert [type(m) for m in messages] == [_wire.Spawned, _wire.Error], messages
    assert _error(messages) == ("ready_frame", errno.EIO)


def _read_until(raw: RawAgent, kind: type[_wire.Message]) -> list[_wire.Message]:
    """What the agent says up to and including its first `kind` frame."""
    raw.sock.settimeout(10)
    seen: list[_wire.Message] = []
    while not any(isinstance(m, kind) for m in seen):
        data = raw.sock.recv(65536)
        assert data, f"the agent closed the channel: {seen}"
        seen += raw.reader.feed(data)
    return seen


MALFORMED_COMMAND = _wire.Notice(stage=b"malformed_command", errno=errno.EINVAL)


def test_proceed_read_before_ready_is_a_notice_and_the_child_stays_parked() -> None:
    # SPAWN and PROCEED in one write: the agent reads the PROCEED while the child has not
    # reported ready. Refused with NOTICE(proceed, EAGAIN), it releases nothing: the child
    # is parked at READY and an ABORT still ends it.
    raw = RawAgent(env=spawn_path_env("fork"))
    try:
        raw.send(_spawn(argv=(b"/bin/sleep", b"30")) + _wire.encode(_wire.Proceed()))
        seen = _read_until(raw, _wire.Ready)
        raw.send(_wire.encode(_wire.Abort()))
        messages = seen + raw.messages()
    finally:
        raw.close()
    assert raw.status == 0
    assert _wire.Notice(stage=b"proceed", errno=errno.EAGAIN) in messages, messages
    lifecycle = [type(m) for m in messages if not isinstance(m, _wire.Notice)]
    assert lifecycle == [_wire.Spawned, _wire.Ready, _wire.Aborted], messages


def test_signal_without_signum_is_a_notice_and_the_session_goes_on(agent: RawAgent) -> None:
    agent.send(_spawn(auto_proceed=1, argv=(b"/bin/sh", b"-c", b"sleep 0.3; exit 4")))
    agent.send(struct.pack("<IH", 2, _wire.Signal.TYPE))
    messages = agent.messages()
    assert MALFORMED_COMMAND in messages, messages
    assert messages[-1] == _wire.Exited(code=4)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "header-first"])
def test_command_shorter_than_its_type_is_a_notice_and_skipped(split: bool) -> None:
    # length 1: one byte of body, not even a type; it is skipped whole, so the PROCEED
    # behind it is read as the next frame. Header first: the agent may read the header
    # alone, and must wait for the byte before it skips anything.
    raw = RawAgent()
    try:
        raw.send(_spawn(argv=(b"/bin/sh", b"-c", b"exit 4")))
        _read_until(raw, _wire.Ready)
        frames = struct.pack("<IB", 1, 0x10) + _wire.encode(_wire.Proceed())
        if split:
            raw.send(frames[:4])
            time.sleep(0.2)  # not needed to pass: gives the agent time to read the header
            frames = frames[4:]
        raw.send(frames)
        messages = raw.messages()
    finally:
        raw.close()
    assert raw.status == 0
    assert messages == [MALFORMED_COMMAND, _wire.Running(), _wire.Exited(code=4)]


def test_fds_sent_with_a_command_are_closed(agent: RawAgent, pipe: Pipe) -> None:
    # Commands take no fds (protocol.md): the agent closes any that come with one, at
    # once, and acts on the command. A pipe's write end kept by the agent would hold off
    # its reader's EOF for as long as the session lives.
    agent.send(_spawn(argv=(b"/bin/sleep", b"30")))
    _read_until(agent, _wire.Ready)
    _send_with_fds(agent.sock, _wire.encode(_wire.Signal(signum=0)), pipe.write_end)
    pipe.close_write()
    # the session lives on (parked); only the agent could still hold the write end
    assert pipe.read_to_eof(timeout=5) == b""
    agent.send(_wire.encode(_wire.Abort()))
    assert agent.messages() == [_wire.Aborted()]


@at_its_fd_limit("agent")
def test_fds_a_command_brought_that_the_agent_could_not_take_are_a_notice(
    agent: RawAgent, pipe: Pipe
) -> None:
    # At the agent's RLIMIT_NOFILE the kernel drops a command's fd (MSG_CTRUNC): the
    # command is still acted on, and what was lost is a NOTICE, not an end of the session.
    agent.send(_spawn(argv=(b"/bin/sleep", b"30")))
    _read_until(agent, _wire.Ready)
    _hold_at_fd_limit(agent.pid)
    _send_with_fds(agent.sock, _wire.encode(_wire.Signal(signum=0)), pipe.write_end)
    assert _read_until(agent, _wire.Notice) == [MALFORMED_COMMAND]
    agent.send(_wire.encode(_wire.Abort()))
    assert agent.messages() == [_wire.Aborted()]


def test_kill_policy_wakes_a_stopped_workload_to_act_on_its_sigterm(tmp_path: Path) -> None:
    # The orphan kill policy sends SIGTERM and then SIGCONT: a workload stopped when its
    # Python went away still gets to act on the SIGTERM within the grace, rather than
    # sitting stopped until the SIGKILL.
    log = tmp_path / "log"
    script = f"trap 'echo term >> {log}; exit 0' TERM; echo trapped > {log}; "
    script += "while :; do sleep 0.05; done"
    raw = RawAgent()
    try:
        raw.send(_spawn(argv=(b"/bin/sh", b"-c", script.encode()), auto_proceed=1))
        seen = _read_until(raw, _wire.Running)
        host_pid = next(m.host_pid for m in seen if isinstance(m, _wire.Ready))
        assert wait_until(lambda: log.exists() and "trapped" in log.read_text())
        os.kill(host_pid, signal.SIGSTOP)
        assert wait_until(lambda: _stopped(host_pid), 5)
    finally:
        raw.close()  # EOF: the kill policy, with its default 5 s grace; waits for the agent
    assert raw.status == 0
    assert log.read_text().split() == ["trapped", "term"]


def test_a_signal_past_the_buffers_end_is_a_notice_enobufs() -> None:
    # 65536 signals are buffered before RUNNING; the next is dropped with
    # NOTICE(signal, ENOBUFS) (protocol.md), which tells it from a failed allocation
    raw = RawAgent()
    try:
        raw.send(_spawn(argv=(b"/bin/sleep", b"30")))
        _read_until(raw, _wire.Ready)
        raw.send(_wire.encode(_wire.Signal(signum=0)) * (65536 + 1))
        raw.send(_wire.encode(_wire.Abort()))
        messages = raw.messages()
    finally:
        raw.close()
    assert raw.status == 0
    assert messages == [_wire.Notice(stage=b"signal", errno=errno.ENOBUFS), _wire.Aborted()]


def test_more_fds_than_the_agent_keeps_are_malformed_request() -> None:
    # The fd FIFO keeps 1,024 (protocol.md): a SPAWN sent in five pieces, each with 220
    # fds (one pipe end, repeated), brings 1,100. The agent has room for them all (its
    # RLIMIT_NOFILE raised), so this is the sender's malformed input, not EMFILE: refused,
    # and nothing is cloned
    raw = RawAgent()
    read_end, write_end = os.pipe()
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(raw.pid, resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        request = _spawn(auto_proceed=1)
        step = -(-len(request) // 5)
        pieces = [request[i : i + step] for i in range(0, len(request), step)]
        rights = array.array("i", [write_end] * 220)
        for piece in pieces:
            raw.sock.sendmsg([piece], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        os.close(write_end)
        write_end = -1
        assert _error(raw.messages()) == ("malformed_request", errno.EINVAL)
        assert child_pids(raw.pid) == []
        assert os.read(read_end, 1) == b""  # every copy it took is closed again
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)
        raw.close()
    assert raw.status == 0


@pytest.mark.parametrize("mode", ["--agent", "--launcher"])
def test_fd_3_that_is_not_a_socket_is_refused_at_start(mode: str) -> None:
    # started by hand with /dev/null on fd 3: usage status 2 and a line naming fd 3,
    # before any protocol work (it would otherwise take the file for its channel)
    done = subprocess.run(
        ["/bin/sh", "-c", 'exec "$0" "$1" 3</dev/null', _launcher.agent_path(), mode],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 2, done
    assert done.stderr.startswith("linx-agent: fd 3: "), done.stderr


def test_a_signal_the_kernel_refuses_is_a_notice_and_the_session_goes_on(
    agent: RawAgent,
) -> None:
    # no signal 999: pidfd_send_signal's EINVAL comes back as NOTICE(signal, EINVAL)
    agent.send(_spawn(auto_proceed=1, argv=(b"/bin/sh", b"-c", b"sleep 0.3; exit 4")))
    _read_until(agent, _wire.Running)
    agent.send(_wire.encode(_wire.Signal(signum=999)))
    messages = agent.messages()
    assert messages == [_wire.Notice(stage=b"signal", errno=errno.EINVAL), _wire.Exited(code=4)]
