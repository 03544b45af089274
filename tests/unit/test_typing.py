"""What a user's type checker sees: spawn()'s options are typed as SPEC §3-§5 give them,
and linx.aio.spawn takes exactly linx.spawn's (mypy --strict over a user's program)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api

GOOD = """
    import asyncio, queue
    import linx, linx.aio

    events: queue.Queue[linx.Event] = queue.Queue()
    session = linx.spawn(
        ["/bin/true"], namespaces=["pid", linx.Namespace.UTS], env={"A": "1"}, cwd=Path("/"),
        stdio={"stdout": 1, "stdin": "devnull", "stderr": ("connect_unix", "/run/log")},
        owner=events, orphan_policy=("kill", 1.0),
    )
    session.set_owner(print)
    reason = session.exit_reason
    if isinstance(reason, tuple) and reason[0] == "exited":
        code: int = reason[1]

    async def main() -> None:
        aio = await linx.aio.spawn(["/bin/true"], auto_proceed=True, orphan_policy="linger")
        outcome: linx.Outcome = await aio.wait()
"""

BAD = """
    import linx, linx.aio

    linx.spawn(["/bin/true"], namespace=["pid"])
    linx.spawn(["/bin/true"], stdio=42.5)
    linx.spawn(["/bin/true"], orphan_policy=3)
    linx.spawn(["/bin/true"], owner=12)

    async def main() -> None:
        await linx.aio.spawn(["/bin/true"], namespace=["pid"])
        await linx.aio.spawn(["/bin/true"], auto_proceed="yes")
"""


def _mypy(tmp_path: Path, source: str) -> list[str]:
    program = tmp_path / "program.py"
    program.write_text("from pathlib import Path\n" + textwrap.dedent(source))
    cache = tmp_path / "cache"
    out, _, _ = api.run(["--strict", "--cache-dir", str(cache), str(program)])
    return [line for line in out.splitlines() if ": error:" in line]


@pytest.mark.slow
def test_a_users_program_type_checks_and_its_mistakes_do_not(tmp_path: Path) -> None:
    assert _mypy(tmp_path, GOOD) == []
    errors = _mypy(tmp_path, BAD)
    lines = sorted({int(line.split(":")[1]) for line in errors})
    assert lines == [5, 6, 7, 8, 11, 12], "\n".join(errors)
