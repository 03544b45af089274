"""`_options`: the argv fast path agrees with the general one (pure logic, no process)."""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from linx import _options, _wire

# Any code point a str can hold, lone surrogates included (os.fsencode's escapes and worse).
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()))
items = st.lists(any_text, min_size=1, max_size=6) | st.lists(st.binary(), min_size=1, max_size=6)


def general(values: list[str] | list[bytes]) -> tuple[bytes, ...] | type[Exception]:
    try:
        return tuple(_options._os_bytes(f"argv[{i}]", v) for i, v in enumerate(values))
    except (ValueError, UnicodeEncodeError) as exc:
        return type(exc)


@given(items)
def test_the_fast_path_gives_what_the_general_path_gives_or_leaves_it_to_it(
    values: list[str] | list[bytes],
) -> None:
    fast = _options._plain_os_bytes(values)
    expected = general(values)
    if fast is None:  # it must only decline what the general path refuses
        assert not isinstance(expected, tuple)
    else:
        assert fast == expected


# Text UTF-8 can encode: no lone surrogate (hypothesis may draw one by default), and no NUL.
plain_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"))


@given(st.lists(plain_text, min_size=1, max_size=6))
def test_plain_str_items_take_the_fast_path(values: list[str]) -> None:
    assert _options._plain_os_bytes(values) == tuple(os.fsencode(v) for v in values)


@pytest.mark.parametrize(
    "values",
    [
        [b"/bin/true", bytearray(b"x")],
        [bytearray(b"/bin/true")],
        ["/bin/echo", b"x"],
        ["/bin/echo", os.path],
        ["/bin/tr\0ue"],
        [b"/bin/echo", b"a\0b"],
    ],
)
def test_anything_else_is_left_to_the_general_path(values: list[object]) -> None:
    assert _options._plain_os_bytes(values) is None


def test_argv_still_names_the_bad_item() -> None:
    with pytest.raises(TypeError, match=r"argv\[1\].*bytearray"):
        _options._argv([b"/bin/echo", bytearray(b"x")])
    with pytest.raises(ValueError, match=r"argv\[1\] contains a NUL"):
        _options._argv(["/bin/echo", "a\0b"])


@pytest.mark.parametrize(
    ("given", "error"),
    [("1", TypeError), (True, TypeError), (b"1", TypeError), (float("nan"), ValueError)],
)
def test_a_bad_wait_timeout_is_refused_naming_it(given: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"timeout must be a number of seconds.*" + repr(given)[:3]):
        _options.validate_timeout(given)


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        (None, None),
        (float("inf"), None),
        (2, 2.0),
        (0.5, 0.5),
        (-1, -1.0),
        (-float("inf"), -float("inf")),
        # past float's range: OverflowError, naming nothing, before
        pytest.param(10**400, None, id="huge-int"),
        pytest.param(-(10**400), -float("inf"), id="huge-negative-int"),
    ],
)
def test_a_wait_timeout_is_none_for_no_limit_or_seconds(given: object, taken: object) -> None:
    assert _options.validate_timeout(given) == taken


@pytest.mark.parametrize("grace", [10**400, -(10**400)], ids=["huge-int", "huge-negative-int"])
def test_an_orphan_grace_past_floats_range_is_a_value_error_naming_it(grace: int) -> None:
    # math.isfinite of such an int raises OverflowError, which named neither option nor value
    with pytest.raises(ValueError, match=r"orphan_policy grace must be from 0 to"):
        _options.plan_spawn(["/bin/true"], orphan_policy=("kill", grace))


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_a_copy_of_the_default_setgroups_is_still_the_default(how: str) -> None:
    # A wrapper that takes spawn()'s defaults from its signature and copies them (deepcopy
    # of a config, pickle to a worker) must not turn the default into an explicit "deny",
    # written even without a gid map (setgroups_file/EACCES for an undumpable agent).
    import copy
    import pickle

    default = _options.DEFAULT_SETGROUPS
    if how == "copy":
        copied = copy.copy(default)
    elif how == "deepcopy":
        copied = copy.deepcopy(default)
    else:
        copied = pickle.loads(pickle.dumps(default))
    plan = _options.plan_spawn(["/bin/true"], namespaces=["user"], setgroups=copied)
    assert plan.request.setgroups is None
    plan = _options.plan_spawn(["/bin/true"], namespaces=["user"], setgroups="deny")
    assert plan.request.setgroups == b"deny"


# The kernel's rules for an id map (user_namespaces(7)): each range lies within the 32-bit
# ids, and no two ranges share an id inside, nor one outside. A map of at most 340 lines.
extent = st.tuples(
    st.integers(0, _options.MAX_ID), st.integers(0, _options.MAX_ID), st.integers(1, 2**32)
)
small_extent = st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 12))


def kernel_takes(extents: list[tuple[int, int, int]]) -> bool:
    def ids(start: int, count: int) -> range:
        return range(start, start + count)

    if any(max(a, b) + n > _options.MAX_ID + 1 for a, b, n in extents):
        return False
    for i, (a, b, n) in enumerate(extents):
        for c, d, m in extents[:i]:
            for mine, theirs in ((ids(a, n), ids(c, m)), (ids(b, n), ids(d, m))):
                if mine.start < theirs.stop and theirs.start < mine.stop:
                    return False
    return True


@given(st.lists(small_extent | extent, min_size=1, max_size=8))
@example([(0, 0, 2**32 - 1)])  # every id: the initial user namespace's own map
@example([(1, 0, 2**32 - 1)])  # one past the last id inside
def test_an_id_map_is_refused_exactly_where_the_kernel_would_refuse_it(
    extents: list[tuple[int, int, int]],
) -> None:
    try:
        text = _options._id_map("uid_map", extents)
    except ValueError as exc:
        assert not kernel_takes(extents), f"refused a map the kernel takes: {exc}"
        assert "uid_map" in str(exc)
    else:
        assert kernel_takes(extents), f"took a map the kernel refuses: {extents}"
        assert text.decode().splitlines() == [f"{a} {b} {n}" for a, b, n in extents]


def _request(**fields: object) -> _wire.Spawn:
    return _wire.Spawn(version=1, argv=(b"/bin/tr\xffue",), **fields)  # type: ignore[arg-type]


def test_stage_path_names_what_execve_chdir_and_connect_unix_acted_on() -> None:
    sock = _wire.stdio_connect_unix(b"/run/s")
    request = _request(cwd=b"/srv", stdout=sock, stderr=sock, stdin=_wire.stdio_devnull())
    assert _options.stage_path(request, "execve") == os.fsdecode(b"/bin/tr\xffue")
    assert _options.stage_path(request, "chdir") == "/srv"
    assert _options.stage_path(request, "connect_unix") == "/run/s"
    for stage in ("setuid", "clone", "agent_died", "sethostname"):
        assert _options.stage_path(request, stage) is None
    assert _options.stage_path(_request(), "chdir") is None


def test_stage_path_names_no_socket_when_two_streams_name_different_ones() -> None:
    request = _request(
        stdout=_wire.stdio_connect_unix(b"/run/a"), stderr=_wire.stdio_connect_unix(b"/run/b")
    )
    assert _options.stage_path(request, "connect_unix") is None


def test_namespace_names_are_taken_in_any_case() -> None:
    plan = _options.plan_spawn(["/bin/true"], namespaces=["PID", "Net"])
    flags = _options.CLONE_FLAGS
    assert plan.request.namespaces == flags[_options.Namespace.PID] | flags[_options.Namespace.NET]
    plan.close_fds()


def test_a_bare_kill_orphan_policy_has_the_default_grace_of_five_seconds() -> None:
    # design.md: SIGTERM, then SIGKILL after the grace, ("kill", 5.0) by default; "kill"
    # alone (OrphanPolicy's Literal) is that default, sent to the agent in milliseconds.
    bare = _options.plan_spawn(["/bin/true"], orphan_policy="kill")
    given = _options.plan_spawn(["/bin/true"], orphan_policy=("kill", 5.0))
    default = _options.plan_spawn(["/bin/true"])
    for plan in (bare, given, default):
        assert plan.request.orphan_grace_ms == 5000 and plan.request.orphan_linger is None
        assert plan.orphan_grace == 5.0
        plan.close_fds()
    linger = _options.plan_spawn(["/bin/true"], orphan_policy="linger")
    assert linger.request.orphan_linger == 1 and linger.orphan_grace is None
    linger.close_fds()


def test_an_id_map_of_340_lines_is_taken_and_one_of_341_refused() -> None:
    # The kernel's limit on lines (user_namespaces(7)), well under a page written out
    # here: the line count alone must refuse the 341st.
    lines = [(i, 1000 + i, 1) for i in range(341)]
    assert len(_options._id_map("uid_map", lines[:340]).splitlines()) == 340
    with pytest.raises(ValueError, match="uid_map has 341 entries; the kernel allows 340"):
        _options._id_map("uid_map", lines)


def test_an_id_map_of_exactly_a_page_written_out_is_refused() -> None:
    # The kernel takes a map write shorter than a page (EINVAL at 4096 bytes): 170 lines
    # of 24 bytes and one of 16 make 4096, one byte less is taken.
    lines = [(10**9 + i, 2 * 10**9 + i, 1) for i in range(170)]
    assert len(_options._id_map("uid_map", lines)) == 170 * 24
    with pytest.raises(ValueError, match="is 4096 bytes written out"):
        _options._id_map("uid_map", [*lines, (1000, 100000, 100)])
    assert len(_options._id_map("uid_map", [*lines, (1000, 100000, 10)])) == 4095
