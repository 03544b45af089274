"""A caller whose environment is unusual: limits, a seccomp filter, a missing /dev/null.

Each runs in a fresh interpreter, since what it changes (a seccomp filter, a resource limit)
would stay with the test process, and with the launcher it starts on first use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import linx
from linx import _launcher
from tests.conftest import ROOT, SPAWN_PATHS, expect, run_python, spawn_path_env

# `refuse(syscall, answer)`: that syscall fails with errno `answer` in this process, its
# threads (TSYNC: the reactor's too) and all it starts, or only when `flag` is set in its
# argument `arg`. libseccomp through ctypes, as `linx.seccomp` uses it.
SECCOMP = """
import ctypes, errno

class _Cmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("mask", ctypes.c_uint64), ("value", ctypes.c_uint64)]

def refuse(syscall, answer, arg=None, flag=0):
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_Cmp)]
    lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = [ctypes.c_void_p]
    allow, fail_with, tsync, masked_eq = 0x7FFF0000, 0x00050000, 4, 7
    ctx = lib.seccomp_init(allow)
    assert lib.seccomp_attr_set(ctx, tsync, 1) == 0
    nr = lib.seccomp_syscall_resolve_name(syscall.encode())
    when = (0, None) if arg is None else (1, (_Cmp * 1)(_Cmp(arg, masked_eq, flag, flag)))
    assert lib.seccomp_rule_add_array(ctx, fail_with | answer, nr, *when) == 0
    assert lib.seccomp_load(ctx) == 0
    lib.seccomp_release(ctx)
"""

# What a container runtime's seccomp profile does to a syscall newer than it knows: ENOSYS,
# so that the C library falls back.
CLONE3_ENOSYS = (
    SECCOMP
    + """
import os
import linx

refuse("clone3", errno.ENOSYS)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.syscall(435, 0, 0) == -1 and ctypes.get_errno() == errno.ENOSYS  # clone3
uid, gid = os.getuid(), os.getgid()
maps = dict(uid_map=[(0, uid, 1)], gid_map=[(0, gid, 1)], uid=0, gid=0)
# exits 0 only under a filter: the workload (so its agent too) has the caller's
probe = ["/bin/grep", "-q", "^Seccomp:[[:space:]]*2", "/proc/self/status"]
for kinds in [[kind] for kind in linx.Namespace] + [list(linx.Namespace)]:
    options = maps if "user" in kinds else {}
    parked = linx.spawn(probe, namespaces=kinds, **options)
    ready = parked.events.get(timeout=30)
    assert isinstance(ready, linx.Ready), (kinds, ready)
    parked.proceed()
    assert parked.wait(30) == linx.Exited(0), kinds
    released = linx.spawn(probe, namespaces=kinds, auto_proceed=True, **options)
    assert released.wait(30) == linx.Exited(0), kinds
print("ok")
"""
)


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_clone3_failing_with_enosys_under_a_real_seccomp_filter_falls_back(path: str) -> None:
    # A container runtime's profile may not know clone3 and answer ENOSYS: the agent's
    # legacy clone must then make every namespace kind, parked at the checkpoint or not.
    result = run_python(CLONE3_ENOSYS, env=spawn_path_env(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def run_code(
    code: str, *args: str, under: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter importing this checkout's linx, with `args` as its
    `sys.argv[1:]`, run by the command `under` if given (`unshare ...`)."""
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT / "src")}
    command = [*(under or []), sys.executable, "-c", textwrap.dedent(code), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=full_env, cwd="/"
    )


def run_in_new_pid_namespace(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` as init of a new pid namespace whose /proc is still this one's
    (`unshare --pid --fork` without `--mount-proc`)."""
    return run_code(code, *args, under=["unshare", "--pid", "--fork"])


# A spawn with maps in the new pid namespace: its workload's uid_map and uid, then the Ready
# pid. A given argv[1] is the pid its child is to get: the one before it goes to
# ns_last_pid, so the next fork takes it, unless the launcher's fork of the next spare agent
# comes in between (asked for, it may be forked later): then again.
SPAWN_WITH_MAPS = """
import sys
import linx
target = int(sys.argv[1]) if len(sys.argv) > 1 else None
linx.spawn(["/bin/true"], auto_proceed=True).wait(30)
for _ in range(20):
    if target is not None:
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(target - 1))
    s = linx.spawn(["/bin/sh", "-c", "echo $(cat /proc/self/uid_map) $(id -u)"],
                   namespaces=["user"], uid_map=[(0, 0, 1)], gid_map=[(0, 0, 1)],
                   stdio={"stdout": sys.stdout})
    ready = s.events.get(timeout=30)
    if target is None or getattr(ready, "host_pid", None) == target:
        break
    s.close()
assert isinstance(ready, linx.Ready), ready
s.proceed()
assert s.wait(30) == linx.Exited(0)
print(ready.host_pid)
"""


def test_a_caller_whose_proc_is_of_another_pid_namespace_gets_its_maps_written() -> None:
    # A caller in a pid namespace that kept the host's /proc (a workload of a session with
    # a pid namespace): there the agent's pid for its child names another process. The
    # maps went to that one's /proc files: `setgroups_file` EPERM for a kernel thread's.
    result = run_in_new_pid_namespace(SPAWN_WITH_MAPS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:4] == ["0", "0", "1", "0"]


def test_the_maps_never_go_to_another_process_that_the_pid_names_in_the_callers_proc() -> None:
    # Worse: a process there with a user namespace still unmapped (here a parked session of
    # ours) took the maps meant for the child, which ran unmapped (uid 65534).
    victim = linx.spawn(["/bin/sleep", "60"], namespaces=["user"])
    try:
        ready = expect(victim, linx.Ready)
        result = run_in_new_pid_namespace(SPAWN_WITH_MAPS, str(ready.host_pid))
        assert result.returncode == 0, result.stderr
        *theirs, uid, child_pid = result.stdout.split()
        assert int(child_pid) == ready.host_pid, "the set-up missed the pid it aimed at"
        assert Path(f"/proc/{ready.host_pid}/uid_map").read_text() == ""
        assert (theirs, uid) == (["0", "0", "1"], "0")
    finally:
        victim.close()


def test_a_caller_without_dev_null_is_told_so_and_spawns_once_it_is_back() -> None:
    # A chroot or a mount namespace with an empty /dev: the launcher's stdin and stdout are
    # /dev/null. posix_spawn, which opened it, named only the program it ran, so the error
    # said the agent program was missing, where reinstalling linx would not help.
    code = """
    import subprocess
    import linx
    try:
        linx.spawn(["/bin/true"], auto_proceed=True)
    except FileNotFoundError as exc:
        assert exc.filename == "/dev/null", exc
        print("told")
    subprocess.run(["umount", "/dev"], check=True)
    print(linx.spawn(["/bin/true"], auto_proceed=True).wait(30))
    """
    script = 'mount -t tmpfs none /dev && exec "$0" "$@"'
    result = run_code(
        code, under=["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["told", "Exited(code=0)"]


def test_an_environment_too_big_to_exec_fails_only_the_spawns_that_inherit_it() -> None:
    # A variable over 128 KiB (MAX_ARG_STRLEN) can reach no program that is exec'd. The
    # launcher was started with this process's whole environment, so the first spawn failed
    # ("Argument list too long: .../linx-agent") even with an env= of its own, which a later
    # one, the launcher running, did not.
    result = run_python(
        """
        import os
        import linx
        os.environ["BIG"] = "x" * 200_000
        print(linx.spawn(["/bin/true"], env={"A": "b"}, auto_proceed=True).wait(30))
        try:
            linx.spawn(["/bin/true"], auto_proceed=True).wait(30)
        except linx.ProcessError as exc:
            print(exc.stage, exc.errno == 7)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["Exited(code=0)", "execve True"]


# The kernel's answers to close_range that linx must get by without, made by a seccomp
# filter: before Linux 5.9 there is none (ENOSYS); 5.9 and 5.10 refuse CLOSE_RANGE_CLOEXEC
# (EINVAL); a container runtime's profile older than the call refuses it (EPERM). The
# workload, parked or not, must start with fds 0, 1 and 2 only.
CLOSE_RANGE_REFUSED = (
    SECCOMP
    + """
import os, sys, time
import linx

CLOSE_RANGE_CLOEXEC = 4
answer = sys.argv[1]
if answer == "EINVAL":
    refuse("close_range", errno.EINVAL, arg=2, flag=CLOSE_RANGE_CLOEXEC)
else:
    refuse("close_range", getattr(errno, answer))

def workload_fds(pid):
    # its dynamic loader holds a file open for a moment: wait until it sleeps
    deadline = time.monotonic() + 10
    while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "S":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))

for options in ({}, {"auto_proceed": True},
                {"namespaces": ["user", "pid"], "uid_map": [(0, 0, 1)], "gid_map": [(0, 0, 1)]}):
    s = linx.spawn(["/bin/sleep", "30"], **options)
    ready = s.events.get(timeout=30)
    assert isinstance(ready, linx.Ready), (options, ready)
    if not options.get("auto_proceed"):
        s.proceed()
    assert isinstance(s.events.get(timeout=30), linx.Running), options
    assert workload_fds(ready.host_pid) == [0, 1, 2], options
    s.close()
print("ok")
"""
)


@pytest.mark.parametrize("path", SPAWN_PATHS)
@pytest.mark.parametrize("answer", ["ENOSYS", "EINVAL", "EPERM"])
def test_a_kernel_or_profile_without_close_range_still_spawns_with_only_stdio(
    answer: str, path: str
) -> None:
    # Every spawn failed (close_range/EINVAL), or every agent died at birth (exit status 1),
    # where the child now marks the fds /proc/self/fd lists one by one.
    result = run_code(CLOSE_RANGE_REFUSED, answer, env=spawn_path_env(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_caller_deeper_than_path_max_spawns_in_its_directory(tmp_path: Path, path: str) -> None:
    # A build tree or nested node_modules can take a directory's path past PATH_MAX (4096),
    # which chdir(2) refuses (ENAMETOOLONG): every spawn that inherited such a directory
    # failed at `chdir`, where a subprocess child simply inherits it.
    code = """
    import os, sys
    import linx
    os.chdir(sys.argv[1])
    for _ in range(25):
        os.mkdir("d" * 200)
        os.chdir("d" * 200)
    here = os.getcwd()
    assert len(here) > 4096
    for options in ({}, {"auto_proceed": True}, {"cwd": here + "//"}):
        r, w = os.pipe()
        s = linx.spawn(["/bin/sh", "-c", "pwd"], stdio={"stdout": w}, **options)
        os.close(w)
        if not options.get("auto_proceed"):
            assert isinstance(s.events.get(timeout=30), linx.Ready)
            s.proceed()
        assert s.wait(30) == linx.Exited(0), options
        with os.fdopen(r) as out:
            assert out.read() == here + "\\n", options
    print("ok")
    """
    result = run_code(code, str(tmp_path), env=spawn_path_env(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# A seccomp profile older than pidfd_send_signal (Linux 5.1) refuses it with EPERM.
PIDFD_SIGNAL_REFUSED = (
    SECCOMP
    + """
import signal
import linx

refuse("pidfd_send_signal", errno.EPERM)
termed = linx.spawn(["/bin/sleep", "30"], auto_proceed=True)
termed.signal(signal.SIGTERM)
print(termed.wait(30))
parked = linx.spawn(["/bin/sleep", "30"])
parked.events.get(timeout=30)
parked.signal(signal.SIGINT)  # buffered: delivered at Running
parked.proceed()
print(parked.wait(30))
closed = linx.spawn(["/bin/sleep", "30"], auto_proceed=True, owner=lambda event: None)
closed.close()
print(closed.exit_reason)
"""
)


def test_signals_reach_the_workload_where_seccomp_refuses_pidfd_send_signal() -> None:
    # Refused, signal() was lost (a NOTICE logged at debug level) and wait() never ended;
    # close() waited out its timeout. The agent has not reaped the child, so its pid is
    # still the child's, and kill(2) is as safe as the pidfd there.
    result = run_python(PIDFD_SIGNAL_REFUSED, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Signaled(signum=15)",
        "Signaled(signum=2)",
        "('signaled', 9)",
    ], result.stdout


# The agent program behind a filter of its own: a caller whose threads and posix_spawn use
# clone3 could not even start one under a filter that refuses it with EPERM.
CLONE3_EPERM_AGENT = (
    SECCOMP
    + """
import os, sys
refuse("clone3", errno.EPERM)
os.execv(os.environ["LINX_REAL_AGENT"], sys.argv)
"""
)

CLONE3_EPERM_SPAWNS = """
import os
import linx

uid, gid = os.getuid(), os.getgid()
maps = dict(uid_map=[(0, uid, 1)], gid_map=[(0, gid, 1)])
for kinds, options in [([], {}), (["pid", "mount"], {}), (["user", "pid"], maps)]:
    parked = linx.spawn(["/bin/true"], namespaces=kinds, **options)
    assert isinstance(parked.events.get(timeout=30), linx.Ready), kinds
    parked.proceed()
    assert parked.wait(30) == linx.Exited(0), kinds
print("ok")
"""


def test_clone3_refused_with_eperm_as_old_container_profiles_do_falls_back(
    tmp_path: Path,
) -> None:
    # Docker's profiles before 20.10 answered EPERM for clone3, which they did not know:
    # every parked spawn failed with clone/EPERM, where the legacy clone would have done.
    wrapper = tmp_path / "agent"
    wrapper.write_text(f"#!{sys.executable}\n{CLONE3_EPERM_AGENT}")
    wrapper.chmod(0o755)
    env = {"LINX_AGENT": str(wrapper), "LINX_REAL_AGENT": str(_launcher.agent_path())}
    result = run_python(CLONE3_EPERM_SPAWNS, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
