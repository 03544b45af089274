"""`linx run`, driven as a user would: `python -m linx run ...` in a subprocess."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from linx.cli import STOP_GRACE
from tests.conftest import ROOT, wait_until


def linx_cli(
    *args: str, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "linx", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


def test_run_exits_with_the_workloads_exit_status() -> None:
    done = linx_cli("run", "--", "/bin/sh", "-c", "exit 7")
    assert done.returncode == 7, done.stderr


def test_run_exits_128_plus_signal_when_the_workload_is_killed_by_a_signal() -> None:
    done = linx_cli("run", "--", "/bin/sh", "-c", "kill -TERM $$")
    assert done.returncode == 128 + 15, done.stderr


def test_run_exits_125_and_names_stage_and_errno_when_the_workload_never_ran() -> None:
    done = linx_cli("run", "--cwd", "/nonexistent", "--", "/bin/true")
    assert done.returncode == 125, done.stderr
    assert "chdir" in done.stderr and "ENOENT" in done.stderr, done.stderr


def test_run_events_prints_ready_running_exited_to_stderr() -> None:
    done = linx_cli("run", "--events", "--", "/bin/sh", "-c", "echo out; exit 0")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "out\n"  # events never go to stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith("linx: event")]
    kinds = [line.split()[2].split("(")[0] for line in lines]
    assert kinds == ["Ready", "Running", "Exited"], done.stderr
    assert "code=0" in lines[-1]


def test_run_map_root_in_user_and_pid_namespaces_is_uid_0_and_pid_1() -> None:
    done = linx_cli(
        "run", "--ns", "user,pid", "--map-root", "--", "/bin/sh", "-c", "id -u; id -g; echo $$"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["0", "0", "1"]  # the gid mapped too, not 65534


@pytest.mark.parametrize("option", ["--uid-map", "--gid-map"])
def test_run_an_id_map_alone_implies_a_user_namespace(option: str) -> None:
    name = "uid_map" if option == "--uid-map" else "gid_map"
    done = linx_cli("run", option, "0:0:1", "--", "/bin/cat", f"/proc/self/{name}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "0", "1"]  # not the initial namespace's whole range


def test_run_hostname_sets_the_hostname_in_a_fresh_uts_namespace() -> None:
    done = linx_cli("run", "--hostname", "box", "--", "/bin/hostname")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "box\n"
    assert os.uname().nodename != "box"


def test_run_ns_takes_names_with_spaces_around_them_and_a_trailing_comma() -> None:
    # As typed in a shell script: --ns "uts, ipc," is the list uts, ipc.
    files = ["/proc/self/ns/uts", "/proc/self/ns/ipc"]
    done = linx_cli("run", "--ns", " uts, ipc,", "--", "/bin/readlink", *files)
    assert done.returncode == 0, done.stderr
    theirs = done.stdout.splitlines()
    assert len(theirs) == 2 and all(a != os.readlink(f) for a, f in zip(theirs, files, strict=True))


def test_run_env_reaches_the_workload() -> None:
    done = linx_cli(
        "run", "--env", "K=V", "--env", "EMPTY=", "--", "/bin/sh", "-c", 'echo "$K|${EMPTY-unset}"'
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "V|\n"


def test_run_inherits_the_callers_environment_by_default() -> None:
    done = linx_cli(
        "run", "--", "/bin/sh", "-c", 'echo "$LINX_CLI_TEST"', env={"LINX_CLI_TEST": "x1"}
    )
    assert done.stdout == "x1\n", done.stderr


def test_run_clear_env_starts_the_workload_from_only_the_given_variables() -> None:
    done = linx_cli(
        "run", "--clear-env", "--env", "K=V", "--", "/usr/bin/env", env={"LINX_CLI_TEST": "x1"}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "K=V\n"


def test_run_finds_a_command_in_path_as_a_shell_would() -> None:
    done = linx_cli("run", "--", "echo", "found")
    assert (done.returncode, done.stdout) == (0, "found\n"), done.stderr
    relative = linx_cli("run", "--cwd", "/bin", "--", "./echo", "from-cwd")
    assert (relative.returncode, relative.stdout) == (0, "from-cwd\n"), relative.stderr
    both = linx_cli("run", "--cwd", "bin", "--", "./echo", "both-relative", cwd="/")
    assert (both.returncode, both.stdout) == (0, "both-relative\n"), both.stderr


def test_run_in_a_removed_directory_exits_125_unless_given_a_cwd(tmp_path: Path) -> None:
    def run_in_removed_directory(*args: str) -> subprocess.CompletedProcess[str]:
        script = 'mkdir gone && cd gone && rmdir ../gone && exec "$@"'
        python = [sys.executable, "-m", "linx", "run", *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        return subprocess.run(
            ["/bin/sh", "-c", script, "sh", *python],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )

    done = run_in_removed_directory("--", "/bin/true")
    assert done.returncode == 125, done.stderr
    assert "current directory no longer exists" in done.stderr
    assert "Traceback" not in done.stderr
    given = run_in_removed_directory("--cwd", "/", "--", "pwd")
    assert (given.returncode, given.stdout) == (0, "/\n"), given.stderr


def test_run_exits_127_when_the_command_is_not_found() -> None:
    done = linx_cli("run", "--env", "PATH=/nonexistent", "--", "echo", "x")
    assert done.returncode == 127
    assert "echo: command not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_exits_0_and_run_help_documents_ns() -> None:
    top = linx_cli("--help")
    assert top.returncode == 0, top.stderr
    assert "run" in top.stdout
    run = linx_cli("run", "--help")
    assert run.returncode == 0, run.stderr
    assert "--ns" in run.stdout


def test_run_without_a_command_fails_with_a_message() -> None:
    for args in (["run"], ["run", "--"], ["run", "--ns", "pid"]):
        done = linx_cli(*args)
        assert done.returncode == 2, args
        assert "no command" in done.stderr, (args, done.stderr)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--ns", "bogus"), ("--env", "NOEQUALS"), ("--uid-map", "0:0"), ("--hostname", "h" * 65)],
)
def test_run_with_a_bad_option_value_exits_2_with_a_message_and_no_traceback(
    option: str, value: str
) -> None:
    # 2, as argparse exits: never a status the workload could have given (1, say)
    done = linx_cli("run", option, value, "--", "/bin/true")
    assert done.returncode == 2, done.stderr
    assert value in done.stderr or repr(value) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@contextlib.contextmanager
def running_cli(*args: str) -> Iterator[subprocess.Popen[str]]:
    """`linx run --events ARGS` in a subprocess, yielded once it reports `Running`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "linx", "run", "--events", *args],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "Running" in line:
                break
        else:
            raise AssertionError("linx run never reported Running")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_run_forwards_sigterm_to_the_workload_and_exits_143() -> None:
    with running_cli("--", "/bin/sleep", "60") as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert proc.stderr is not None and "Signaled" in proc.stderr.read()


def test_run_survives_a_burst_of_sigterm_and_sighup_and_still_kills_after_the_grace(
    tmp_path: Path,
) -> None:
    # A terminal's hang-up sends two at once; a handler running linx's work in signal
    # context deadlocked on the second one arriving inside the first.
    armed = tmp_path / "armed"  # not on stderr: that may come before linx's Running line
    workload = f"trap '' TERM HUP; touch {armed}; sleep 30"
    with running_cli("--stop-grace", "1", "--", "/bin/sh", "-c", workload) as proc:
        assert wait_until(armed.exists)
        for i in range(3000):  # os.kill: Popen.send_signal polls first, too slow a burst
            os.kill(proc.pid, signal.SIGTERM if i % 2 else signal.SIGHUP)
        assert proc.wait(timeout=20) == 128 + signal.SIGKILL


def test_run_counts_the_grace_from_the_first_sigterm_not_the_last(tmp_path: Path) -> None:
    # A supervisor repeating its SIGTERM until the workload goes must not put the SIGKILL
    # off each time: it comes a grace after the first one.
    armed = tmp_path / "armed"
    workload = f"trap '' TERM; touch {armed}; exec sleep 60"
    with running_cli("--stop-grace", "1", "--", "/bin/sh", "-c", workload) as proc:
        assert wait_until(armed.exists)
        give_up = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < give_up:
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(0.2)
        assert proc.poll() == 128 + signal.SIGKILL  # while the SIGTERMs were still coming


def test_run_passes_signals_on_under_a_grace_of_years(tmp_path: Path) -> None:
    # The wait for the SIGKILL's deadline once overflowed time_t and ended the thread that
    # passes signals on: the SIGTERM after the SIGHUP never reached the workload.
    armed = tmp_path / "armed"
    workload = f"trap '' HUP; trap 'exit 5' TERM; touch {armed}; sleep 30 & wait"
    with running_cli("--stop-grace", "1e10", "--", "/bin/sh", "-c", workload) as proc:
        assert wait_until(armed.exists)
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 5


def test_run_ends_by_sigint_when_its_workload_did(tmp_path: Path) -> None:
    # So that a shell stops the loop or script it runs linx in on a Ctrl-C, as it would for
    # the workload itself: it does that only for a command that a SIGINT killed.
    done = linx_cli("run", "--", "/bin/sh", "-c", "kill -INT $$")
    assert done.returncode == -signal.SIGINT, done.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script = f'{sys.executable} -m linx run -- /bin/sh -c "kill -INT \\$\\$"; echo $?'
    shell = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert shell.stdout == "130\n", shell.stderr  # what the shell reads is still 128+n


@pytest.mark.parametrize("grace", [None, 1.0], ids=["default-grace", "stop-grace-1"])
def test_run_kills_a_workload_that_outlives_a_forwarded_sigterm_by_the_grace(
    grace: float | None,
) -> None:
    # As pid 1 of its namespace, `sleep` has no SIGTERM handler, so the kernel drops the
    # signal; linx must not wait for ever, nor kill before the grace is over.
    option = [] if grace is None else ["--stop-grace", str(grace)]
    expected = STOP_GRACE if grace is None else grace
    with running_cli(*option, "--ns", "pid", "--", "/bin/sleep", "60") as proc:
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=expected + 10) == 128 + signal.SIGKILL
        assert time.monotonic() - sent >= expected - 0.5
        assert proc.stderr is not None and "Signaled(signum=9)" in proc.stderr.read()


@pytest.mark.parametrize("bad", ["soon", "-1", "inf", "nan"])
def test_run_refuses_a_bad_stop_grace_naming_it(bad: str) -> None:
    done = linx_cli("run", "--stop-grace", bad, "--", "/bin/true")
    assert done.returncode == 2
    assert "--stop-grace" in done.stderr and repr(bad) in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "bad",
    ["²:0:1", "9" * 5000 + ":0:1", "\u0663:0:1"],
    ids=["superscript", "5000-digits", "arabic-indic-digit"],
)
def test_run_refuses_an_id_map_int_cannot_read_with_exit_2(bad: str) -> None:
    # str.isdigit() takes "²", and int() refuses over 4300 digits: both were tracebacks.
    # int() reads "\u0663" (ARABIC-INDIC DIGIT THREE) as 3: a map line is ASCII digits only.
    done = linx_cli("run", "--uid-map", bad, "--", "/bin/true")
    assert done.returncode == 2, done.stderr
    assert "--uid-map" in done.stderr and "Traceback" not in done.stderr


def test_run_searches_a_relative_path_entry_from_the_workloads_directory(
    tmp_path: Path,
) -> None:
    # As `env -C DIR PATH=bin tool` does: execvp runs there, so "bin" is DIR/bin, not ours
    workdir, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    for base, word in ((workdir, "right"), (elsewhere, "wrong")):
        (base / "bin").mkdir(parents=True)
        tool = base / "bin" / "tool"
        tool.write_text(f"#!/bin/sh\necho {word}\n")
        tool.chmod(0o755)
    (tmp_path / "empty").mkdir()
    for caller_dir in (tmp_path / "empty", elsewhere):
        done = linx_cli(
            "run", "--cwd", str(workdir), "--env", "PATH=bin", "--", "tool", cwd=str(caller_dir)
        )
        assert (done.returncode, done.stdout) == (0, "right\n"), (caller_dir, done.stderr)


def test_run_names_the_path_a_failed_execve_or_chdir_was_given(tmp_path: Path) -> None:
    # A bare ENOENT does not say which path is missing: the command, its #! interpreter?
    script = tmp_path / "script"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    done = linx_cli("run", "--", str(script))
    assert done.returncode == 125, done.stderr
    assert f"process execve '{script}' failed: ENOENT" in done.stderr, done.stderr
    missing = tmp_path / "missing"
    done = linx_cli("run", "--cwd", str(missing), "--", "/bin/true")
    assert done.returncode == 125, done.stderr
    assert f"process chdir '{missing}' failed: ENOENT" in done.stderr, done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT], ids=["INT", "QUIT"])
def test_run_passes_on_a_sigint_or_sigquit_sent_with_kill(signum: int) -> None:
    # A supervisor's or Popen.send_signal's SIGINT: no terminal sent it to the workload.
    with running_cli("--", "/bin/sleep", "60") as proc:
        proc.send_signal(signum)
        expected = -signal.SIGINT if signum == signal.SIGINT else 128 + signal.SIGQUIT
        assert proc.wait(timeout=10) == expected


def test_run_leaves_a_terminals_ctrl_c_to_the_terminal(tmp_path: Path) -> None:
    # The terminal sends Ctrl-C to its whole foreground process group, the workload
    # included: linx must not pass on its own copy too (the workload would get two).
    counted, armed = tmp_path / "count", tmp_path / "armed"
    workload = f"trap 'echo INT >> {counted}' INT; touch {armed}; while :; do sleep 0.05; done"
    master, slave = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    argv = [sys.executable, "-m", "linx", "run", "--", "/bin/sh", "-c", workload]
    # setsid --ctty: linx leads a session whose controlling terminal is the pty
    proc = subprocess.Popen(
        ["setsid", "--ctty", *argv], stdin=slave, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    try:
        assert wait_until(armed.exists)
        os.write(master, b"\x03")
        assert wait_until(counted.exists)
        time.sleep(0.5)  # time for a second copy, were one passed on
        assert counted.read_text().split() == ["INT"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def linx_cli_redirected(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`linx ARGS` started by a shell with `redirect` applied (`2>&-`, say), stdout captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script = f'exec "$@" {redirect}'
    return subprocess.run(
        ["/bin/sh", "-c", script, "sh", sys.executable, "-m", "linx", *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["run", "--events", "--", "/bin/echo", "out"], 0),
        (["run", "--", "/nonexistent"], 125),
        (["run", "--", "linx-no-such-command"], 127),
        (["run", "--stop-grace", "soon", "--", "/bin/echo", "out"], 2),
        (["run", "--env", "K", "--", "/bin/echo", "out"], 2),
    ],
    ids=["events", "execve-failed", "not-found", "argparse-usage", "own-usage"],
)
def test_run_with_stderr_closed_writes_nothing_of_its_own_to_stdout(
    args: list[str], status: int
) -> None:
    # Python leaves sys.stderr None then, and print(file=None) writes to stdout: the events,
    # the errors and argparse's usage went into the workload's output.
    done = linx_cli_redirected("2>&-", *args)
    assert done.returncode == status
    assert done.stdout == ("out\n" if status == 0 else ""), done.stdout


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["run", "--", "/nonexistent"], 125),
        (["run", "--", "linx-no-such-command"], 127),
        (["run", "--env", "K", "--", "/bin/true"], 2),
        (["run", "--events", "--", "/bin/sh", "-c", "exit 3"], 3),
    ],
    ids=["execve-failed", "not-found", "usage", "events"],
)
def test_run_exits_with_its_own_status_when_stderr_cannot_be_written(
    args: list[str], status: int
) -> None:
    # A full disk, or a reader that went away: the message is lost, the status must not be
    # (it was a traceback's 1, which reads as the workload's own).
    done = linx_cli_redirected("2>/dev/full", *args)
    assert done.returncode == status


@pytest.mark.parametrize("redirect", [">&-", "2>&-"], ids=["stdout-closed", "stderr-closed"])
def test_run_ends_by_sigint_with_a_standard_stream_closed(redirect: str) -> None:
    # It flushed sys.stdout and sys.stderr first, which are None then: a traceback, exit 1.
    done = linx_cli_redirected(redirect, "run", "--", "/bin/sh", "-c", "kill -INT $$")
    assert done.returncode == -signal.SIGINT


def test_run_names_a_command_found_in_path_that_may_not_be_executed(tmp_path: Path) -> None:
    # It was "command not found" (127) for a file that is there: a script not made
    # executable. execvp fails with EACCES for it, and env and a shell say so (126).
    (tmp_path / "tool").write_text("#!/bin/sh\necho ran\n")
    done = linx_cli("run", "--env", f"PATH=/nonexistent:{tmp_path}", "--", "tool")
    assert done.returncode == 125, done.stderr
    assert f"process execve '{tmp_path / 'tool'}' failed: EACCES" in done.stderr, done.stderr
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "tool").write_text("#!/bin/sh\necho ran\n")
    (tmp_path / "later" / "tool").chmod(0o755)
    path = f"PATH={tmp_path}:{tmp_path / 'later'}"
    found = linx_cli("run", "--env", path, "--", "tool")  # an executable one later wins
    assert (found.returncode, found.stdout) == (0, "ran\n"), found.stderr


def test_run_without_its_agent_program_exits_125_naming_it() -> None:
    # A broken install (or a wrong $LINX_AGENT): it was a traceback and exit 1.
    done = linx_cli("run", "--", "/bin/true", env={"LINX_AGENT": "/nonexistent/linx-agent"})
    assert done.returncode == 125, done.stderr
    assert "/nonexistent/linx-agent" in done.stderr and "Traceback" not in done.stderr


def test_run_says_a_namespace_limit_was_reached_when_clone_fails_with_enospc() -> None:
    # "No space left on device" is the kernel's word for it. The limit is set to 0 in a user
    # namespace of the test's own, so the host's stays as it is.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script = 'echo 0 > /proc/sys/user/max_pid_namespaces && exec "$@"'
    python = [sys.executable, "-m", "linx", "run", "--ns", "pid", "--", "/bin/true"]
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--fork", "/bin/sh", "-c", script, "sh", *python],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 125, done.stderr
    assert "clone failed: ENOSPC" in done.stderr, done.stderr
    assert "max_*_namespaces" in done.stderr, done.stderr


def test_run_in_a_pipeline_passes_stdio_through_and_ends_with_its_reader() -> None:
    # As a shell user writes it: stdin from a pipe, stdout into one whose reader stops
    # early (the workload dies of SIGPIPE, 141, and linx at once, with no traceback), and
    # with stdin and stdout closed.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    linx = f"{shlex.quote(sys.executable)} -m linx run"
    script = (
        f"echo hi | {linx} -- /bin/cat; echo cat=$?; "
        f"{linx} -- /usr/bin/yes | head -1; echo yes=$?; "
        f'{linx} -- /bin/sh -c "exit 3" <&- >&-; echo closed=$?'
    )
    done = subprocess.run(
        ["/bin/bash", "-c", f"set -o pipefail; {script}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.stdout.splitlines() == ["hi", "cat=0", "y", "yes=141", "closed=3"], done.stderr
    assert done.stderr == ""


def test_run_help_says_only_the_standard_streams_reach_the_workload() -> None:
    # A shell user expects 3<file or <(...) to reach the command, as with env or unshare.
    done = linx_cli("run", "--help")
    assert "<(...)" in done.stdout and "3<file" in done.stdout, done.stdout
    shell = subprocess.run(
        [
            "/bin/bash",
            "-c",
            f"{shlex.quote(sys.executable)} -m linx run -- /bin/sh -c 'cat <&3' 3</dev/null",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert shell.returncode != 0, "fd 3 reached the workload: the help is out of date"


def test_run_help_says_a_workload_starts_with_every_signal_at_its_default() -> None:
    # Under nohup (SIGHUP ignored) env and unshare pass the ignored SIGHUP on; linx does not.
    assert "nohup" in linx_cli("run", "--help").stdout
    done = subprocess.run(
        [
            "nohup",
            sys.executable,
            "-m",
            "linx",
            "run",
            "--",
            "/bin/grep",
            "SigIgn",
            "/proc/self/status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdin=subprocess.DEVNULL,
    )
    assert done.stdout.split() == ["SigIgn:", "0" * 16], "the help is out of date"
