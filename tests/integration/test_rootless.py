"""Unprivileged use: a user namespace makes root inside possible; without one, clone is refused.

These run linx in a fresh interpreter as uid/gid 65534 (nobody), from this checkout.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import tempfile
from pathlib import Path

from linx._launcher import agent_path
from tests.conftest import NOBODY, ROOT, run_python


def test_checkout_and_agent_are_usable_by_an_unprivileged_user() -> None:
    agent = Path(agent_path())
    assert agent.stat().st_mode & stat.S_IXOTH, f"{agent} is not world-executable"
    inside = [p for p in agent.parents if p.is_relative_to(ROOT)]
    for path in [*inside, *(ROOT / "src" / "linx").rglob("*")]:
        needed = stat.S_IXOTH if path.is_dir() else stat.S_IROTH
        assert path.stat().st_mode & needed, f"{path} is not accessible to other users"


def test_unprivileged_user_namespace_spawn_runs_workload_as_root_inside(
    nobody_python: None,
) -> None:
    done = run_python(
        f"""
        import json, os, linx
        session = linx.spawn(
            ["/bin/sh", "-c", "id -u; id -g"],
            namespaces=["user", "pid", "mount", "uts"],
            uid_map=[(0, {NOBODY}, 1)],
            gid_map=[(0, {NOBODY}, 1)],
            uid=0,
            gid=0,
            auto_proceed=True,
        )
        with session:
            outcome = session.wait(timeout=20)
        print(json.dumps({{"me": os.getuid(), "outcome": repr(outcome)}}))
        """,
        user=NOBODY,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["0", "0"], done.stdout  # the workload's uid and gid inside
    report = json.loads(lines[-1])
    assert report == {"me": NOBODY, "outcome": "Exited(code=0)"}


def test_unprivileged_user_cannot_create_a_net_namespace_without_a_user_namespace(
    nobody_python: None,
) -> None:
    done = run_python(
        """
        import json, linx
        session = linx.spawn(["/bin/true"], namespaces=["net"], auto_proceed=True)
        with session:
            try:
                outcome = session.wait(timeout=20)
            except linx.ProcessError as exc:
                result = {"stage": exc.stage, "errno": exc.errno}
            else:
                result = {"outcome": repr(outcome)}
        print(json.dumps(result))
        """,
        user=NOBODY,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"stage": "clone", "errno": errno.EPERM}, result


def test_unprivileged_linx_run_with_map_root_is_root_and_pid_1_inside(
    nobody_python: None,
) -> None:
    # The README's first command, as a user without privileges would type it.
    done = run_python(
        """
        import sys
        from linx.cli import main
        sys.exit(main(["run", "--ns", "user,pid,mount,uts,ipc", "--map-root",
                       "--hostname", "box", "--", "/bin/sh", "-c", "id -u; hostname; echo $$"]))
        """,
        user=NOBODY,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["0", "box", "1"], done.stdout


def test_unprivileged_user_shapes_a_parked_child_at_the_checkpoint(nobody_python: None) -> None:
    # The README's example as a user without privileges: parked (not the vfork path the
    # auto_proceed test takes), maps written by the agent, read from outside at Ready;
    # and maps the caller writes itself at the checkpoint.
    done = run_python(
        f"""
        import json, linx

        def parked(shape=None, **options):
            with linx.spawn(["/bin/sh", "-c", "exit $(id -u)"], namespaces=["user", "pid"],
                            uid=0, **options) as s:
                ready = s.events.get(timeout=20)
                assert isinstance(ready, linx.Ready), ready
                if shape:
                    shape(ready.host_pid)
                with open(f"/proc/{{ready.host_pid}}/uid_map") as f:
                    seen = f.read().split()
                s.proceed()
                return [seen, repr(s.wait(timeout=20))]

        def write_maps(pid):
            for name, text in (("setgroups", "deny"), ("uid_map", "0 {NOBODY} 1"),
                               ("gid_map", "0 {NOBODY} 1")):
                with open(f"/proc/{{pid}}/{{name}}", "w") as f:
                    f.write(text)

        print(json.dumps({{
            "agent": parked(uid_map=[(0, {NOBODY}, 1)], gid_map=[(0, {NOBODY}, 1)]),
            "caller": parked(write_maps),
        }}))
        """,
        user=NOBODY,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    ran = [["0", str(NOBODY), "1"], "Exited(code=0)"]
    assert report == {"agent": ran, "caller": ran}, report


def test_unprivileged_linx_run_without_a_user_namespace_exits_125_naming_clone(
    nobody_python: None,
) -> None:
    done = run_python(
        """
        import sys
        from linx.cli import main
        sys.exit(main(["run", "--ns", "pid,mount", "--", "/bin/true"]))
        """,
        user=NOBODY,
    )
    assert done.returncode == 125, done.stderr
    assert "clone failed: EPERM" in done.stderr, done.stderr
    assert "add --map-root" in done.stderr, done.stderr  # what to do about it
    assert "Traceback" not in done.stderr, done.stderr


def test_after_a_privilege_drop_workloads_run_with_the_new_credentials() -> None:
    # A launcher runs with the credentials the process had when it started it. After a
    # drop (a server giving up root), neither it nor its spare may serve another spawn:
    # its channel is shut for writing, so that it takes no request again. It stays while
    # an agent of its own runs (the parked session's), then goes.
    done = run_python(
        f"""
        import json, os, time, linx
        from linx._runtime import get_runtime

        def ids():
            r, w = os.pipe()
            s = linx.spawn(["/bin/sh", "-c", "id -u; id -G"], stdio={{"stdout": w}},
                           auto_proceed=True)
            os.close(w)
            with os.fdopen(r) as out:
                text = out.read().split()
            assert s.wait(timeout=20) == linx.Exited(0)
            return text

        before = ids()
        root_launcher = get_runtime()._launcher.pid
        parked = linx.spawn(["/bin/sh", "-c", "exit 3"])  # its agent: root, from before
        assert isinstance(parked.events.get(timeout=20), linx.Ready)
        os.setgroups([])
        os.setgid({NOBODY})
        os.setuid({NOBODY})
        after = ids()
        kept = os.path.exists(f"/proc/{{root_launcher}}")
        parked.proceed()
        outcome = repr(parked.wait(timeout=20))
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{{root_launcher}}") and time.monotonic() < deadline:
            time.sleep(0.01)
        print(json.dumps({{
            "before": before,
            "after": after,
            "root_launcher_kept_for_its_agent": kept,
            "parked": outcome,
            "root_launcher_gone_after": not os.path.exists(f"/proc/{{root_launcher}}"),
        }}))
        """
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {
        "before": ["0", "0"],
        "after": [str(NOBODY), str(NOBODY)],
        "root_launcher_kept_for_its_agent": True,
        "parked": "Exited(code=3)",
        "root_launcher_gone_after": True,
    }, report


def test_after_a_privilege_drop_an_agent_of_the_old_launcher_that_dies_is_reported() -> None:
    # The launcher retired at the drop stays for its agents: one of them killed later
    # still gets agent_died with the status its death gave, not "unknown".
    done = run_python(
        """
        import json, os, signal, linx
        from linx._runtime import get_runtime

        linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=20)
        parked = linx.spawn(["/bin/sleep", "60"])
        assert isinstance(parked.events.get(timeout=20), linx.Ready)
        old = get_runtime()._launcher
        os.setgroups([])
        os.setresgid(65534, 65534, 0)  # saved ids stay root's: the agent can be killed
        os.setresuid(65534, 65534, 0)
        linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=20)  # a new launcher
        assert get_runtime()._launcher is not old and old.retired
        os.setresuid(0, 0, 0)
        os.kill(parked._channel.state.agent_pid, signal.SIGKILL)
        try:
            parked.wait(timeout=20)
        except linx.ProcessError as error:
            print(json.dumps([error.stage, error.code]))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["agent_died", -signal.SIGKILL]


def test_after_a_privilege_drop_workloads_inherit_a_directory_they_cannot_enter(
    tmp_path: Path,
) -> None:
    # A server that drops root where only root may enter (/root, a 0700 service
    # directory) is still in it, and its children start there (subprocess, unshare:
    # nothing changes directory). The workload's chdir to it is refused (EACCES); the
    # child is in it already, from the launcher started there, and must stay.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    done = run_python(
        f"""
        import json, os, subprocess, linx

        def where(**options):
            r, w = os.pipe()
            s = linx.spawn(["/bin/sh", "-c", "pwd -P"], stdio={{"stdout": w}}, **options)
            os.close(w)
            try:
                if not options.get("auto_proceed"):
                    ready = s.events.get(timeout=20)
                    if isinstance(ready, linx.Failed):
                        raise ready.error
                    s.proceed()
                outcome = s.wait(timeout=20)
            except linx.ProcessError as exc:
                outcome = f"{{exc.stage}}/{{exc.errno}}"
            finally:
                s.close()
            with os.fdopen(r) as out:
                return [out.read().strip(), repr(outcome)]

        os.chdir({str(private)!r})
        assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=20) == linx.Exited(0)
        os.setgroups([])
        os.setgid({NOBODY})
        os.setuid({NOBODY})
        user = dict(namespaces=["user", "mount"], uid_map=[(0, {NOBODY}, 1)], uid=0)
        print(json.dumps({{
            "subprocess": subprocess.run(["/bin/sh", "-c", "pwd -P"], capture_output=True,
                                         text=True).stdout.strip(),
            "vfork": where(auto_proceed=True),
            "parked": where(),
            "user_vfork": where(auto_proceed=True, **user),
            "user_parked": where(**user),
        }}))
        """
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    ran = [str(private), "Exited(code=0)"]
    assert report == {
        "subprocess": str(private),
        "vfork": ran,
        "parked": ran,
        "user_vfork": ran,
        "user_parked": ran,
    }, report


def test_a_directory_the_caller_cannot_enter_given_as_cwd_is_still_refused(
    nobody_python: None, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    done = run_python(
        f"""
        import json, linx
        results = []
        for auto_proceed in (True, False):
            s = linx.spawn(["/bin/true"], cwd={str(private)!r}, auto_proceed=auto_proceed)
            with s:
                try:
                    if not auto_proceed:
                        assert isinstance(s.events.get(timeout=20), linx.Ready)
                        s.proceed()
                    results.append(repr(s.wait(timeout=20)))
                except linx.ProcessError as exc:
                    results.append([exc.stage, exc.errno])
        print(json.dumps(results))
        """,
        user=NOBODY,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert results == [["chdir", errno.EACCES], ["chdir", errno.EACCES]], results


def test_a_directory_mounted_over_the_launchers_is_not_taken_for_it(tmp_path: Path) -> None:
    # The launcher started in `a`; another directory is then mounted over that path, and the
    # caller moves into it. Its name is the launcher's, but it is not the directory the child
    # is in: refused it (EACCES, a user namespace that cannot search it), the child must not
    # run in the old directory under the new one's name.
    old, new = tmp_path / "a", tmp_path / "new"
    old.mkdir()
    new.mkdir(mode=0o700)
    (old / "OLD").touch()
    (new / "NEW").touch()
    os.chown(new, NOBODY, NOBODY)
    done = run_python(
        f"""
        import ctypes, json, os, linx
        libc = ctypes.CDLL(None, use_errno=True)
        MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
        assert libc.unshare(0x00020000) == 0, ctypes.get_errno()
        assert libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
        os.chdir({str(old)!r})
        assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=20) == linx.Exited(0)
        assert libc.mount({str(new).encode()!r}, {str(old).encode()!r}, None, MS_BIND, None) == 0
        os.chdir({str(old)!r})
        results = []
        for auto_proceed in (True, False):
            r, w = os.pipe()
            s = linx.spawn(["/bin/sh", "-c", "ls"], namespaces=["user"], stdio={{"stdout": w}},
                           auto_proceed=auto_proceed)
            os.close(w)
            with s:
                try:
                    if not auto_proceed:
                        assert isinstance(s.events.get(timeout=20), linx.Ready)
                        s.proceed()
                    outcome = repr(s.wait(timeout=20))
                except linx.ProcessError as exc:
                    outcome = [exc.stage, exc.errno]
            with os.fdopen(r) as out:
                results.append([out.read().strip(), outcome])
        print(json.dumps(results))
        """
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    refused = ["", ["chdir", errno.EACCES]]
    assert results == [refused, refused], results


def test_after_a_privilege_drop_a_private_directory_under_a_searchable_one_is_kept() -> None:
    # As /root: its parent can be searched, so the path can be looked up and is compared
    # with the child's directory itself (not only its name).
    with tempfile.TemporaryDirectory(dir="/tmp") as parent:
        os.chmod(parent, 0o755)
        private = os.path.join(parent, "private")
        os.mkdir(private, 0o700)
        done = run_python(
            f"""
            import json, os, linx
            os.chdir({private!r})
            assert linx.spawn(["/bin/true"], auto_proceed=True).wait(timeout=20) == linx.Exited(0)
            os.setgroups([])
            os.setgid({NOBODY})
            os.setuid({NOBODY})
            results = []
            for auto_proceed in (True, False):
                r, w = os.pipe()
                s = linx.spawn(["/bin/sh", "-c", "pwd -P"], stdio={{"stdout": w}},
                               auto_proceed=auto_proceed)
                os.close(w)
                with s:
                    if not auto_proceed:
                        assert isinstance(s.events.get(timeout=20), linx.Ready)
                        s.proceed()
                    outcome = repr(s.wait(timeout=20))
                with os.fdopen(r) as out:
                    results.append([out.read().strip(), outcome])
            print(json.dumps(results))
            """
        )
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout.splitlines()[-1])
        assert results == [[private, "Exited(code=0)"]] * 2, results
