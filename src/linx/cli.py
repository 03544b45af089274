"""`linx run`: run one command in fresh namespaces from the shell.

The command line is a thin layer over `linx.spawn`: it parses, spawns with `auto_proceed`,
forwards SIGTERM/SIGHUP to the workload (and SIGKILLs it if it is still there
`--stop-grace` seconds later), and exits with the workload's status (128+n for a signal, 125
for a failure before the workload ran). It never handles the workload's stdio: the
workload inherits this terminal.
"""

from __future__ import annotations

import argparse
import errno
import io
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from ._options import Namespace
from .errors import NoProcess, ProcessError
from .events import Event, Exited, Outcome, Signaled
from .session import spawn

EXIT_USAGE = 2  # as argparse exits for the options it checks itself
EXIT_SETUP_FAILED = 125
EXIT_NOT_FOUND = 127  # as a shell says it
WAIT_FOREVER = 3600.0  # sigtimedwait needs a timeout; the loop waits again
# Default seconds between a forwarded SIGTERM/SIGHUP and the SIGKILL that follows it: the
# grace of the default orphan policy, so that `kill` on linx ends the workload as `kill -9`
# would.
STOP_GRACE = 5.0

RUN_EPILOG = """\
examples:
  linx run -- echo hello
  linx run --ns user,pid,mount,uts,ipc --map-root --hostname box -- sh -c 'id; hostname'
  linx run --ns net --events -- ip -brief link

--ns takes a comma-separated list of: net mount pid uts ipc user cgroup time.
--map-root maps your uid and gid to root inside a user namespace (it adds "user").
A command without a slash is searched in the workload's PATH (see --env, --clear-env);
a relative one is taken from the workload's working directory (--cwd, or yours).
The workload gets your stdin, stdout and stderr, and no other open file: unlike env or
unshare, a redirection such as 3<file or a <(...) of the shell does not reach it.
The exit status is the workload's, 128+N if signal N killed it, 125 if it never ran (the
failing stage and errno are printed on stderr: a missing path fails at execve), 127 if
a command without a slash is not found in PATH, and 2 for a bad command line.

Signals: Ctrl-C reaches the workload from the terminal (and if it dies of it, linx ends
by SIGINT too, so that a shell stops the loop or script it was in); a SIGINT or SIGQUIT
sent to linx with kill is passed on. SIGTERM or SIGHUP sent to linx is passed on, and a
workload still running --stop-grace seconds later (5 by default) is killed (SIGKILL).
With "pid" the workload is its namespace's init, and the kernel drops every signal it
has no handler for: Ctrl-C does nothing to a plain `sleep`, while `kill` on linx ends
it after the grace. The workload starts with every signal at its default, whatever linx
was started with: under nohup, a hang-up still ends it.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linx",
        description="Spawn processes into fresh Linux namespaces.",
    )
    parser.add_argument("--version", action="version", version=f"linx {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run ARGV in fresh namespaces",
        description="Run ARGV (a command and its arguments) in a child cloned into "
        "fresh namespaces, and exit with its status.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--ns", metavar="LIST", default="", help="namespaces to create, e.g. user,pid,mount"
    )
    run.add_argument("--map-root", action="store_true", help="map your uid/gid to 0 (implies user)")
    run.add_argument(
        "--uid-map", metavar="IN:OUT:COUNT", action="append", default=[], help="a uid map line"
    )
    run.add_argument(
        "--gid-map", metavar="IN:OUT:COUNT", action="append", default=[], help="a gid map line"
    )
    run.add_argument("--hostname", metavar="NAME", help="hostname inside (implies uts)")
    run.add_argument("--cwd", metavar="DIR", help="working directory of the workload")
    run.add_argument(
        "--env",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="set a variable (repeatable)",
    )
    run.add_argument("--clear-env", action="store_true", help="start from an empty environment")
    run.add_argument("--events", action="store_true", help="print each lifecycle event to stderr")
    run.add_argument(
        "--stop-grace",
        metavar="SECONDS",
        type=_grace,
        default=STOP_GRACE,
        help=f"seconds from a SIGTERM/SIGHUP to linx to the SIGKILL (default {STOP_GRACE:g})",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGV", help="the command")
    return parser


def _grace(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"must be finite and >= 0: {text!r}")
    return seconds


def _id_map(option: str, lines: list[str]) -> list[tuple[int, int, int]]:
    entries = []
    for line in lines:
        parts = line.split(":")
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            _usage_error(f"{option} takes INSIDE:OUTSIDE:COUNT, not {line!r}")
        try:
            entries.append((int(parts[0]), int(parts[1]), int(parts[2])))
        except ValueError:  # more digits than int() converts; far out of range anyway
            _usage_error(f"{option} takes INSIDE:OUTSIDE:COUNT, not {line!r}")
    return entries


def _spawn_options(args: argparse.Namespace) -> dict[str, Any]:
    namespaces = {n.strip() for n in args.ns.split(",") if n.strip()}
    uid_map = _id_map("--uid-map", args.uid_map)
    gid_map = _id_map("--gid-map", args.gid_map)
    if args.map_root:
        uid_map = uid_map or [(0, os.geteuid(), 1)]
        gid_map = gid_map or [(0, os.getegid(), 1)]
    if uid_map or gid_map:
        namespaces.add(Namespace.USER.value)
    if args.hostname is not None:
        namespaces.add(Namespace.UTS.value)
    env = {} if args.clear_env else dict(os.environ)
    for entry in args.env:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            _usage_error(f"--env takes KEY=VALUE, not {entry!r}")
        env[key] = value
    return {
        "namespaces": sorted(namespaces),
        "uid_map": uid_map or None,
        "gid_map": gid_map or None,
        "hostname": args.hostname,
        "cwd": args.cwd,
        "env": env,
    }


def _print_event(event: Event) -> None:
    _say(f"linx: event {event!r}")


def _say(message: str) -> None:
    """`message` on stderr. One that cannot be written (a full disk, a reader that went
    away) is dropped: linx's exit status is the workload's, and a traceback's 1 would be
    taken for it."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class _Discard(io.TextIOBase):
    """Stands for a standard stream this process was started without (closed fd 1 or 2):
    Python leaves it `None` then, and `print(file=None)`, argparse's usage included, writes
    to stdout instead, into the workload's output."""

    def write(self, text: str) -> int:
        return len(text)


def _fill_closed_streams() -> None:
    if sys.stdout is None:
        sys.stdout = _Discard()
    if sys.stderr is None:
        sys.stderr = _Discard()


def _resolve(command: str, env: dict[str, str], cwd: str | None) -> str | None:
    """`command` as an absolute path, as a shell would find it: searched in the workload's
    PATH (execvp's default without one) when it has no slash; a relative result is taken
    from the workload's working directory. The library itself never searches."""
    if "/" not in command:
        dirs = env.get("PATH", os.defpath).split(os.pathsep)
        if not all(os.path.isabs(d) for d in dirs):
            # A relative entry ("" is ".") is the workload's directory's, as execvp would
            # take it there, never ours.
            base = _workload_directory(cwd)
            dirs = [os.path.join(base, d) for d in dirs]
        found = shutil.which(command, path=os.pathsep.join(dirs)) or _first_file(command, dirs)
        if found is None:
            return None
        command = found
    # No normalising: "a/../b" is the kernel's to resolve, through any symlink "a" is.
    return command if os.path.isabs(command) else os.path.join(_workload_directory(cwd), command)


def _first_file(command: str, dirs: list[str]) -> str | None:
    """A file named `command` that was found but may not be executed: its execve fails
    with EACCES, named (125), as execvp and a shell (126) say it, not "command not
    found"."""
    for directory in dirs:
        path = os.path.join(directory, command)
        if os.path.isfile(path):
            return path
    return None


def _workload_directory(cwd: str | None) -> str:
    """The workload's working directory, absolute; ours is asked for only if needed."""
    if cwd is not None and os.path.isabs(cwd):
        return cwd
    return os.path.join(os.getcwd(), cwd or "")


def run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        _usage_error("no command given (put it after --)")
    options = _spawn_options(args)
    forwarder = _SignalForwarder(args.stop_grace)  # before the first thread exists
    try:
        command = _resolve(argv[0], options["env"], args.cwd)
        if command is None:
            _say(f"linx run: {argv[0]}: command not found")
            return EXIT_NOT_FOUND
        session = spawn(
            [command, *argv[1:]],
            auto_proceed=True,
            owner=_print_event if args.events else None,
            **options,
        )
    except (TypeError, ValueError) as exc:
        _usage_error(str(exc))
    except ProcessError as exc:  # the launcher could not start an agent
        _say(f"linx: {exc.describe()}")
        return EXIT_SETUP_FAILED
    except OSError as exc:  # before any process: out of fds, the current directory removed
        _say(f"linx run: {exc}")
        return EXIT_SETUP_FAILED
    except RuntimeError as exc:  # no agent program: a broken install, a wrong $LINX_AGENT
        _say(str(exc))
        return EXIT_SETUP_FAILED
    with session:
        forwarder.start(session)
        try:
            outcome = session.wait()
        except ProcessError as exc:
            _say(f"linx: {exc.describe()}")
            hint = _hint(exc, options["namespaces"])
            if hint is not None:
                _say(f"linx run: {hint}")
            return EXIT_SETUP_FAILED
    if outcome == Signaled(signum=signal.SIGINT):
        _die_by_sigint()
    return _exit_status(outcome)


def _hint(error: ProcessError, namespaces: list[str]) -> str | None:
    """What to do about a clone the kernel refused, where its errno alone does not say."""
    if error.stage != "clone":
        return None
    if error.errno == errno.EPERM and "user" not in namespaces and os.geteuid() != 0:
        return "without root, new namespaces need a user namespace too: add --map-root"
    if error.errno == errno.ENOSPC:
        return "a limit on namespaces was reached (/proc/sys/user/max_*_namespaces)"
    return None


def _usage_error(message: str) -> NoReturn:
    """A bad command line: exits 2, as argparse does, so that it is never taken for the
    workload's own status."""
    _say(f"linx run: {message}")
    raise SystemExit(EXIT_USAGE)


def _exit_status(outcome: Outcome) -> int:
    if isinstance(outcome, Exited):
        return outcome.code
    if isinstance(outcome, Signaled):
        return 128 + outcome.signum
    return EXIT_SETUP_FAILED  # Aborted: not with auto_proceed, which nothing aborts


class _SignalForwarder:
    """SIGTERM and SIGHUP sent to linx go on to the workload, and a SIGKILL follows `grace`
    seconds after the first. SIGINT and SIGQUIT go on only when sent with kill(2): a
    terminal sends its Ctrl-C and Ctrl-\\ to the workload itself (it is in the same
    process group), and passing those on too would deliver them twice.

    A thread of its own takes them with `sigtimedwait`, never a signal handler: a handler
    runs inside whatever the main thread was doing, the session's lock included, and a
    second signal arriving in the first one's work (a terminal's hang-up sends two)
    deadlocked there. Made before any thread exists (the first spawn starts linx's reactor
    thread), it blocks them in this thread, and so in every thread started after it, for
    that one to take.
    """

    SIGNALS = frozenset({signal.SIGTERM, signal.SIGHUP})
    FROM_TERMINAL = frozenset({signal.SIGINT, signal.SIGQUIT})

    def __init__(self, grace: float) -> None:
        self._grace = grace
        signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS | self.FROM_TERMINAL)

    def start(self, session: Any) -> None:
        threading.Thread(
            target=self._forward, args=(session,), name="linx-run-signals", daemon=True
        ).start()

    def _forward(self, session: Any) -> None:
        deadline: float | None = None  # of the SIGKILL, once a signal has come
        killed = False  # once: later signals are still passed on, with no new grace
        while True:
            left = WAIT_FOREVER if deadline is None else deadline - time.monotonic()
            wait = min(max(0.0, left), WAIT_FOREVER)  # a grace of years overflows time_t
            received = signal.sigtimedwait(self.SIGNALS | self.FROM_TERMINAL, wait)
            if received is None:
                if deadline is not None and time.monotonic() >= deadline:
                    _send(session, signal.SIGKILL)
                    deadline, killed = None, True
            elif received.si_signo in self.SIGNALS:
                _send(session, received.si_signo)
                if deadline is None and not killed:
                    deadline = time.monotonic() + self._grace
            elif received.si_code <= 0:  # SI_USER, SI_QUEUE, SI_TKILL: sent, not typed
                _send(session, received.si_signo)


def _die_by_sigint() -> None:
    """End as the workload did, by SIGINT (a Ctrl-C), rather than exit 130: a shell tells
    the two apart, and stops a loop or script only for a command that a SIGINT killed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # To this thread: sent to the process, the forwarder's sigtimedwait might take it.
    signal.raise_signal(signal.SIGINT)


def _send(session: Any, signum: int) -> None:
    try:
        session.signal(signum)
    except NoProcess:
        pass  # the workload has ended


def main(argv: Sequence[str] | None = None) -> int:
    _fill_closed_streams()
    args = _parser().parse_args(argv)
    if args.command == "run":
        return run(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
