"""Memory per parked session: the agent and its child waiting at the checkpoint.

    python bench/memory.py [--sessions N]

Parks N sessions of `/bin/true` in user+pid+mount+uts+ipc namespaces with a root map, then
sums the proportional set size (Pss, shared pages split among sharers) of every agent and
child from /proc/<pid>/smaps_rollup. Run by hand; the result goes to docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import linx

FIVE = ["user", "pid", "mount", "uts", "ipc"]


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss for pid {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=50)
    args = parser.parse_args()
    sessions = [
        linx.spawn(
            ["/bin/true"],
            namespaces=FIVE,
            uid_map=[(0, os.geteuid(), 1)],
            gid_map=[(0, os.getegid(), 1)],
        )
        for _ in range(args.sessions)
    ]
    try:
        for session in sessions:
            assert session.events is not None
            assert isinstance(session.events.get(timeout=10), linx.Ready)
        agents = [s._channel.state.agent_pid for s in sessions]
        children = [s.host_pid for s in sessions]
        agent_kib = sum(pss_kib(p) for p in agents if p is not None)
        child_kib = sum(pss_kib(p) for p in children if p is not None)
        n = len(sessions)
        print(f"{n} parked sessions (user+pid+mount+uts+ipc, root map)")
        print(f"  agent Pss per session:  {agent_kib / n:6.0f} KiB")
        print(f"  child Pss per session:  {child_kib / n:6.0f} KiB")
        print(f"  together:               {(agent_kib + child_kib) / n:6.0f} KiB")
    finally:
        for session in sessions:
            session.close()


if __name__ == "__main__":
    main()
