"""stdio directives, observed from the host: what the workload's fds 0/1/2 are and who sees EOF."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import linx
from tests.conftest import (
    capture_stdout,
    expect,
    pid_alive,
    read_to_eof,
    run_python,
    wait_until,
)

Factory = Callable[..., linx.Session]


def stdio_targets(pid: int) -> dict[int, str]:
    """What fds 0, 1 and 2 of `pid` are."""
    return {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)}


def only_stdio_open(pid: int) -> bool:
    """True once `pid` holds exactly fds 0, 1, 2.

    Polled: a freshly exec'd `sleep` briefly opens files of its own (locale data) while it
    starts, but an fd leaked into it would stay open for good.
    """
    return sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]


@pytest.fixture
def unix_listener(short_dir: str) -> Iterator[tuple[str, socket.socket]]:
    """A listening AF_UNIX socket at a short path."""
    path = os.path.join(short_dir, "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(4)
        server.settimeout(10.0)
        yield path, server


def accept_and_read(server: socket.socket) -> bytes:
    conn, _ = server.accept()
    with conn:
        return read_to_eof(conn.fileno())


def test_devnull_gives_eof_on_stdin_and_discards_output(session_factory: Factory) -> None:
    # `cat` ends at once only if stdin is at EOF; `echo` succeeds only if stdout is writable.
    session = session_factory(
        ["/bin/sh", "-c", "cat && echo out && echo err >&2 && exec /bin/sleep 30"],
        stdio="devnull",
    )
    ready = expect(session, linx.Ready)
    session.proceed()
    expect(session, linx.Running)
    assert wait_until(lambda: Path(f"/proc/{ready.host_pid}/comm").read_text() == "sleep\n")
    assert stdio_targets(ready.host_pid) == {0: "/dev/null", 1: "/dev/null", 2: "/dev/null"}


def test_devnull_stdin_reads_eof_immediately(session_factory: Factory) -> None:
    session, output = capture_stdout(
        session_factory,
        ["/bin/sh", "-c", "if read line; then echo data; else echo eof; fi"],
        stdio={"stdin": "devnull"},
    )
    assert output == b"eof\n"
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_pipe_fd_gets_output_then_eof_after_the_caller_closed_its_copy(
    session_factory: Factory,
) -> None:
    # capture_stdout closes the caller's write end at once; EOF then comes while the session
    # is still open, so nobody (linx included) keeps a copy of it.
    session, output = capture_stdout(session_factory, ["/bin/sh", "-c", "echo hello"])
    assert output == b"hello\n"
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_pipe_sees_eof_once_the_workload_closes_it_while_the_session_lives(
    session_factory: Factory,
) -> None:
    # The workload closes its stdout and keeps running: EOF now proves that neither the
    # agent nor anything else of linx still holds a copy of the write end.
    r, w = os.pipe()
    try:
        session = session_factory(
            ["/bin/sh", "-c", "echo hello; exec 1>&-; exec /bin/sleep 30"], stdio={"stdout": w}
        )
    finally:
        os.close(w)
    try:
        ready = expect(session, linx.Ready)
        session.proceed()
        assert read_to_eof(r) == b"hello\n"
    finally:
        os.close(r)
    expect(session, linx.Running)
    assert pid_alive(ready.host_pid)  # still running: the EOF did not come from its exit
    assert wait_until(lambda: Path(f"/proc/{ready.host_pid}/comm").read_text() == "sleep\n")


class FileLike:
    """Not a file: only has `fileno()`."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def test_an_object_with_fileno_is_used_as_its_fd(session_factory: Factory) -> None:
    session, output = capture_stdout(
        session_factory, ["/bin/sh", "-c", "echo via-fileno"], wrap=FileLike
    )
    assert output == b"via-fileno\n"
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_fd_0_given_as_a_value_is_a_valid_fd(session_factory: Factory) -> None:
    # stdio={"stdin": 0} (or a file object whose fileno() is 0): the caller's fd 0 itself.
    session, output = capture_stdout(
        session_factory, ["/bin/readlink", "/proc/self/fd/0"], stdio={"stdin": 0}
    )
    assert output.decode().strip() == os.readlink("/proc/self/fd/0")
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_an_open_file_object_receives_the_output(session_factory: Factory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("wb") as f:
        session = session_factory(["/bin/sh", "-c", "echo to-file"], stdio={"stdout": f})
    expect(session, linx.Ready)
    session.proceed()
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert out.read_bytes() == b"to-file\n"


def test_connect_unix_sends_output_to_a_listening_socket(
    session_factory: Factory, unix_listener: tuple[str, socket.socket]
) -> None:
    path, server = unix_listener
    session = session_factory(
        ["/bin/sh", "-c", "echo over-unix"], stdio={"stdout": ("connect_unix", path)}
    )
    expect(session, linx.Ready)  # connected host-side before the clone
    session.proceed()
    assert accept_and_read(server) == b"over-unix\n"
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_a_connect_unix_stream_has_no_send_timeout_left_on_it(
    session_factory: Factory, unix_listener: tuple[str, socket.socket]
) -> None:
    # The agent bounds its own connect with SO_SNDTIMEO; left on, a workload writing to a
    # reader that pauses longer got EAGAIN.
    path, server = unix_listener
    report = (
        "import socket; s = socket.socket(fileno=1); "
        "print(s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16).hex()); s.detach()"
    )
    session = session_factory(
        [sys.executable, "-c", report],
        stdio={"stdout": ("connect_unix", path)},
        auto_proceed=True,
    )
    assert accept_and_read(server) == b"00" * 16 + b"\n"
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_a_relative_connect_unix_path_is_taken_from_the_callers_directory_now(
    unix_listener: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent connects it, from the launcher's directory: wherever this process was when
    # the launcher started. The path must mean what it means here and now.
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)  # the launcher exists
    path, server = unix_listener
    monkeypatch.chdir(os.path.dirname(path))
    session = linx.spawn(
        ["/bin/sh", "-c", "echo relative"],
        stdio={"stdout": ("connect_unix", os.path.basename(path))},
        auto_proceed=True,
    )
    assert accept_and_read(server) == b"relative\n"
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_a_dict_mixes_directives_per_stream(
    session_factory: Factory, unix_listener: tuple[str, socket.socket]
) -> None:
    path, server = unix_listener
    r, w = os.pipe()
    try:
        session = session_factory(
            [
                "/bin/sh",
                "-c",
                "if read line; then echo data; else echo eof; fi; echo to-err >&2",
            ],
            stdio={"stdin": "devnull", "stdout": w, "stderr": ("connect_unix", path)},
        )
    finally:
        os.close(w)
    try:
        ready = expect(session, linx.Ready)
        session.proceed()
        err = accept_and_read(server)
        out = read_to_eof(r)
    finally:
        os.close(r)
    assert out == b"eof\n"
    assert err == b"to-err\n"
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert session.host_pid == ready.host_pid


def test_a_dict_leaves_unnamed_streams_inherited(session_factory: Factory) -> None:
    r, w = os.pipe()
    try:
        session = session_factory(["/bin/sleep", "30"], stdio={"stdout": w})
    finally:
        os.close(w)
    try:
        ready = expect(session, linx.Ready)
        session.proceed()
        expect(session, linx.Running)
        targets = stdio_targets(ready.host_pid)
        assert targets[0] == os.readlink("/proc/self/fd/0")
        assert targets[2] == os.readlink("/proc/self/fd/2")
        assert targets[1] == os.readlink(f"/proc/self/fd/{r}")  # the same pipe
    finally:
        os.close(r)


def test_the_workload_holds_only_fds_0_1_2(session_factory: Factory) -> None:
    # Open a few inheritable fds of our own: none of them may reach the workload.
    leaks = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
    for fd in leaks:
        os.set_inheritable(fd, True)
    try:
        r, w = os.pipe()
        session = session_factory(["/bin/sleep", "30"], stdio={"stdout": w})
        os.close(w)
        os.close(r)
        ready = expect(session, linx.Ready)
        session.proceed()
        expect(session, linx.Running)
        assert wait_until(lambda: only_stdio_open(ready.host_pid), timeout=3)
        assert Path(f"/proc/{ready.host_pid}/comm").read_text() == "sleep\n"
    finally:
        for fd in leaks:
            os.close(fd)


def test_the_workload_holds_only_fds_0_1_2_with_default_stdio(session_factory: Factory) -> None:
    session = session_factory(["/bin/sleep", "30"], namespaces=["pid", "user", "mount"])
    ready = expect(session, linx.Ready)
    session.proceed()
    expect(session, linx.Running)
    assert wait_until(lambda: only_stdio_open(ready.host_pid), timeout=3)
    assert Path(f"/proc/{ready.host_pid}/comm").read_text() == "sleep\n"


# A process at its fd limit: copying its stdio for "inherit" fails with EMFILE. That must be
# an error, not a workload whose stdout and stderr are quietly closed; and linx goes on
# once fds are free again.
OUT_OF_FDS_PROGRAM = """
    import errno, os, resource
    import linx

    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)  # launcher and spare exist
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    filler = []
    try:
        while True:
            filler.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    os.close(filler.pop())  # one fd free: the first stdio copy fits, the second does not
    try:
        linx.spawn(["/bin/true"], auto_proceed=True)
    except OSError as exc:
        print(errno.errorcode[exc.errno], "stdio" in str(exc), flush=True)
    else:
        print("no error", flush=True)
    for fd in filler:
        os.close(fd)
    print(linx.spawn(["/bin/echo", "back"], auto_proceed=True).wait(timeout=10))
"""


def test_running_out_of_fds_for_inherited_stdio_is_an_error() -> None:
    result = run_python(OUT_OF_FDS_PROGRAM)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["EMFILE True", "back", "Exited(code=0)"]
