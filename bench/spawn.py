"""Spawn cost of linx against subprocess and unshare, measured interleaved in one run.

    python bench/spawn.py [--rounds N]

Each round runs every case once, in turn, so drift on the machine (other load, frequency
changes) hits all cases alike; the report gives medians and the ratios the issue asks for.
Run by hand; the numbers go to docs/performance.md. Never a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable

import linx

ROOT_MAP = [(0, os.geteuid(), 1)]
ROOT_GMAP = [(0, os.getegid(), 1)]
FIVE = ["user", "pid", "mount", "uts", "ipc"]


def popen_true() -> None:
    subprocess.Popen(["/bin/true"]).wait()


def linx_true() -> None:
    outcome = linx.spawn(["/bin/true"], auto_proceed=True).wait()
    assert outcome == linx.Exited(0), outcome


def linx_five_namespaces() -> None:
    session = linx.spawn(
        ["/bin/true"], namespaces=FIVE, uid_map=ROOT_MAP, gid_map=ROOT_GMAP, auto_proceed=True
    )
    assert session.wait() == linx.Exited(0)


def unshare_five_namespaces() -> None:
    subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--ipc",
            "/bin/true",
        ],
        check=True,
    )


CASES: dict[str, Callable[[], None]] = {
    "subprocess.Popen(['/bin/true']).wait()": popen_true,
    "linx.spawn(/bin/true, auto_proceed).wait()": linx_true,
    "linx 5 namespaces + root map": linx_five_namespaces,
}
if shutil.which("unshare"):
    CASES["unshare --user --map-root-user --pid --fork --mount --uts --ipc"] = (
        unshare_five_namespaces
    )


def measure(rounds: int) -> dict[str, list[float]]:
    for fn in CASES.values():  # warm up: start the launcher, fill caches
        for _ in range(20):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name, fn in CASES.items():
            start = time.perf_counter_ns()
            fn()
            samples[name].append((time.perf_counter_ns() - start) / 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    samples = measure(args.rounds)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"{'case':<66} {'median µs':>10} {'p90 µs':>8}")
    for name, values in samples.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:<66} {medians[name]:>10.0f} {p90:>8.0f}")
    names = list(CASES)
    print(f"\nlinx / subprocess (goal <= 1.2): {medians[names[1]] / medians[names[0]]:.2f}")
    if len(names) > 3:
        print(f"linx 5ns / unshare (goal <= 0.6): {medians[names[2]] / medians[names[3]]:.2f}")


if __name__ == "__main__":
    main()
