"""A caller whose environment is unusual: limits, a seccomp filter, a missing /dev/null.

Each runs in a fresh interpreter, since what it changes (a seccomp filter, a resource limit)
would stay with the test process, and with the launcher it starts on first use.
"""

from __future__ import annotations

import pytest

from tests.conftest import SPAWN_PATHS, run_python, spawn_path_env

# What a container runtime's seccomp profile does to a syscall newer than it knows: ENOSYS,
# so that the C library falls back. libseccomp (through ctypes, as `linx.seccomp` uses it),
# with TSYNC so that the reactor thread is filtered too. `block_clone3()` then the probe.
CLONE3_ENOSYS = """
import ctypes, errno, os
import linx

def block_clone3():
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = lib.seccomp_release.argtypes = [ctypes.c_void_p]
    SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_FLTATR_CTL_TSYNC = 0x7FFF0000, 0x00050000, 4
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    assert lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) == 0
    nr = lib.seccomp_syscall_resolve_name(b"clone3")
    assert lib.seccomp_rule_add(ctx, SCMP_ACT_ERRNO | errno.ENOSYS, nr, 0) == 0
    assert lib.seccomp_load(ctx) == 0
    lib.seccomp_release(ctx)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(nr, 0, 0) == -1 and ctypes.get_errno() == errno.ENOSYS

block_clone3()
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


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_clone3_failing_with_enosys_under_a_real_seccomp_filter_falls_back(path: str) -> None:
    # A container runtime's profile may not know clone3 and answer ENOSYS: the agent's
    # legacy clone must then make every namespace kind, parked at the checkpoint or not.
    result = run_python(CLONE3_ENOSYS, env=spawn_path_env(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
