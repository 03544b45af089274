"""The link to this process's launcher: the small C program that forks one agent per session.

It starts the launcher with `os.posix_spawn` (never `os.fork`: this process may have
threads), asks it for agents, and relays what it reports about them. It learns of the
launcher's death from the channel's EOF, never from `SIGCHLD`, so an application that reaps
children with `waitpid(-1)` cannot confuse it. It holds no session state.
"""

from __future__ import annotations

import array
import contextlib
import errno
import functools
import logging
import os
import select
import signal
import socket
import threading
from collections.abc import Callable

from . import _fds, _wire
from ._options import live_environment
from ._reactor import Reactor

log = logging.getLogger("linx")

AGENT_ENV = "LINX_AGENT"
SEND_TIMEOUT_MS = 10_000


class LauncherGone(Exception):
    """The launcher died; the caller should start a new one."""


class LauncherBusy(Exception):
    """The launcher's socket is full and the caller would rather not wait."""


Credentials = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, ...]]


def current_credentials() -> Credentials:
    """This process's uids, gids and supplementary groups now: what a launcher started now
    would have, and so its agents and their workloads (about 1 µs)."""
    return os.getresuid(), os.getresgid(), tuple(os.getgroups())


def agent_path() -> str:
    """The `linx-agent` program: `$LINX_AGENT`, or the one installed in the package."""
    override = os.environ.get(AGENT_ENV)
    path = override or os.path.join(os.path.dirname(__file__), "_bin", "linx-agent")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"linx: the agent program {path!r} is missing or not executable; "
            "reinstall linx (`pip install .`) on a machine with a C compiler"
        )
    return path


class Launcher:
    """One running launcher process and its channel.

    `on_exited(token, status)` and `on_failed(token, stage, errno)` run in the reactor thread;
    `on_gone(launcher)` runs there once the channel ends. `adopt(launcher)`, a C function
    (see `__init__`), stores it where its caller finds it.
    """

    def __init__(
        self,
        reactor: Reactor,
        on_exited: Callable[[int, int], None],
        on_failed: Callable[[int, str, int], None],
        on_gone: Callable[[Launcher], None],
        adopt: Callable[[Launcher], None],
    ) -> None:
        self._reactor = reactor
        self._on_exited = on_exited
        self._on_failed = on_failed
        self._on_gone = on_gone
        self._send_lock = threading.Lock()
        self._reader = _wire.FrameReader(_wire.LAUNCHER_REPLIES)
        self.alive = True
        self.retired = False  # see retire()
        # Fixed for its life, and passed to every agent it forks (Runtime: a launcher is
        # used only while this process's credentials are still these).
        self.credentials = current_credentials()
        self._sock, self.pid, self._pidfd = _start_process()
        try:
            reactor.register(self._sock.fileno(), select.EPOLLIN, self._on_readable)
            reactor.register(self._pidfd, select.EPOLLIN, self._on_process_exit)
        except BaseException:
            # Interrupted (a KeyboardInterrupt). Once its pidfd is watched, even if the
            # exception came right after, the reactor reaps it; before, it is ended here.
            if not reactor.watches(self._pidfd):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                os.close(self._pidfd)
            reactor.call_soon(self._gone)  # its socket: closed by the thread that may watch it
            raise
        # Stored here, not from what this returns: an exception as the call of the class
        # returned (a KeyboardInterrupt) would lose a launcher the reactor watches, idle
        # for the life of the process. No bytecode runs between a C `adopt` and its store.
        adopt(self)

    def start_agent(self, token: int, session_fd: int, *, block: bool = True) -> None:
        """Ask for an agent serving `session_fd`. Raises `LauncherGone` if it is dead.

        With `block=False`, raises `LauncherBusy` instead of waiting for the launcher to
        read when nothing of the request could be sent.
        """
        frame = _wire.encode(_wire.StartAgent(token=token))
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [session_fd]))]
        with self._send_lock:
            if not self.alive or self.retired:
                raise LauncherGone
            try:
                self._send_all(frame, rights, block)
            except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
                raise LauncherGone from exc

    def _send_all(
        self, frame: bytes, rights: list[tuple[int, int, array.array[int]]], block: bool
    ) -> None:
        view = memoryview(frame)
        while view:
            try:
                sent = self._sock.sendmsg([view], rights)
            except BlockingIOError:
                if not block and len(view) == len(frame):
                    raise LauncherBusy from None
                _wait_writable(self._sock)
                continue
            view, rights = view[sent:], []

    def retire(self) -> None:
        """Ask nothing more of this launcher (any thread). Its channel is shut for writing:
        it takes no request after that, stays while the agents it forked run (reporting
        one that dies, and killing its workload), and then exits, which ends the channel.
        """
        with self._send_lock:
            if self.retired or not self.alive:
                return
            self.retired = True
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:  # it is gone already: its EOF, or its pidfd, says so
                pass

    # --- reactor thread -----------------------------------------------------------------

    def _on_readable(self, _events: int) -> None:
        try:
            data = self._reactor.recv(self._sock)
        except BlockingIOError:
            return
        except OSError:
            data = memoryview(b"")
        if not data:
            self._gone()
            return
        try:
            messages = self._reader.feed(data)
        except _wire.WireError:
            log.error("linx: the launcher sent malformed data; starting a new one")
            self._gone()
            return
        for message in messages:
            self._dispatch(message)

    def _dispatch(self, message: _wire.Message) -> None:
        if isinstance(message, _wire.AgentExited):
            if message.term_signal is not None:
                self._on_exited(message.token, -message.term_signal)
            else:
                self._on_exited(message.token, message.exit_code or 0)
        elif isinstance(message, _wire.LaunchFailed):
            self._on_failed(message.token, message.stage.decode("ascii", "replace"), message.errno)

    def _gone(self) -> None:
        with self._send_lock:
            if not self.alive:
                return
            self.alive = False
            self._reactor.unregister(self._sock.fileno())
            self._sock.close()
        self._on_gone(self)

    def _on_process_exit(self, _events: int) -> None:
        self._reactor.unregister(self._pidfd)
        try:
            os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED)
        except ChildProcessError:
            pass  # the application reaped it with its own waitpid(-1)
        os.close(self._pidfd)
        self._pidfd = -1
        self._gone()

    def forget_in_child(self) -> None:
        """In a forked child: drop this launcher (it is the parent's)."""
        self.alive = False
        self._sock.close()
        if self._pidfd >= 0:  # not yet closed by _on_process_exit
            os.close(self._pidfd)
            self._pidfd = -1


def _start_process() -> tuple[socket.socket, int, int]:
    ours, pair_end = _fds.socketpair()
    # Above fd 3, so the DUP2 below always makes a fresh, inheritable fd 3.
    theirs = _fds.duplicate_socket(pair_end, 10)
    pair_end.close()
    # The launcher's stdin and stdout, opened here rather than by posix_spawn, whose failure
    # names only the program: a caller with no /dev/null (a chroot, a mount namespace with
    # an empty /dev) was told the agent program was missing.
    devnull: list[int] = []
    pids: list[int] = []
    try:
        devnull.append(_open_devnull())
        spawn = functools.partial(
            os.posix_spawn,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull[0], 0),
                (os.POSIX_SPAWN_DUP2, devnull[0], 1),
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
            ],
            setsigmask=(),
            setsigdef=(signal.SIGINT, signal.SIGPIPE, signal.SIGCHLD),
        )
        path, environment = agent_path(), dict(live_environment())  # one C call: see there
        # extend(map(...)): the pid goes from posix_spawn into the list with no bytecode run
        # in between, where a signal handler's exception (a KeyboardInterrupt) would lose
        # it, and the launcher with it: unreaped, a zombie for the life of this process.
        try:
            pids.extend(map(spawn, (path,), (_LAUNCHER_ARGV,), (environment,)))
        except OSError as exc:
            if exc.errno != errno.E2BIG:
                raise
            # This process's environment is too big to exec (a variable over 128 KiB, or
            # all of them over a quarter of the stack limit): no reason to fail a spawn
            # that passes its own env, and the launcher needs only the variables it reads.
            pids.extend(map(spawn, (path,), (_LAUNCHER_ARGV,), (_own_variables(environment),)))
        theirs.close()
        ours.setblocking(False)
        try:
            pidfd = _fds.new(os.pidfd_open, pids[0])
        except OSError as exc:
            raise OSError(exc.errno, f"linx: pidfd_open of the launcher failed: {exc}") from exc
    except BaseException:
        theirs.close()
        if pids:
            _stop_process(ours, pids[0])
        else:
            ours.close()
        raise
    finally:
        any(map(os.close, devnull))
    return ours, pids[0], pidfd


_LAUNCHER_ARGV = ["linx-agent", "--launcher"]


def _own_variables(environment: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """What the launcher and its agents read of an environment: linx's test hooks
    (`LINX_AGENT_NO_VFORK`...), and in a sanitizer build the sanitizers' options."""
    return {
        key: value
        for key, value in environment.items()
        if key.startswith(b"LINX_") or key.endswith(b"SAN_OPTIONS")
    }


def _open_devnull() -> int:
    try:
        return _fds.new(os.open, os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        message = f"linx: the launcher needs {os.devnull} for its stdin and stdout: {exc.strerror}"
        raise OSError(exc.errno, message, os.devnull) from exc


def _stop_process(sock: socket.socket, pid: int) -> None:
    """End a launcher that is not watched yet: it exits at the EOF, and is reaped here."""
    sock.close()
    with contextlib.suppress(ChildProcessError):  # the application reaped it (waitpid(-1))
        os.waitpid(pid, 0)


def _wait_writable(sock: socket.socket) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    if not poller.poll(SEND_TIMEOUT_MS):
        raise TimeoutError(errno.ETIMEDOUT, "linx: the launcher stopped reading")
