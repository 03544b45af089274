"""`import linx` stays light: what only some programs use is imported when they use it."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Each costs milliseconds at every `linx run` (docs/performance.md, "Start-up").
DEFERRED = ("asyncio", "concurrent.futures", "pathlib")


@pytest.mark.parametrize("module", ["linx", "linx.cli"])
def test_import_leaves_optional_modules_out(module: str) -> None:
    probe = f"import sys, {module}; print(' '.join(m for m in {DEFERRED!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []
