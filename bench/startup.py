"""What a fresh Python process pays for linx before its first spawn, and for `linx run`.

    python bench/startup.py [--runs N]

Each case runs N times in a new interpreter; the report gives medians, and the bare
interpreter beside them. Byte-code caches are written first (an installed package has
them), so source compilation is not counted. Run by hand; the numbers go to
docs/performance.md ("Start-up"). Never a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

IMPORT_PROBE = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"


def import_seconds(module: str, env: dict[str, str]) -> float:
    probe = IMPORT_PROBE.format(module)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, check=True)
    return float(out.stdout)


def wall_seconds(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=31)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    linx_cli = [sys.executable, "-m", "linx", "run", "--", "/bin/true"]
    subprocess.run(linx_cli, env=env, check=True)  # writes the byte-code caches
    cases: dict[str, Callable[[], float]] = {
        "import linx": lambda: import_seconds("linx", env),
        "import linx.cli": lambda: import_seconds("linx.cli", env),
        "python -c pass": lambda: wall_seconds([sys.executable, "-c", "pass"], env),
        "python -m linx run -- /bin/true": lambda: wall_seconds(linx_cli, env),
    }
    unshare = shutil.which("unshare")
    if unshare:
        cases["unshare --fork /bin/true"] = lambda: wall_seconds(
            [unshare, "--fork", "/bin/true"], env
        )
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):  # interleaved, as in bench/spawn.py
        for name, case in cases.items():
            samples[name].append(case())
    print(f"{'case':<34} {'median ms':>10}")
    for name, values in samples.items():
        print(f"{name:<34} {statistics.median(values) * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
