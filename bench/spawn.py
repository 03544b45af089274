"""Spawn cost of linx against subprocess and unshare, each measured interleaved in one run.

    python bench/spawn.py [--rounds N] [--block B] [--together]

The issue's two comparisons, one after the other: `/bin/true` against `subprocess.Popen`,
then five namespaces against `unshare`. The cases of a comparison take turns in blocks of
B spawns (default 20), so drift on the machine (other load, frequency changes) hits them
alike; the report gives medians and the ratios the issue asks for. `--together`
interleaves all four cases instead.

Why blocks, and why each block's first spawn is not counted: a linx spawn leaves work
behind when `wait()` returns (its agent's exit, the launcher reaping it, the fork of the
next spare). Taking turns spawn by spawn put that work into the next case's timing, so a
change that moved work after the outcome looked faster against Popen while linx itself
was not (docs/performance.md). `--block 1` gives the old method, every spawn counted.
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


Case = tuple[str, Callable[[], None]]

# What the issue compares, each pair interleaved against its own baseline: (label, goal,
# baseline, linx). A missing `unshare` drops the second pair.
PAIRS: list[tuple[str, str, Case, Case]] = [
    (
        "linx / subprocess",
        "<= 1.2",
        ("subprocess.Popen(['/bin/true']).wait()", popen_true),
        ("linx.spawn(/bin/true, auto_proceed).wait()", linx_true),
    ),
]
if shutil.which("unshare"):
    PAIRS.append(
        (
            "linx 5ns / unshare",
            "<= 0.6",
            (
                "unshare --user --map-root-user --pid --fork --mount --uts --ipc",
                unshare_five_namespaces,
            ),
            ("linx 5 namespaces + root map", linx_five_namespaces),
        )
    )


def measure(cases: list[Case], rounds: int, block: int = 20) -> dict[str, list[float]]:
    """Medians' raw material: about `rounds` spawns of each case, in turns of `block`; the
    first of a block absorbs what the previous case left running and is not counted."""
    for _, fn in cases:  # warm up: start the launcher, fill caches
        for _ in range(20):
            fn()
    samples: dict[str, list[float]] = {name: [] for name, _ in cases}
    skip = 1 if block > 1 else 0
    for _ in range(max(1, rounds // max(1, block - skip))):
        for name, fn in cases:
            for i in range(block):
                start = time.perf_counter_ns()
                fn()
                if i >= skip:
                    samples[name].append((time.perf_counter_ns() - start) / 1000)
    return samples


def report(samples: dict[str, list[float]]) -> dict[str, float]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, values in samples.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:<66} {medians[name]:>10.0f} {p90:>8.0f}")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--block", type=int, default=20, help="spawns per turn (1: alternate)")
    parser.add_argument(
        "--together",
        action="store_true",
        help="interleave all four cases in one loop (the method of earlier rounds)",
    )
    args = parser.parse_args()
    print(f"{'case':<66} {'median µs':>10} {'p90 µs':>8}")
    if args.together:
        medians = report(measure([c for p in PAIRS for c in p[2:]], args.rounds, args.block))
    else:
        medians = {}
        for pair in PAIRS:
            medians.update(report(measure(list(pair[2:]), args.rounds, args.block)))
    print()
    for label, goal, (baseline, _), (linx_case, _) in PAIRS:
        print(f"{label} (goal {goal}): {medians[linx_case] / medians[baseline]:.2f}")


if __name__ == "__main__":
    main()
