"""Namespaces, checked from the host through /proc while the child is parked or running."""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import linx
from tests.conftest import ROOT, Pipe, capture_stdout, expect, run_python, wait_until

Factory = Callable[..., linx.Session]

# spawn(namespaces=...) name -> /proc/<pid>/ns/<file>
NS_FILES = {
    "net": "net",
    "mount": "mnt",
    "pid": "pid",
    "uts": "uts",
    "ipc": "ipc",
    "user": "user",
    "cgroup": "cgroup",
    "time": "time",
}


def ns_links(pid: int | str) -> dict[str, str]:
    """The namespace identities (`net:[4026531840]`) of a process, by /proc ns file name,
    with `time_for_children`: the time namespace it enters at execve."""
    files = [*NS_FILES.values(), "time_for_children"]
    return {name: os.readlink(f"/proc/{pid}/ns/{name}") for name in files}


def changed(theirs: dict[str, str], ours: dict[str, str]) -> set[str]:
    return {name for name in theirs if theirs[name] != ours[name]}


# A parked child already has its new namespaces, except two that it makes itself so that the
# caller can shape them at the checkpoint: a time namespace is entered at execve (its
# offsets can still be written while the child is parked: it shows as time_for_children),
# and a cgroup namespace is made at release, rooted where the child was moved meanwhile.
def new_at_ready(namespace: str) -> set[str]:
    return {"time": {"time_for_children"}, "cgroup": set()}.get(namespace, {NS_FILES[namespace]})


def new_when_running(namespace: str) -> set[str]:
    return {"time", "time_for_children"} if namespace == "time" else {NS_FILES[namespace]}


@pytest.mark.parametrize("namespace", list(NS_FILES))
def test_spawn_with_one_namespace_changes_only_that_namespace(
    session_factory: Factory, namespace: str
) -> None:
    ours = ns_links("self")
    session = session_factory(["/bin/sleep", "30"], namespaces=[namespace])
    ready = expect(session, linx.Ready)
    # parked: it cannot exit under us
    assert changed(ns_links(ready.host_pid), ours) == new_at_ready(namespace)
    session.proceed()
    expect(session, linx.Running)
    assert changed(ns_links(ready.host_pid), ours) == new_when_running(namespace)
    session.close()


def test_spawn_with_all_eight_namespaces_changes_all_of_them(session_factory: Factory) -> None:
    ours = ns_links("self")
    session = session_factory(["/bin/sleep", "30"], namespaces=list(NS_FILES))
    ready = expect(session, linx.Ready)
    assert changed(ns_links(ready.host_pid), ours) == set.union(*map(new_at_ready, NS_FILES))
    session.proceed()
    expect(session, linx.Running)
    theirs = ns_links(ready.host_pid)
    assert changed(theirs, ours) == set.union(*map(new_when_running, NS_FILES))
    assert len({theirs[name] for name in NS_FILES.values()}) == 8
    session.close()


def test_time_offsets_written_at_the_checkpoint_apply_to_the_workload(
    session_factory: Factory,
) -> None:
    day = 86400
    session, output = capture_stdout(
        session_factory,
        ["/bin/cat", "/proc/uptime"],
        namespaces=["time"],
        at_checkpoint=lambda ready: Path(f"/proc/{ready.host_pid}/timens_offsets").write_text(
            f"boottime {day} 0\nmonotonic {day} 0\n"
        ),
    )
    assert session.wait(timeout=10) == linx.Exited(code=0)
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert float(output.split()[0]) >= host_uptime + day - 60


def _cgroup2_mount() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount_point, kind = line.split()[:3]
        if kind == "cgroup2":
            return Path(mount_point)
    pytest.fail("no cgroup2 hierarchy is mounted")


def test_a_cgroup_namespace_is_rooted_where_the_child_was_moved_at_the_checkpoint(
    session_factory: Factory,
) -> None:
    # As runc does it: a container sees its own cgroup as "/", never the hierarchy above.
    cgroup = _cgroup2_mount() / f"linx-test-{os.getpid()}"
    cgroup.mkdir()
    try:
        session, output = capture_stdout(
            session_factory,
            ["/bin/cat", "/proc/self/cgroup"],
            namespaces=["cgroup"],
            at_checkpoint=lambda ready: (cgroup / "cgroup.procs").write_text(str(ready.host_pid)),
        )
        assert session.wait(timeout=10) == linx.Exited(code=0)
    finally:
        # empty unless the test failed with the workload still in it: that goes first
        (cgroup / "cgroup.kill").write_text("1")
        assert wait_until(lambda: (cgroup / "cgroup.procs").read_text() == "")
        cgroup.rmdir()
    unified = [line for line in output.decode().splitlines() if line.startswith("0::")]
    assert unified == ["0::/"], output


def test_namespace_enum_values_are_accepted(session_factory: Factory) -> None:
    ours = ns_links("self")
    session = session_factory(["/bin/true"], namespaces=[linx.Namespace.UTS, linx.Namespace.IPC])
    ready = expect(session, linx.Ready)
    theirs = ns_links(ready.host_pid)
    assert theirs["uts"] != ours["uts"]
    assert theirs["ipc"] != ours["ipc"]
    assert theirs["net"] == ours["net"]


def _interfaces(proc_net_dev: str) -> list[str]:
    return [line.split(":", 1)[0].strip() for line in proc_net_dev.splitlines()[2:] if line]


def test_a_net_namespace_shows_only_lo(session_factory: Factory, pipe: Pipe) -> None:
    host = _interfaces(Path("/proc/net/dev").read_text())
    assert "lo" in host
    session = session_factory(
        ["/bin/cat", "/proc/net/dev"], namespaces=["net"], stdio={"stdout": pipe.write_end}
    )
    pipe.close_write()
    expect(session, linx.Ready)
    session.proceed()
    output = pipe.read_to_eof().decode()
    assert _interfaces(output) == ["lo"]
    assert session.wait(timeout=10) == linx.Exited(code=0)


def test_a_user_namespace_maps_root_inside_to_uid_1000_outside(
    session_factory: Factory, pipe: Pipe
) -> None:
    session = session_factory(
        ["/bin/sh", "-c", "id -u; id -g; exec /bin/sleep 5"],
        namespaces=["user"],
        uid_map=[(0, 1000, 1)],
        gid_map=[(0, 1000, 1)],
        uid=0,
        gid=0,
        stdio={"stdout": pipe.write_end},
    )
    pipe.close_write()
    ready = expect(session, linx.Ready)
    # The agent wrote the maps before Ready.
    assert Path(f"/proc/{ready.host_pid}/uid_map").read_text().split() == ["0", "1000", "1"]
    assert Path(f"/proc/{ready.host_pid}/gid_map").read_text().split() == ["0", "1000", "1"]
    session.proceed()
    expect(session, linx.Running)
    assert pipe.read_lines(2) == ["0", "0"]  # root inside
    status = Path(f"/proc/{ready.host_pid}/status").read_text().splitlines()
    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].split() for line in status}
    assert fields["Uid"] == ["1000"] * 4  # uid 1000 outside (real, effective, saved, fs)
    assert fields["Gid"] == ["1000"] * 4


def test_the_identity_map_of_every_id_is_taken_as_the_kernel_takes_it(
    session_factory: Factory,
) -> None:
    # The initial user namespace's own map, (0, 0, 4294967295): its count is one more than
    # the largest id, and was refused as an id out of range.
    every_id = [(0, 0, 2**32 - 1)]
    assert [tuple(map(int, Path("/proc/self/uid_map").read_text().split()))] == every_id
    session = session_factory(
        ["/bin/true"], namespaces=["user"], uid_map=every_id, gid_map=every_id
    )
    ready = expect(session, linx.Ready)
    for name in ("uid_map", "gid_map"):
        written = Path(f"/proc/{ready.host_pid}/{name}").read_text().split()
        assert written == ["0", "0", str(2**32 - 1)], name
    session.proceed()
    assert session.wait(timeout=10) == linx.Exited(code=0)


@pytest.mark.parametrize(
    "uid_map",
    [
        [(0, 1000, 10), (10, 2000, 5), (15, 1010, 1)],  # ranges that touch on both sides
        [(0, 0, 2**32 - 2)],  # a range of all but one id (every id: the identity map test)
        [(1, 0, 2**32 - 2)],  # ending on the last id inside
    ],
    ids=["touching-ranges", "longest-range", "ending-on-the-last-id"],
)
def test_maps_at_the_edge_of_what_the_kernel_takes_are_written_as_given(
    session_factory: Factory, uid_map: list[tuple[int, int, int]]
) -> None:
    # The Python check refuses overlaps and ranges past the last id before any process; it
    # must not refuse what the kernel itself accepts.
    session = session_factory(["/bin/true"], namespaces=["user"], uid_map=uid_map)
    ready = expect(session, linx.Ready)
    lines = Path(f"/proc/{ready.host_pid}/uid_map").read_text().splitlines()
    assert sorted(tuple(map(int, line.split())) for line in lines) == sorted(uid_map)
    session.proceed()
    assert session.wait(10) == linx.Exited(0)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "allow"),
        ({"setgroups": "deny"}, "deny"),
        ({"uid_map": [(0, 1000, 1)]}, "allow"),
        ({"uid_map": [(0, 1000, 1)], "setgroups": "deny"}, "deny"),
        ({"uid_map": [(0, 1000, 1)], "setgroups": "allow"}, "allow"),
        ({"gid_map": [(0, 1000, 1)], "setgroups": "allow"}, "allow"),
        ({"gid_map": [(0, 1000, 1)]}, "deny"),
    ],
    ids=[
        "default-no-maps",
        "deny-no-maps",
        "default-uid-map-only",
        "deny-uid-map-only",
        "allow-uid-map-only",
        "allow-gid-map",
        "default-gid-map",
    ],
)
def test_setgroups_is_written_when_given_or_with_a_gid_map(
    session_factory: Factory, options: dict[str, object], expected: str
) -> None:
    # Given, it is written also without a gid_map: a caller that writes one at the
    # checkpoint must find the setgroups it asked for. The default goes with a gid_map
    # (the kernel's own default, "allow", stays otherwise).
    session = session_factory(["/bin/true"], namespaces=["user"], **options)
    ready = expect(session, linx.Ready)
    assert Path(f"/proc/{ready.host_pid}/setgroups").read_text().strip() == expected
    if "gid_map" not in options:  # the caller writes it from outside, after setgroups
        Path(f"/proc/{ready.host_pid}/gid_map").write_text("0 1000 1\n")
    session.proceed()
    assert session.wait(10) == linx.Exited(0)


def test_a_caller_whose_real_and_effective_uids_differ_gets_a_user_namespace() -> None:
    # Its agents are not dumpable, so their children's /proc files are not its to write:
    # the default setgroups must not be written where no gid_map needs it (as with a plain
    # `unshare --user`).
    done = run_python(
        """
        import os, linx
        os.seteuid(65534)
        for auto in (True, False):
            session = linx.spawn(["/bin/true"], namespaces=["user"], auto_proceed=auto)
            if not auto:
                assert isinstance(session.events.get(timeout=10), linx.Ready)
                session.proceed()
            print(session.wait(10))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["Exited(code=0)"] * 2, done.stdout


def test_hostname_is_set_in_a_uts_namespace_only(session_factory: Factory, pipe: Pipe) -> None:
    before = socket.gethostname()
    assert before != "box"
    session = session_factory(
        ["/bin/hostname"], namespaces=["uts"], hostname="box", stdio={"stdout": pipe.write_end}
    )
    pipe.close_write()
    ready = expect(session, linx.Ready)
    # sethostname happens before the checkpoint.
    ours = ns_links("self")["uts"]
    assert os.readlink(f"/proc/{ready.host_pid}/ns/uts") != ours
    session.proceed()
    assert pipe.read_to_eof() == b"box\n"
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert socket.gethostname() == before
    assert Path("/proc/sys/kernel/hostname").read_text().strip() == before


def test_uid_gid_and_groups_are_set_in_the_child_as_root_without_a_user_namespace(
    session_factory: Factory,
) -> None:
    session, output = capture_stdout(
        session_factory,
        ["/bin/sh", "-c", "id -u; id -g; id -G"],
        uid=65534,
        gid=65534,
        groups=[65534, 100],
    )
    assert session.wait(timeout=10) == linx.Exited(code=0)
    uid, gid, groups = output.decode().split("\n")[:3]
    assert (uid, gid) == ("65534", "65534")
    assert sorted(groups.split()) == ["100", "65534"]


def test_cwd_is_entered_before_the_ids_change(session_factory: Factory, tmp_path: Path) -> None:
    # chdir comes before setuid (protocol.md, the child's steps): a directory only the
    # caller may enter is still the workload's cwd when it runs as another user, as
    # with `cd private && setpriv --reuid nobody cmd`
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    session, output = capture_stdout(
        session_factory, ["/bin/sh", "-c", "pwd; id -u"], cwd=str(private), uid=65534, gid=65534
    )
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert output.decode().split("\n")[:2] == [str(private), "65534"]


@pytest.mark.parametrize("given", [True, False])
def test_no_new_privs_is_set_in_the_workload_exactly_when_asked(
    session_factory: Factory, given: bool
) -> None:
    # PR_SET_NO_NEW_PRIVS survives execve: the workload's own status shows it
    session, output = capture_stdout(
        session_factory,
        ["/bin/sh", "-c", "grep NoNewPrivs /proc/self/status"],
        no_new_privs=given,
    )
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert output.decode().split() == ["NoNewPrivs:", "1" if given else "0"]


# A root caller with supplementary groups (root, disk, shadow) spawns with other ids.
GROUPS_PROGRAM = """
    import json, os
    import linx

    os.setgroups([0, 6, 42])
    root_map = {"uid_map": [(0, 0, 1)], "gid_map": [(0, 0, 1)], "uid": 0, "gid": 0}
    cases = {
        "uid and gid": {"uid": 65534, "gid": 65534},
        "uid only": {"uid": 65534},
        "gid only": {"gid": 65534},
        "groups given": {"uid": 65534, "gid": 65534, "groups": [100]},
        "same ids": {"uid": 0, "gid": 0},
        "no ids": {},
        "user namespace, setgroups deny": {"namespaces": ["user"], **root_map},
        "user namespace, setgroups allow": {
            "namespaces": ["user"], "setgroups": "allow", **root_map
        },
        "user namespace, foreign map": {
            "namespaces": ["user"], "uid_map": [(0, 100000, 1)], "gid_map": [(0, 100000, 1)],
            "uid": 0, "gid": 0,
        },
    }
    seen = {}
    for name, options in cases.items():
        read_end, write_end = os.pipe()
        session = linx.spawn(["/bin/grep", "^Groups:", "/proc/self/status"],
                             stdio={"stdout": write_end}, auto_proceed=True, **options)
        os.close(write_end)
        assert session.wait(timeout=10) == linx.Exited(code=0)
        seen[name] = os.read(read_end, 4096).decode().split()[1:]
        os.close(read_end)
    print(json.dumps(seen))
"""


def test_a_uid_or_gid_without_groups_drops_the_callers_supplementary_groups() -> None:
    # As runc sets process.user: groups are cleared wherever they can be. Kept when the ids
    # stay the caller's (nothing is dropped). A new user namespace never takes them in (the
    # agent drops them before the clone): unmapped there, they would still open the host's
    # files to the workload, a root caller's group 42 /etc/shadow, say.
    result = run_python(GROUPS_PROGRAM)
    assert result.returncode == 0, result.stderr
    kept = ["0", "6", "42"]
    assert json.loads(result.stdout) == {
        "uid and gid": [],
        "uid only": [],
        "gid only": [],
        "groups given": ["100"],
        "same ids": kept,
        "no ids": kept,
        "user namespace, setgroups deny": [],
        "user namespace, setgroups allow": [],
        "user namespace, foreign map": [],
    }


def test_other_ids_work_where_the_callers_user_namespace_denies_setgroups() -> None:
    # The caller itself runs in a user namespace whose setgroups is "deny" (an `unshare -r`
    # sandbox, say): its groups cannot be dropped there, so they stay, and the spawn works.
    inner = textwrap.dedent(
        """
        import linx
        print(linx.spawn(["/bin/true"], uid=1000, gid=1000, auto_proceed=True).wait(10))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    wide = [(0, 0, 65536)]
    session, output = capture_stdout(
        linx.spawn,
        [sys.executable, "-c", inner],
        namespaces=["user"],
        uid_map=wide,
        gid_map=wide,
        setgroups="deny",
        uid=0,
        gid=0,
        env=env,
        auto_proceed=True,
    )
    assert session.wait(timeout=30) == linx.Exited(code=0)
    assert output == b"Exited(code=0)\n"


def test_env_and_cwd_follow_the_caller_after_the_launcher_started(
    session_factory: Factory, tmp_path: Path
) -> None:
    linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=10)  # the launcher exists now
    old_cwd = os.getcwd()
    os.environ["LINX_TEST_LATE_VARIABLE"] = "late"
    os.chdir(tmp_path)
    try:
        session, output = capture_stdout(
            session_factory, ["/bin/sh", "-c", 'echo "$LINX_TEST_LATE_VARIABLE"; pwd']
        )
    finally:
        os.chdir(old_cwd)
        del os.environ["LINX_TEST_LATE_VARIABLE"]
    assert session.wait(timeout=10) == linx.Exited(code=0)
    assert output.decode().split("\n")[:2] == ["late", str(tmp_path)]


@pytest.mark.parametrize("auto_proceed", [False, True], ids=["parked", "vforked"])
def test_the_agent_holds_a_new_mount_namespace_until_the_session_ends(
    session_factory: Factory, auto_proceed: bool
) -> None:
    # So that tearing the namespace down (an RCU wait) is not part of the workload's exit
    # (docs/performance.md): the agent keeps a reference to it until the outcome is out.
    session = session_factory(["/bin/sleep", "30"], namespaces=["mount"], auto_proceed=auto_proceed)
    ready = expect(session, linx.Ready)
    if not auto_proceed:
        session.proceed()
    expect(session, linx.Running)
    workload_ns = os.readlink(f"/proc/{ready.host_pid}/ns/mnt")
    agent = session._channel.state.agent_pid
    assert agent is not None
    agent_fds = {os.readlink(f"/proc/{agent}/fd/{fd}") for fd in os.listdir(f"/proc/{agent}/fd")}
    assert workload_ns in agent_fds
    session.signal(9)
    assert expect(session, linx.Signaled).signum == 9


def test_without_a_mount_namespace_the_agent_holds_no_namespace(session_factory: Factory) -> None:
    session = session_factory(["/bin/sleep", "30"], namespaces=["uts"], auto_proceed=True)
    expect(session, linx.Ready)
    expect(session, linx.Running)
    agent = session._channel.state.agent_pid
    assert agent is not None
    links = [os.readlink(f"/proc/{agent}/fd/{fd}") for fd in os.listdir(f"/proc/{agent}/fd")]
    assert not [link for link in links if link.startswith("mnt:")], links
    session.signal(9)
    assert expect(session, linx.Signaled).signum == 9
