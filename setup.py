"""Build hook: compiles the C launcher/agent (`agent/*.c`) into the package as `_bin/linx-agent`.

setuptools rather than meson-python: the C side is one small program with no dependencies
beyond libc, so a single compiler call is the whole native build; see docs/design.md.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
FLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]


def compile_agent(output: Path) -> None:
    sources = sorted(str(p) for p in (ROOT / "agent").glob("*.c"))
    if not sources:
        raise SystemExit("linx: no C sources found in agent/")
    compiler = shlex.split(os.environ.get("CC", "cc"))
    output.parent.mkdir(parents=True, exist_ok=True)
    base = [*compiler, *FLAGS, "-o", str(output), *sources]
    # Static keeps the per-session fork cheap (no relocations to copy); fall back to a
    # dynamic link where libc.a is missing rather than failing the install.
    if subprocess.run([*base[:1], "-static", *base[1:]]).returncode != 0:
        print("linx: static link failed, building a dynamic agent", file=sys.stderr)
        subprocess.run(base, check=True)


class BuildPyWithAgent(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target = ROOT / "src" / "linx" / "_bin" / "linx-agent"
        else:
            target = Path(self.build_lib) / "linx" / "_bin" / "linx-agent"
        compile_agent(target)


class BinaryDistribution(Distribution):
    """The wheel carries a native program, so it is platform-specific."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """Tagged for the platform only: the program is not a Python extension, so any
    Python 3 from 3.11 on can run the wheel (the default tag names the building CPython's
    ABI, refused by every other)."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    cmdclass={"build_py": BuildPyWithAgent, "bdist_wheel": PlatformWheel},
    distclass=BinaryDistribution,
)
