"""The README is a user's door: its commands and examples run as written and print what
they say they print."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from tests.conftest import ROOT, run_python

README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_readme_has_its_two_set_up_commands_and_two_examples() -> None:
    assert len(blocks("sh")) == 2 and len(blocks("python")) == 2


def test_the_readmes_linx_run_command_runs_in_its_namespaces_and_prints_its_events() -> None:
    (install_and_run, _tests) = blocks("sh")
    command = install_and_run.strip().split(" && ", 1)[1]  # after `pip install .`
    argv = shlex.split(command)
    assert argv[0] == "linx"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "linx", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["0", "box", "pid 1"], done.stdout
    events = [line.split()[2].split("(")[0] for line in done.stderr.splitlines()]
    assert events == ["Ready", "Running", "Exited"], done.stderr


def test_the_readmes_python_examples_print_what_their_comments_say() -> None:
    spawn_example, aio_example = blocks("python")
    done = run_python(spawn_example)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # the uid_map as the kernel shows it, the workload's line, then the outcome
    assert lines[0].split() == ["0", "1000", "1"], done.stdout
    assert lines[-2:] == ["I am pid 1 on sandbox", "Exited(code=0)"], done.stdout
    assert "# Exited(code=0)" in spawn_example
    done = run_python(aio_example)
    assert (done.returncode, done.stdout) == (0, "Exited(code=0)\n"), done.stderr


def test_the_readmes_error_message_is_the_one_a_missing_program_gives() -> None:
    quoted = re.search(r"`(process execve '/nonexistent' failed: [^`]*)`", README)
    assert quoted is not None
    done = run_python(
        """
        import linx
        try:
            linx.spawn(["/nonexistent"], auto_proceed=True).wait(timeout=20)
        except linx.ProcessError as exc:
            print(exc)
        """
    )
    assert done.stdout.strip() == quoted.group(1), done.stdout + done.stderr
