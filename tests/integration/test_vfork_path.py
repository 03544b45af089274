"""The vfork path: an `auto_proceed` child made with clone(CLONE_VM | CLONE_VFORK).

Every scenario runs in a fresh interpreter (the agent reads LINX_AGENT_NO_VFORK from the
environment the launcher started with) once on each path, against the same expectations:
what Python sees must not depend on the path. strace shows which clone the agent made.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from linx import _launcher
from tests.conftest import NOBODY, ROOT, SPAWN_PATHS, build_helper, run_python, spawn_path_env
from tests.integration.test_lifecycle import stalled_listener

# The workload reports what it sees, then holds until its stdin closes, so that the host
# can look at it in /proc while it runs.
REPORT_AND_HOLD = ["/bin/sh", "-c", "id -u; id -g; echo $$; echo --; exec cat >/dev/null"]

# Runs one spawn with the options in OPTIONS; prints a JSON summary of what Python saw.
SCENARIO = """
import ctypes, json, os, linx

options = json.loads(OPTIONS)
argv = options.pop("argv")
if options.pop("drop_setfcap", False):
    # out of the bounding set: the launcher and agents linx starts from here lack it
    PR_CAPBSET_DROP, CAP_SETFCAP = 24, 31
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_SETFCAP, 0, 0, 0) == 0
in_r, in_w = os.pipe()
out_r, out_w = os.pipe()
session = linx.spawn(argv, stdio={"stdin": in_r, "stdout": out_w}, auto_proceed=True, **options)
os.close(in_r)
os.close(out_w)
events = []
while not events or not isinstance(events[-1], (linx.Running, linx.Exited, linx.Failed)):
    events.append(session.events.get(timeout=20))
host = {}
out = b""
if isinstance(events[-1], linx.Running):
    while not out.endswith(b"--\\n"):
        chunk = os.read(out_r, 4096)
        assert chunk, out
        out += chunk
    pid = session.info().host_pid
    for name in ("uid_map", "gid_map", "setgroups"):
        with open(f"/proc/{pid}/{name}") as f:
            host[name] = f.read().split()
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    host["uid"] = int(fields["Uid"].split()[1])
    host["gid"] = int(fields["Gid"].split()[1])
os.close(in_w)
while chunk := os.read(out_r, 4096):
    out += chunk
while not isinstance(events[-1], (linx.Exited, linx.Signaled, linx.Failed)):
    events.append(session.events.get(timeout=20))
end = events[-1]
print(json.dumps({
    "events": [type(e).__name__ for e in events],
    "failed": [end.error.stage, end.error.errno] if isinstance(end, linx.Failed) else None,
    "child_pid": session.info().child_pid,
    "out": out.decode().split(),
    "host": host,
}))
session.close()
"""


def python_env(path: str) -> dict[str, str]:
    """The environment of a fresh interpreter importing this checkout's linx, its agent
    cloning on `path` (of SPAWN_PATHS)."""
    env = {**os.environ, **spawn_path_env(path)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def run_scenario(path: str, options: dict[str, object], user: int | None = None) -> dict[str, Any]:
    code = f"OPTIONS = {json.dumps(options)!r}\n" + textwrap.dedent(SCENARIO)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=python_env(path),
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_self_map_makes_the_workload_root_inside_and_itself_outside(path: str) -> None:
    uid, gid = os.geteuid(), os.getegid()
    result = run_scenario(
        path,
        {
            "argv": REPORT_AND_HOLD,
            "namespaces": ["user"],
            "uid_map": [[0, uid, 1]],
            "gid_map": [[0, gid, 1]],
            "setgroups": "deny",
        },
    )
    assert result["events"] == ["Ready", "Running", "Exited"]
    assert result["out"][:2] == ["0", "0"]  # id -u, id -g inside
    assert result["host"] == {
        "uid_map": ["0", str(uid), "1"],
        "gid_map": ["0", str(gid), "1"],
        "setgroups": ["deny"],
        "uid": uid,
        "gid": gid,
    }


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_unprivileged_self_map(path: str, nobody_python: None) -> None:
    result = run_scenario(
        path,
        {
            "argv": REPORT_AND_HOLD,
            "namespaces": ["user", "pid", "mount", "uts", "ipc"],
            "uid_map": [[0, NOBODY, 1]],
            "gid_map": [[0, NOBODY, 1]],
            "hostname": "inside",
        },
        user=NOBODY,
    )
    assert result["events"] == ["Ready", "Running", "Exited"]
    assert result["out"] == ["0", "0", "1", "--"]
    assert result["child_pid"] == 1
    host = result["host"]
    assert (host["uid_map"], host["uid"], host["gid"]) == (["0", str(NOBODY), "1"], NOBODY, NOBODY)


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_map_the_child_cannot_write_itself_still_works(path: str) -> None:
    result = run_scenario(
        path, {"argv": REPORT_AND_HOLD, "namespaces": ["user"], "uid_map": [[0, 1000, 1]]}
    )
    assert result["events"] == ["Ready", "Running", "Exited"]
    assert result["out"][0] == "65534"  # our uid is not mapped in there
    assert result["host"]["uid_map"] == ["0", "1000", "1"]


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_pid_namespace_child_is_pid_one(path: str) -> None:
    result = run_scenario(path, {"argv": REPORT_AND_HOLD, "namespaces": ["pid", "mount"]})
    assert result["events"] == ["Ready", "Running", "Exited"]
    assert result["child_pid"] == 1
    assert result["out"][2] == "1"  # $$


@pytest.mark.parametrize("path", SPAWN_PATHS)
@pytest.mark.parametrize(
    ("options", "stage"),
    [
        ({"argv": ["/nonexistent/linx-workload"]}, "execve"),
        ({"argv": REPORT_AND_HOLD, "cwd": "/nonexistent/linx-cwd"}, "chdir"),
        (
            {
                "argv": ["/nonexistent/linx-workload"],
                "namespaces": ["user", "pid"],
                "uid_map": [[0, os.geteuid(), 1]],
                "gid_map": [[0, os.getegid(), 1]],
            },
            "execve",
        ),
    ],
    ids=["execve", "chdir", "execve-in-userns"],
)
def test_pre_exec_failure_is_an_error_and_never_running(
    path: str, options: dict[str, object], stage: str
) -> None:
    result = run_scenario(path, options)
    assert result["events"] == ["Ready", "Failed"]
    assert result["failed"] == [stage, errno.ENOENT]


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_map_the_kernel_refuses_fails_at_its_stage(path: str) -> None:
    # Mapping host uid 0 needs CAP_SETFCAP (user_namespaces(7)), whether the child writes
    # its own map or the agent writes it from outside.
    options = {"argv": ["/bin/true"], "namespaces": ["user"], "uid_map": [[0, 0, 1]]}
    result = run_scenario(path, {**options, "drop_setfcap": True})
    assert result["events"] == ["Failed"]
    assert result["failed"] == ["uid_map", errno.EPERM]


SIGNAL_WHILE_STARTING = """
import json, signal, sys, linx
session = linx.spawn(
    ["/bin/sleep", "30"], stdio={"stdout": ("connect_unix", PATH)}, auto_proceed=True
)
session.signal(signal.SIGTERM)
print(session.info().stage, flush=True)
sys.stdin.readline()  # the test has let the agent's connect through
events = [session.events.get(timeout=20) for _ in range(3)]
print(json.dumps([[type(e).__name__, getattr(e, "signum", None)] for e in events]))
"""


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_signal_sent_before_the_clone_is_delivered_after_running(path: str) -> None:
    # The agent is held in its host-side connect, before the clone, while the signal goes.
    with stalled_listener() as stall:
        code = f"PATH = {stall.path!r}\n" + textwrap.dedent(SIGNAL_WHILE_STARTING)
        with subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=python_env(path),
            cwd="/",
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            assert proc.stdout.readline().strip() == "starting"
            stall.release()
            out, _ = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0
    assert json.loads(out) == [["Ready", None], ["Running", None], ["Signaled", signal.SIGTERM]]


# --- which clone the agent made ---------------------------------------------------------

STRACE_CLONES = ["strace", "-f", "-qq", "-e", "trace=clone,clone3", "-e", "signal=none"]
STRACED = """
import linx, os
session = linx.spawn(["/bin/true"], **OPTIONS)
if not OPTIONS.get("auto_proceed"):
    assert isinstance(session.events.get(timeout=20), linx.Ready)
    session.proceed()
print(session.wait(20))
"""

SELF_MAPS = {
    "namespaces": ["user", "pid"],
    "uid_map": [(0, os.geteuid(), 1)],
    "gid_map": [(0, os.getegid(), 1)],
}


def _run_traced(strace: list[str], path: str, code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter under `strace` (which follows its every process)."""
    env = python_env(path)
    # LeakSanitizer cannot run under ptrace; the other sanitizers can
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    return subprocess.run(
        [*strace, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
    )


@pytest.mark.parametrize(
    ("options", "path", "vforked"),
    [
        ({"auto_proceed": True}, "vfork", True),
        ({"auto_proceed": True, **SELF_MAPS}, "vfork", True),
        ({"auto_proceed": True, **SELF_MAPS}, "fork", False),
        ({**SELF_MAPS}, "vfork", False),
        ({"auto_proceed": True, **SELF_MAPS, "uid_map": [(0, 1000, 1)]}, "vfork", False),
        ({"auto_proceed": True, **SELF_MAPS, "setgroups": "allow"}, "vfork", False),
        ({"auto_proceed": True, "namespaces": ["time", "cgroup"]}, "vfork", True),
    ],
    ids=[
        "plain",
        "self-maps",
        "no-vfork-hook",
        "parked",
        "foreign-map",
        "setgroups-allow",
        "time-cgroup",
    ],
)
def test_the_agent_vforks_exactly_when_it_should(
    options: dict[str, object], path: str, vforked: bool, tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    code = f"OPTIONS = {options!r}\n" + textwrap.dedent(STRACED)
    done = _run_traced([*STRACE_CLONES, "-o", str(trace)], path, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Exited(code=0)"
    with open(trace) as f:
        # the agent's is the only clone with a pidfd: Python's threads and posix_spawn
        # take none
        clones = [line for line in f if "CLONE_PIDFD" in line]
    assert len(clones) == 1, clones
    flags = set(re.findall(r"CLONE_\w+", clones[0]))
    assert ({"CLONE_VM", "CLONE_VFORK"} <= flags) == vforked, clones[0]


# --- a child killed on its way into execve ------------------------------------------------

# Every child dies on entry to execve (a seccomp filter the agent runs under, from
# helpers/kill_at_syscall.c), after its exec marker: it closes the report pipe as a
# successful exec would, and dies a moment later. At full speed, with no tracer to slow the
# agent down, that moment is a race the agent must not lose.
KILLED_AT_EXEC = """
import collections, json, linx
seen = collections.Counter()
for _ in range(40):
    session = linx.spawn(["/usr/bin/sleep", "5"], auto_proceed=AUTO)
    events = []
    if not AUTO:
        events.append(session.events.get(timeout=20))
        session.proceed()
    try:
        session.wait(20)
    except linx.ProcessError:
        pass
    events += [session.events.get_nowait() for _ in range(session.events.qsize())]
    seen[json.dumps([[type(e).__name__, getattr(getattr(e, "error", None), "stage", None)]
                     for e in events])] += 1
print(json.dumps(dict(seen)))
"""


@pytest.fixture(scope="module")
def kill_at_syscall(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_helper(tmp_path_factory, "kill_at_syscall")


@pytest.mark.parametrize(
    ("path", "auto"),
    [("vfork", True), ("fork", True), ("fork", False)],
    ids=["vfork", "fork-auto-proceed", "fork-proceed"],
)
def test_a_child_killed_on_its_way_into_execve_never_reports_running(
    path: str, auto: bool, kill_at_syscall: Path
) -> None:
    env = {
        **spawn_path_env(path),
        "LINX_REAL_AGENT": _launcher.agent_path(),
        "LINX_KILL_SYSCALL": "execve",
        "LINX_AGENT": str(kill_at_syscall),
    }
    done = run_python(f"AUTO = {auto}\n" + textwrap.dedent(KILLED_AT_EXEC), env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        json.dumps([["Ready", None], ["Failed", "exec_outcome"]]): 40
    }


# --- a workload that renames itself and exits at once -----------------------------------

# A workload done before its agent looks at it (its exec marker, then the report pipe's
# EOF) has no memory left by then, so what tells the agent it exec'd cannot be its name:
# a workload may take any name, the very one the child had before execve among them.
RENAMED_AND_GONE = """
import collections, json, linx
seen = collections.Counter()
for _ in range(40):
    session = linx.spawn([PROGRAM, NAME, "7"], auto_proceed=AUTO)
    if not AUTO:
        session.events.get(timeout=20)
        session.proceed()
    try:
        outcome = repr(session.wait(20))
    except linx.ProcessError as error:
        outcome = f"{error.stage}/{error.errno}"
    seen[outcome] += 1
    session.close()
print(json.dumps(dict(seen)))
"""


@pytest.fixture(scope="module")
def rename_and_exit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_helper(tmp_path_factory, "rename_and_exit", "-static")


@pytest.mark.parametrize("name", ["linx/pre-exec", "linx-agent"])
@pytest.mark.parametrize(
    ("path", "auto"),
    [("vfork", True), ("fork", True), ("fork", False)],
    ids=["vfork", "fork-auto-proceed", "fork-proceed"],
)
def test_a_workload_that_renames_itself_and_exits_at_once_is_reported_as_exited(
    path: str, auto: bool, name: str, rename_and_exit: Path
) -> None:
    code = f"AUTO = {auto}\nPROGRAM = {str(rename_and_exit)!r}\nNAME = {name!r}\n"
    code += textwrap.dedent(RENAMED_AND_GONE)
    done = run_python(code, env=spawn_path_env(path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"Exited(code=7)": 40}
