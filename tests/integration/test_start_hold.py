"""The start hold: the agent keeps an `auto_proceed` child's start frames (SPAWNED, READY,
RUNNING) for a moment after its exec, so that a workload ending within it reaches Python in
one write; the hold ends at its time limit or at any word from Python.

The limit is 1 ms (START_HOLD_MS in agent.c). Here it is stretched to a minute through the
agent's test hook, LINX_AGENT_START_HOLD_MS, which the agent reads from the environment the
launcher started with: so each case runs in a fresh interpreter, and no assertion depends
on how fast the machine is.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_python

LONG_HOLD = {"LINX_AGENT_START_HOLD_MS": "60000"}

WAIT_FOR_THE_EXIT = """
import json, time, linx
s = linx.spawn(["/bin/sh", "-c", "sleep 0.3; exit 3"], auto_proceed=True)
time.sleep(0.15)  # the workload cannot have ended: it sleeps 0.3 s after its exec
held = {"host_pid": s.host_pid, "events": s.events.qsize()}
outcome = s.wait(timeout=30)
events = [type(s.events.get_nowait()).__name__ for _ in range(s.events.qsize())]
print(json.dumps({"held": held, "outcome": repr(outcome), "events": events}))
"""


@pytest.mark.parametrize("no_vfork", ["0", "1"], ids=["vfork", "fork"])
def test_the_start_frames_wait_for_an_exit_within_the_hold(no_vfork: str) -> None:
    done = run_python(WAIT_FOR_THE_EXIT, env={**LONG_HOLD, "LINX_AGENT_NO_VFORK": no_vfork})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["held"] == {"host_pid": None, "events": 0}
    assert report["outcome"] == "Exited(code=3)"
    assert report["events"] == ["Ready", "Running", "Exited"]


ANY_WORD_ENDS_IT = """
import json, os, signal, time, linx
marker = "30.5151"  # finds the workload in /proc while its pid is held
s = linx.spawn(["/bin/sleep", marker], auto_proceed=True)

def execd():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read() == b"/bin/sleep\\0" + marker.encode() + b"\\0":
                    return True
        except OSError:
            pass
    return False

deadline = time.monotonic() + 30
while not execd() and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.2)  # the agent is past the exec and holding
held = {"host_pid": s.host_pid, "events": s.events.qsize()}
s.signal(signal.SIGCONT)  # harmless to sleep; it ends the hold
ready = s.events.get(timeout=10)
running = s.events.get(timeout=10)
alive = os.path.exists(f"/proc/{ready.host_pid}")
s.close()
print(json.dumps({"held": held, "events": [type(ready).__name__, type(running).__name__],
                  "alive": alive, "host_pid_known": s.host_pid == ready.host_pid}))
"""


def test_any_word_from_python_ends_the_hold() -> None:
    done = run_python(ANY_WORD_ENDS_IT, env=LONG_HOLD)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["held"] == {"host_pid": None, "events": 0}
    assert report["events"] == ["Ready", "Running"]
    assert report["alive"] and report["host_pid_known"]


RUNNING_WHILE_IT_RUNS = """
import json, os, linx
s = linx.spawn(["/bin/sleep", "30"], auto_proceed=True)
ready = s.events.get(timeout=10)
running = s.events.get(timeout=10)
alive = os.path.exists(f"/proc/{ready.host_pid}")
s.close()
print(json.dumps({"events": [type(ready).__name__, type(running).__name__], "alive": alive}))
"""


def test_with_the_real_limit_a_long_workload_is_reported_running_while_it_runs() -> None:
    done = run_python(RUNNING_WHILE_IT_RUNS)  # no hook: the agent's own 1 ms
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {"events": ["Ready", "Running"], "alive": True}
