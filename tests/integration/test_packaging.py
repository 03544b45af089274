"""The distributions `python -m build` makes: an sdist that builds (`pip install` of it
compiles the agent) and a wheel any Python 3 of this platform takes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_sdist_carries_the_agents_sources_and_builds_a_wheel_that_runs_installed(
    tmp_path: Path,
) -> None:
    # `python -m build` makes the sdist, then the wheel from the unpacked sdist: a source
    # missing from the sdist fails the second step. From a copy of the files git has: the
    # build writes its egg-info next to the sources, and a developer's tree may hold more.
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = tmp_path.glob("linx-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {
            Path(name).relative_to(Path(name).parts[0]).as_posix() for name in archive.getnames()
        }
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "agent").glob("*.[ch]")}
    assert sources <= names
    assert {"README.md", "docs/design.md", "docs/protocol.md"} <= names
    assert not any(name.startswith("agent/build/") for name in names)
    (wheel,) = tmp_path.glob("linx-*.whl")
    # no extension module: any Python 3 of this platform, not only the one that built it
    assert wheel.name.split("-")[2:4] == ["py3", "none"]
    with zipfile.ZipFile(wheel) as archive:
        assert {"linx/_bin/linx-agent", "linx/py.typed"} <= set(archive.namelist())
    _the_installed_wheel_runs_from_anywhere(wheel, tmp_path / "venv")


def _the_installed_wheel_runs_from_anywhere(wheel: Path, venv: Path) -> None:
    """Installed (not editable) into a fresh environment, `linx` finds its agent inside the
    package, from any directory, with no checkout on the path."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--no-deps", str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LINX_AGENT")}
    done = subprocess.run(
        [
            str(venv / "bin" / "linx"),
            "run",
            "--ns",
            "user,pid",
            "--map-root",
            "--",
            "/bin/sh",
            "-c",
            "echo $$ $(id -u)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
    )
    assert (done.returncode, done.stdout) == (0, "1 0\n"), done.stderr
