"""An agent that dies between the clone and the child's PR_SET_PDEATHSIG.

The death signal armed after the parent is gone never comes, so the child checks, right
after arming it, that its parent is still the agent (agent/child.c, arm_pdeathsig), and
exits instead of running the workload. The agent runs under helpers/kill_agent_at_pdeathsig.c:
a seccomp filter holds the child's prctl(PR_SET_PDEATHSIG) while a supervisor SIGKILLs the
agent and waits for it to exit, then lets the prctl go on. The supervisor also keeps up
what the dead agent held (a reader on the report pipe, a byte in the release pipe), so the
child's other signs of a dead agent stay quiet and only the parent check can stop it.

Each path runs in a fresh interpreter: the launcher reads LINX_AGENT and
LINX_AGENT_NO_VFORK from the environment it started with.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from linx import _launcher
from tests.conftest import (
    SPAWN_PATHS,
    build_helper,
    pid_alive,
    run_python,
    spawn_path_env,
    wait_until,
)

# One auto_proceed spawn of a workload that would leave its pid in MARKER; prints what
# Python saw. stdio "devnull": the child's only pipes are the report and release pipes.
SCENARIO = """
import json, linx
argv = ["/bin/sh", "-c", 'echo $$ > "$0"; exec sleep 30', MARKER]
session = linx.spawn(argv, stdio="devnull", auto_proceed=True)
events = [session.events.get(timeout=20)]
while not isinstance(events[-1], (linx.Exited, linx.Signaled, linx.Aborted, linx.Failed)):
    events.append(session.events.get(timeout=20))
end = events[-1]
error = end.error if isinstance(end, linx.Failed) else None
print(json.dumps({
    "events": [type(e).__name__ for e in events],
    "error": None if error is None else [error.stage, error.errno, error.code, str(error)],
    "stage": session.info().stage.value,
}))
session.close()
"""


@pytest.fixture(scope="module")
def kill_agent_at_pdeathsig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_helper(tmp_path_factory, "kill_agent_at_pdeathsig")


@contextlib.contextmanager
def killed_afterwards(marker: Path, *pids: int) -> Iterator[None]:
    """Whatever fails inside, no workload (its pid in `marker`) nor `pids` outlive the test."""
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pids += (int(marker.read_text()),)
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_child_whose_agent_died_before_its_death_signal_never_runs_the_workload(
    path: str, kill_agent_at_pdeathsig: Path, tmp_path: Path
) -> None:
    marker, record = tmp_path / "workload-ran", tmp_path / "record"
    env = {
        **spawn_path_env(path),
        "LINX_REAL_AGENT": _launcher.agent_path(),
        "LINX_AGENT": str(kill_agent_at_pdeathsig),
        "LINX_PDEATHSIG_RECORD": str(record),
    }
    done = run_python(f"MARKER = {str(marker)!r}\n" + SCENARIO, env=env)
    assert done.returncode == 0, done.stderr
    # "<child> <agent> <child's parent once the agent was gone> <supervisor>"
    assert wait_until(record.exists), done.stdout
    fields = record.read_text().split()
    assert fields[0] != "error", fields
    child, agent, new_parent, supervisor = map(int, fields)
    with killed_afterwards(marker, child):
        # the supervisor let the prctl go on only once the agent had exited
        assert new_parent not in (agent, 0)
        died = "process agent died: killed by signal 9"
        assert json.loads(done.stdout) == {
            "events": ["Failed"],
            "error": ["agent_died", None, -signal.SIGKILL, died],
            "stage": "errored",
        }
        # without the check the child goes on to exec the workload, which runs on with no
        # agent and no death signal
        assert wait_until(lambda: marker.exists() or not pid_alive(child))
        assert not marker.exists(), "the workload ran with its agent dead"
        assert not pid_alive(child)
        assert not pid_alive(agent)
        assert wait_until(lambda: not pid_alive(supervisor))
        assert not marker.exists()
