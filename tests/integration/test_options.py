"""Bad input to `spawn()` and `signal()`: TypeError/ValueError naming the option and the value,
raised at the call, before any process exists.

Every case runs in one fresh interpreter (linx starts its reactor and launcher lazily), which
then proves nothing was started: no child process of any of its threads, no extra thread, no
leaked fd. Each case is reported by its own test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import linx
from tests.conftest import run_python

# (case, option named in the message, expected exception, bad value, call using `v`).
# Values and calls are Python source, evaluated in the fresh interpreter.
CASES: list[tuple[str, str, str, str, str]] = [
    ("argv-empty", "argv", "ValueError", "[]", "spawn(v)"),
    ("argv-str-not-list", "argv", "TypeError", "'/bin/true'", "spawn(v)"),
    ("argv-relative-path", "argv", "ValueError", "'bin/true'", "spawn([v])"),
    ("argv-nul-byte", "argv", "ValueError", "'/bin/tr\\x00ue'", "spawn([v])"),
    ("argv-nul-in-later-item", "argv", "ValueError", "'a\\x00b'", "spawn(['/bin/echo', v])"),
    ("argv-non-str-item", "argv", "TypeError", "5", "spawn(['/bin/echo', v])"),
    ("argv-bytearray-item", "argv", "TypeError", "bytearray(b'/bin/true')", "spawn([v])"),
    ("argv-mixed-bytearray", "argv", "TypeError", "bytearray(b'x')", "spawn([b'/bin/echo', v])"),
    ("namespaces-unknown-name", "namespaces", "ValueError", "'bogus'", "spawn(T, namespaces=[v])"),
    ("namespaces-plain-str", "namespaces", "TypeError", "'net'", "spawn(T, namespaces=v)"),
    ("namespaces-non-str-item", "namespaces", "TypeError", "7", "spawn(T, namespaces=[v])"),
    ("env-key-with-equals", "env", "ValueError", "'A=B'", "spawn(T, env={v: '1'})"),
    ("env-empty-key", "env", "ValueError", "''", "spawn(T, env={v: '1'})"),
    ("env-key-nul", "env", "ValueError", "'K\\x00'", "spawn(T, env={v: '1'})"),
    ("env-value-nul", "env", "ValueError", "'a\\x00b'", "spawn(T, env={'K': v})"),
    ("env-entry-nul", "env", "ValueError", "'K=a\\x00b'", "spawn(T, env=[v])"),
    ("env-entry-without-equals", "env", "ValueError", "'NOEQUALS'", "spawn(T, env=[v])"),
    ("env-entry-without-key", "env", "ValueError", "'=VALUE'", "spawn(T, env=[v])"),
    ("env-wrong-type", "env", "TypeError", "42", "spawn(T, env=v)"),
    ("env-plain-str", "env", "TypeError", "'K=V'", "spawn(T, env=v)"),
    ("env-entry-wrong-type", "env", "TypeError", "42", "spawn(T, env=['K=V', v])"),
    ("env-value-wrong-type", "env", "TypeError", "42", "spawn(T, env={'K': v})"),
    ("cwd-nul", "cwd", "ValueError", "'/tmp\\x00x'", "spawn(T, cwd=v)"),
    ("cwd-int", "cwd", "TypeError", "42", "spawn(T, cwd=v)"),
    ("cwd-empty", "cwd", "ValueError", "''", "spawn(T, cwd=v)"),
    ("stdio-unknown-string", "stdio", "ValueError", "'bogus'", "spawn(T, stdio=v)"),
    ("stdio-unknown-key", "stdio", "ValueError", "'stdxx'", "spawn(T, stdio={v: 'inherit'})"),
    ("stdio-unknown-directive", "stdio", "ValueError", "'bogus'", "spawn(T, stdio={'stdout': v})"),
    (
        "stdio-bad-tuple",
        "stdio",
        "ValueError",
        "('connect_tcp', '/tmp/x')",
        "spawn(T, stdio={'stdin': v})",
    ),
    (
        "stdio-short-tuple",
        "stdio",
        "ValueError",
        "('connect_unix',)",
        "spawn(T, stdio={'stdin': v})",
    ),
    (
        "stdio-connect-unix-nul",
        "stdio",
        "ValueError",
        "'/tmp/s\\x00'",
        "spawn(T, stdio={'stdin': ('connect_unix', v)})",
    ),
    ("stdio-closed-fd", "stdio", "ValueError", "CLOSED_FD", "spawn(T, stdio={'stdout': v})"),
    ("stdio-negative-fd", "stdio", "ValueError", "-1", "spawn(T, stdio={'stderr': v})"),
    ("stdio-fd-too-big", "stdio", "ValueError", "2**31", "spawn(T, stdio={'stdout': v})"),
    ("stdio-fd-huge", "stdio", "ValueError", "2**63", "spawn(T, stdio={'stdin': v})"),
    ("stdio-closed-file", "stdio", "ValueError", "CLOSED_FILE", "spawn(T, stdio={'stdout': v})"),
    (
        "stdio-file-without-fd",
        "stdio",
        "ValueError",
        "__import__('io').StringIO()",
        "spawn(T, stdio={'stdout': v})",
    ),
    ("stdio-bool-fd", "stdio", "TypeError", "True", "spawn(T, stdio={'stdout': v})"),
    ("stdio-float-fd", "stdio", "TypeError", "1.5", "spawn(T, stdio={'stdout': v})"),
    ("stdio-pty-not-yet-supported", "stdio", "ValueError", "'pty'", "spawn(T, stdio=v)"),
    ("stdio-wrong-type", "stdio", "TypeError", "42", "spawn(T, stdio=v)"),
    ("owner-not-callable-no-put", "owner", "TypeError", "42", "spawn(T, owner=v)"),
    ("owner-put-not-callable", "owner", "TypeError", "NotCallablePut()", "spawn(T, owner=v)"),
    (
        "owner-bounded-queue",  # the reactor thread would wait for room: every session stalls
        "owner",
        "ValueError",
        "__import__('queue').Queue(maxsize=1)",
        "spawn(T, owner=v)",
    ),
    ("linger-str", "linger", "TypeError", "'yes'", "spawn(T, linger=v)"),
    ("linger-none", "linger", "TypeError", "None", "spawn(T, linger=v)"),
    ("auto-proceed-int", "auto_proceed", "TypeError", "1", "spawn(T, auto_proceed=v)"),
    ("auto-proceed-str", "auto_proceed", "TypeError", "'true'", "spawn(T, auto_proceed=v)"),
    ("no-new-privs-int", "no_new_privs", "TypeError", "0", "spawn(T, no_new_privs=v)"),
    ("no-new-privs-str", "no_new_privs", "TypeError", "'no'", "spawn(T, no_new_privs=v)"),
    (
        "orphan-policy-bad-string",
        "orphan_policy",
        "ValueError",
        "'keep'",
        "spawn(T, orphan_policy=v)",
    ),
    (
        "orphan-policy-bad-tuple",
        "orphan_policy",
        "ValueError",
        "('term', 1.0)",
        "spawn(T, orphan_policy=v)",
    ),
    (
        "orphan-policy-negative-grace",
        "orphan_policy",
        "ValueError",
        "-1",
        "spawn(T, orphan_policy=('kill', v))",
    ),
    (
        "orphan-policy-nan-grace",
        "orphan_policy",
        "ValueError",
        "float('nan')",
        "spawn(T, orphan_policy=('kill', v))",
    ),
    (
        "orphan-policy-infinite-grace",
        "orphan_policy",
        "ValueError",
        "float('inf')",
        "spawn(T, orphan_policy=('kill', v))",
    ),
    (
        "orphan-policy-huge-grace",
        "orphan_policy",
        "ValueError",
        "1e300",
        "spawn(T, orphan_policy=('kill', v))",
    ),
    (
        "orphan-policy-str-grace",
        "orphan_policy",
        "TypeError",
        "'5'",
        "spawn(T, orphan_policy=('kill', v))",
    ),
    ("hostname-without-uts", "hostname", "ValueError", "'box'", "spawn(T, hostname=v)"),
    (
        "hostname-too-long",
        "hostname",
        "ValueError",
        "'h' * 65",
        "spawn(T, namespaces=['uts'], hostname=v)",
    ),
    ("hostname-empty", "hostname", "ValueError", "''", "spawn(T, namespaces=['uts'], hostname=v)"),
    (
        "hostname-nul",
        "hostname",
        "ValueError",
        "'bo\\x00x'",
        "spawn(T, namespaces=['uts'], hostname=v)",
    ),
    ("hostname-int", "hostname", "TypeError", "5", "spawn(T, namespaces=['uts'], hostname=v)"),
    ("uid-map-without-user", "uid_map", "ValueError", "[(0, 0, 1)]", "spawn(T, uid_map=v)"),
    ("gid-map-without-user", "gid_map", "ValueError", "[(0, 0, 1)]", "spawn(T, gid_map=v)"),
    ("uid-map-negative-id", "uid_map", "ValueError", "-1", "spawn(T, uid_map=[(0, v, 1)], **U)"),
    ("gid-map-negative-id", "gid_map", "ValueError", "-1", "spawn(T, gid_map=[(v, 0, 1)], **U)"),
    ("uid-map-id-too-big", "uid_map", "ValueError", "2**32", "spawn(T, uid_map=[(0, v, 1)], **U)"),
    ("uid-map-count-0", "uid_map", "ValueError", "(0, 0, 0)", "spawn(T, uid_map=[v], **U)"),
    ("gid-map-count-0", "gid_map", "ValueError", "(0, 0, 0)", "spawn(T, gid_map=[v], **U)"),
    (
        "uid-map-count-past-the-last-id",  # the kernel's EINVAL, as a ProcessError
        "uid_map",
        "ValueError",
        "(5, 0, 2**32 - 5)",
        "spawn(T, uid_map=[v], **U)",
    ),
    (
        "gid-map-outside-range-past-the-last-id",
        "gid_map",
        "ValueError",
        "(0, 2**32 - 2, 2)",
        "spawn(T, gid_map=[v], **U)",
    ),
    ("uid-map-count-bool", "uid_map", "TypeError", "(0, 0, True)", "spawn(T, uid_map=[v], **U)"),
    ("uid-map-wrong-shape", "uid_map", "TypeError", "(0, 0)", "spawn(T, uid_map=[v], **U)"),
    ("gid-map-wrong-shape", "gid_map", "TypeError", "(0, 0, 1, 1)", "spawn(T, gid_map=[v], **U)"),
    ("uid-map-not-a-list", "uid_map", "TypeError", "'0 0 1'", "spawn(T, uid_map=v, **U)"),
    ("uid-map-str-item", "uid_map", "TypeError", "'0'", "spawn(T, uid_map=[(v, 0, 1)], **U)"),
    ("uid-map-empty", "uid_map", "ValueError", "[]", "spawn(T, uid_map=v, **U)"),
    (
        "uid-map-over-a-page",  # 180 lines of 24 bytes: under 340 lines, over 4 KiB
        "uid_map",
        "ValueError",
        "180",
        "spawn(T, uid_map=[(10**9 + i, 2 * 10**9 + i, 1) for i in range(v)], **U)",
    ),
    ("gid-map-empty", "gid_map", "ValueError", "[]", "spawn(T, gid_map=v, **U)"),
    (
        "uid-map-overlap-inside",
        "uid_map",
        "ValueError",
        "(5, 100, 10)",
        "spawn(T, uid_map=[(0, 0, 10), v], **U)",
    ),
    (
        "gid-map-overlap-outside",
        "gid_map",
        "ValueError",
        "(100, 5, 10)",
        "spawn(T, gid_map=[(0, 0, 10), v], **U)",
    ),
    (
        "uid-map-past-the-last-id",
        "uid_map",
        "ValueError",
        "(5, 0, 2**32 - 2)",
        "spawn(T, uid_map=[v], **U)",
    ),
    ("setgroups-bad-value", "setgroups", "ValueError", "'maybe'", "spawn(T, setgroups=v)"),
    ("uid-negative", "uid", "ValueError", "-1", "spawn(T, uid=v)"),
    ("uid-too-big", "uid", "ValueError", "2**32", "spawn(T, uid=v)"),
    ("uid-minus-one-as-u32", "uid", "ValueError", "2**32 - 1", "spawn(T, uid=v)"),  # "unchanged"
    ("gid-minus-one-as-u32", "gid", "ValueError", "2**32 - 1", "spawn(T, gid=v)"),
    ("uid-bool", "uid", "TypeError", "True", "spawn(T, uid=v)"),
    ("uid-str", "uid", "TypeError", "'0'", "spawn(T, uid=v)"),
    ("gid-negative", "gid", "ValueError", "-1", "spawn(T, gid=v)"),
    ("gid-too-big", "gid", "ValueError", "2**32", "spawn(T, gid=v)"),
    ("gid-bool", "gid", "TypeError", "False", "spawn(T, gid=v)"),
    ("groups-str-item", "groups", "TypeError", "'wheel'", "spawn(T, groups=[v])"),
    ("groups-negative-item", "groups", "ValueError", "-1", "spawn(T, groups=[0, v])"),
    ("groups-bool-item", "groups", "TypeError", "True", "spawn(T, groups=[v])"),
    ("groups-not-a-list", "groups", "TypeError", "5", "spawn(T, groups=v)"),
    ("groups-too-many", "groups", "ValueError", "65537", "spawn(T, groups=[0] * v)"),
]

# signal() on a live session, both parked at the checkpoint and running.
SIGNAL_CASES: list[tuple[str, str, str]] = [
    ("signal-0", "ValueError", "0"),
    ("signal-65", "ValueError", "65"),
    ("signal-negative", "ValueError", "-9"),
    ("signal-name-str", "TypeError", "'TERM'"),
    ("signal-bool", "TypeError", "True"),
    ("signal-float", "TypeError", "15.0"),
]

PROGRAM = """
import json, os, sys, threading
import linx

CASES = json.loads({cases!r})
SIGNAL_CASES = json.loads({signal_cases!r})
T = ["/bin/true"]
U = {{"namespaces": ["user"]}}
spawn = linx.spawn

class NotCallablePut:
    put = 5
    def __repr__(self):
        return "NotCallablePut()"

CLOSED_FD = os.open("/dev/null", os.O_RDONLY)
os.close(CLOSED_FD)
CLOSED_FILE = open("/dev/null")
CLOSED_FILE.close()

def children():
    found = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{{task}}/children") as f:
            found += f.read().split()
    return found

def attempt(value_src, call):
    v = eval(value_src)
    result = {{"value_repr": repr(v), "value_str": str(v)}}
    try:
        call(v)
    except Exception as exc:
        result.update(type=type(exc).__name__, message=str(exc))
    else:
        result.update(type=None, message="no exception")
    return result

fds_before = sorted(os.listdir("/proc/self/fd"))
report = {{"cases": {{}}, "signals": {{}}}}
for name, _option, _expected, value_src, call_src in CASES:
    report["cases"][name] = attempt(value_src, lambda v, src=call_src: eval(src))
report["children"] = children()
report["threads"] = threading.active_count()
report["tasks"] = len(os.listdir("/proc/self/task"))
report["fds_leaked"] = sorted(set(os.listdir("/proc/self/fd")) - set(fds_before))

# signal() needs a live session, so it comes after the checks above.
with linx.spawn(["/bin/sleep", "60"]) as s:
    assert isinstance(s.events.get(timeout=10), linx.Ready)
    for name, _expected, value_src in SIGNAL_CASES:
        report["signals"][name + "@ready"] = attempt(value_src, s.signal)
    report["stage_after_ready_signals"] = str(s.info().stage)
    s.proceed()
    assert isinstance(s.events.get(timeout=10), linx.Running)
    for name, _expected, value_src in SIGNAL_CASES:
        report["signals"][name + "@running"] = attempt(value_src, s.signal)
    s.signal(15)
    report["outcome"] = repr(s.wait(timeout=10))
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    code = PROGRAM.format(cases=json.dumps(CASES), signal_cases=json.dumps(SIGNAL_CASES))
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _check(result: dict[str, Any], option: str, expected: str) -> None:
    message = result["message"]
    assert result["type"] == expected, f"raised {result['type']} ({message}), not {expected}"
    assert option in message, f"the message does not name {option!r}: {message}"
    assert result["value_repr"] in message or result["value_str"] in message, (
        f"the message does not name the bad value {result['value_repr']}: {message}"
    )


@pytest.mark.parametrize(
    ("case", "option", "expected"), [(c[0], c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_spawn_option_raises_naming_option_and_value(
    report: dict[str, Any], case: str, option: str, expected: str
) -> None:
    _check(report["cases"][case], option, expected)


def test_bad_spawn_options_start_no_process_thread_or_fd(report: dict[str, Any]) -> None:
    assert report["children"] == [], "a process was started for bad input"
    assert report["threads"] == 1 and report["tasks"] == 1, "a thread was started for bad input"
    assert report["fds_leaked"] == [], "bad input leaked fds"


@pytest.mark.parametrize(
    ("case", "expected", "when"),
    [(c[0], c[1], when) for c in SIGNAL_CASES for when in ("ready", "running")],
    ids=[f"{c[0]}@{when}" for c in SIGNAL_CASES for when in ("ready", "running")],
)
def test_bad_signal_number_raises_naming_the_value(
    report: dict[str, Any], case: str, expected: str, when: str
) -> None:
    _check(report["signals"][f"{case}@{when}"], "signum", expected)


def test_bad_signal_numbers_leave_the_session_usable(report: dict[str, Any]) -> None:
    assert report["stage_after_ready_signals"] == "ready"
    assert report["outcome"] == "Signaled(signum=15)"


def test_unknown_stdio_keys_are_named_once_each_and_quoted_once() -> None:
    with pytest.raises(ValueError) as raised:
        stdio: Any = {"out": 1, 2: "devnull", "stdout": "inherit"}  # a key of another type too
        linx.spawn(["/bin/true"], stdio=stdio)
    assert str(raised.value) == "stdio: unknown keys 'out', 2; use stdin/stdout/stderr"
