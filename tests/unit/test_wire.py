"""The wire codec: round trips, framing across arbitrary splits, and garbage handling."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from linx import _wire

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
small_bytes = st.binary(max_size=64)
opt = st.none

spawn_requests = st.builds(
    _wire.Spawn,
    version=st.just(1),
    argv=st.lists(small_bytes, min_size=1, max_size=5).map(tuple),
    env=st.lists(small_bytes, max_size=5).map(tuple),
    cwd=opt() | small_bytes,
    namespaces=opt() | u64,
    hostname=opt() | small_bytes,
    uid_map=opt() | small_bytes,
    gid_map=opt() | small_bytes,
    setgroups=opt() | st.sampled_from([b"deny", b"allow"]),
    uid=opt() | u32,
    gid=opt() | u32,
    groups=opt() | small_bytes,
    stdin=opt() | small_bytes,
    stdout=opt() | small_bytes,
    stderr=opt() | small_bytes,
    auto_proceed=opt() | u32,
    no_new_privs=opt() | u32,
    orphan_grace_ms=opt() | u64,
    orphan_linger=opt() | u32,
)
commands = st.one_of(
    st.builds(_wire.Proceed), st.builds(_wire.Abort), st.builds(_wire.Signal, signum=u32)
)
agent_messages = st.one_of(
    st.builds(_wire.Spawned, host_pid=u32, agent_pid=opt() | u32),
    st.builds(_wire.Ready, host_pid=u32, child_pid=opt() | u32),
    st.builds(_wire.Running),
    st.builds(_wire.Exited, code=u32),
    st.builds(_wire.Signaled, signum=u32),
    st.builds(_wire.Aborted),
    st.builds(_wire.Error, stage=small_bytes, errno=u32),
    st.builds(_wire.Notice, stage=small_bytes, errno=u32),
)
launcher_messages = st.one_of(
    st.builds(_wire.AgentExited, token=u64, exit_code=opt() | u32, term_signal=opt() | u32),
    st.builds(_wire.LaunchFailed, token=u64, stage=small_bytes, errno=u32),
)


def _feed_in_pieces(reader: _wire.FrameReader, data: bytes, cuts: list[int]) -> list[object]:
    out: list[object] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        out += reader.feed(data[start:end])
    return out


@given(st.lists(spawn_requests | commands, min_size=1, max_size=6), st.lists(st.integers(0, 10**6)))
def test_requests_round_trip_across_any_split(
    messages: list[_wire.Message], cuts: list[int]
) -> None:
    data = b"".join(_wire.encode(m) for m in messages)
    reader = _wire.FrameReader(_wire.SESSION_REQUESTS, _wire.MAX_REQUEST)
    assert _feed_in_pieces(reader, data, cuts) == messages
    assert reader.pending == 0


@given(st.lists(agent_messages, min_size=1, max_size=8), st.lists(st.integers(0, 10**6)))
def test_agent_messages_round_trip_across_any_split(
    messages: list[_wire.Message], cuts: list[int]
) -> None:
    data = b"".join(_wire.encode(m) for m in messages)
    reader = _wire.FrameReader(_wire.AGENT_MESSAGES)
    assert _feed_in_pieces(reader, data, cuts) == messages


def _fields_of(frame: bytes) -> list[bytes]:
    """The tag-length-value fields of an encoded frame, each as its bytes."""
    body, found, pos = frame[_wire._HEAD.size :], [], 0
    while pos < len(body):
        _, size = _wire._FIELD.unpack_from(body, pos)
        found.append(body[pos : pos + _wire._FIELD.size + size])
        pos += _wire._FIELD.size + size
    return found


@given(agent_messages | launcher_messages | commands, st.randoms(use_true_random=False))
def test_fields_in_any_order_decode_alike(message: _wire.Message, order: random.Random) -> None:
    # The agent writes fields in tag order, which integer-only messages read in one struct
    # call; any other order takes the general loop and must give the same message.
    frame = _wire.encode(message)
    fields = _fields_of(frame)
    order.shuffle(fields)
    assert _wire.decode_body(type(message), b"".join(fields)) == message


@given(st.lists(launcher_messages, min_size=1, max_size=4))
def test_launcher_messages_round_trip(messages: list[_wire.Message]) -> None:
    reader = _wire.FrameReader(_wire.LAUNCHER_REPLIES)
    assert reader.feed(b"".join(_wire.encode(m) for m in messages)) == messages


@given(st.binary(max_size=512))
def test_garbage_raises_only_wire_error(data: bytes) -> None:
    for table in (_wire.AGENT_MESSAGES, _wire.SESSION_REQUESTS, _wire.LAUNCHER_REPLIES):
        reader = _wire.FrameReader(table, 1 << 16)
        try:
            reader.feed(data)
        except _wire.WireError:
            with pytest.raises(_wire.WireError):
                reader.feed(b"")  # a broken reader stays broken


@given(agent_messages, st.integers(0, 40), st.binary(min_size=1, max_size=8))
def test_corrupted_frames_raise_only_wire_error(
    message: _wire.Message, at: int, junk: bytes
) -> None:
    data = bytearray(_wire.encode(message))
    pos = at % len(data)
    data[pos : pos + len(junk)] = junk
    try:
        _wire.FrameReader(_wire.AGENT_MESSAGES, 1 << 16).feed(bytes(data))
    except _wire.WireError:
        pass


def test_unknown_tags_are_skipped_for_forward_compatibility() -> None:
    frame = _wire.encode(_wire.Exited(code=3))
    extra = struct.pack("<HI", 99, 2) + b"xx"
    body = frame[4:] + extra
    patched = struct.pack("<I", len(body)) + body
    assert _wire.FrameReader(_wire.AGENT_MESSAGES).feed(patched) == [_wire.Exited(code=3)]


def test_frame_over_the_cap_is_refused_from_its_header_alone() -> None:
    reader = _wire.FrameReader(_wire.AGENT_MESSAGES, max_frame=100)
    with pytest.raises(_wire.WireError, match="exceeds the cap"):
        reader.feed(struct.pack("<IH", 101, _wire.Running.TYPE))


def test_missing_required_field_is_refused() -> None:
    frame = struct.pack("<IH", 2, _wire.Exited.TYPE)
    with pytest.raises(_wire.WireError, match="required field 'code'"):
        _wire.FrameReader(_wire.AGENT_MESSAGES).feed(frame)


def test_wrong_size_for_an_integer_field_is_refused() -> None:
    body = struct.pack("<H", _wire.Exited.TYPE) + struct.pack("<HI", 1, 3) + b"abc"
    with pytest.raises(_wire.WireError, match="3 bytes for a u32"):
        _wire.FrameReader(_wire.AGENT_MESSAGES).feed(struct.pack("<I", len(body)) + body)


def test_encoding_refuses_out_of_range_integers() -> None:
    with pytest.raises(_wire.WireError, match="out of range"):
        _wire.encode(_wire.Signal(signum=2**32))


def test_encoding_refuses_a_missing_required_field() -> None:
    with pytest.raises(_wire.WireError, match="version"):
        _wire.encode(_wire.Spawn(version=None, argv=(b"/bin/true",)))  # type: ignore[arg-type]


# Random bytes almost never get past the frame header (a random length is over the cap, a
# random type unknown), so `test_garbage_raises_only_wire_error` hardly reaches the field
# decoder. Here every frame is well delimited and of a known type; only its fields are
# garbage: tags the message knows (mostly) or not, sizes that match their data, overrun the
# frame or stop short of it, and a tail too short to be a field header.
_TABLES = (_wire.AGENT_MESSAGES, _wire.SESSION_REQUESTS, _wire.LAUNCHER_REPLIES)


@st.composite
def _known_frame_with_garbage_fields(
    draw: st.DrawFn,
) -> tuple[dict[int, type[_wire.Message]], bytes]:
    table = draw(st.sampled_from(_TABLES))
    cls = table[draw(st.sampled_from(sorted(table)))]
    tags = [spec.tag for _, spec in _wire._wire_fields(cls)] + [0, 99]
    body = b""
    for _ in range(draw(st.integers(0, 5))):
        tag = draw(st.sampled_from(tags))
        data = draw(st.binary(max_size=12))
        # its own length, an integer's width whatever the data, a byte off, far too much
        size = draw(st.sampled_from([len(data), 4, 8, len(data) + 1, len(data) - 1, 1000]))
        body += struct.pack("<HI", tag, max(size, 0)) + data
    body += draw(st.binary(max_size=5))
    return table, struct.pack("<IH", len(body) + 2, cls.TYPE) + body


def _frame(cls: type[_wire.Message], body: bytes) -> bytes:
    return struct.pack("<IH", len(body) + 2, cls.TYPE) + body


@settings(max_examples=1000)
@given(_known_frame_with_garbage_fields())
# a u32 claiming its 4 bytes with 2 left in the frame; a tail too short for a field header
@example((_wire.AGENT_MESSAGES, _frame(_wire.Exited, struct.pack("<HI", 1, 4) + b"ab")))
@example((_wire.AGENT_MESSAGES, _frame(_wire.Exited, b"abc")))
def test_known_frames_with_garbage_fields_raise_only_wire_error(
    table_and_frame: tuple[dict[int, type[_wire.Message]], bytes],
) -> None:
    table, frame = table_and_frame
    try:
        _wire.FrameReader(table, 1 << 16).feed(frame)
    except _wire.WireError:
        pass


def test_inbound_frames_are_capped_at_16_mib_by_default() -> None:
    # protocol.md, Limits: any frame from the agent or launcher is at most 16 MiB; a reader
    # made without a cap (the channel's, the launcher's) must refuse a larger length.
    reader = _wire.FrameReader(_wire.AGENT_MESSAGES)
    with pytest.raises(_wire.WireError, match="exceeds the cap"):
        reader.feed(struct.pack("<IH", (16 << 20) + 1, _wire.Running.TYPE))
    header = struct.pack("<IH", 16 << 20, _wire.Running.TYPE)
    assert _wire.FrameReader(_wire.AGENT_MESSAGES).feed(header) == []  # waits for the rest


def test_an_integer_field_longer_than_its_width_is_refused() -> None:
    # Eight bytes for a u32 is a malformed field, not a u32 and four bytes to drop.
    body = struct.pack("<H", _wire.Exited.TYPE) + struct.pack("<HI", 1, 8) + bytes(8)
    with pytest.raises(_wire.WireError, match="8 bytes for a u32"):
        _wire.FrameReader(_wire.AGENT_MESSAGES).feed(struct.pack("<I", len(body)) + body)


def test_a_body_of_the_usual_size_with_other_field_sizes_is_not_read_as_usual() -> None:
    # SPAWNED is usually two u32 fields, 20 bytes. This body of 20 bytes has a first field
    # of 8 bytes and a second of 0, and where the usual layout has its second tag, a 2:
    # read as the usual layout it would give host_pid 7 instead of refusing a u32 of 8.
    body = struct.pack("<HI", 1, 8) + struct.pack("<IHH", 7, 2, 0) + struct.pack("<HI", 2, 0)
    with pytest.raises(_wire.WireError, match="8 bytes for a u32"):
        _wire.FrameReader(_wire.AGENT_MESSAGES).feed(_frame(_wire.Spawned, body))


def test_encoding_refuses_a_bool_for_an_integer_field() -> None:
    with pytest.raises(_wire.WireError, match="needs an int"):
        _wire.encode(_wire.Signal(signum=True))


def test_the_same_long_tuple_as_two_repeated_fields_encodes_each_with_its_own_tag() -> None:
    # The encoder caches the last long repeated field by identity; the cache must be per
    # tag, or the second field would be sent with the first one's tag.
    items = tuple(b"K%d=v" % i for i in range(12))
    request = _wire.Spawn(version=1, argv=items, env=items)
    [decoded] = _wire.FrameReader(_wire.SESSION_REQUESTS, _wire.MAX_REQUEST).feed(
        _wire.encode(request)
    )
    assert decoded == request


def test_a_single_valued_field_given_twice_is_refused() -> None:
    # Two EXITED codes: which one is the workload's? Neither; the frame is malformed.
    body = struct.pack("<HII", 1, 4, 3) + struct.pack("<HII", 1, 4, 0)
    with pytest.raises(_wire.WireError, match="field 'code' repeated"):
        _wire.FrameReader(_wire.AGENT_MESSAGES).feed(_frame(_wire.Exited, body))


@pytest.mark.parametrize("length", [0, 1])
def test_a_frame_too_short_for_its_type_is_refused_from_its_header(length: int) -> None:
    # A length of 1 covers one byte of the two-byte type: refused as such, not read past
    # the frame (into the next one, or off the end of the data as a struct.error).
    frame = struct.pack("<I", length) + b"\x83"
    with pytest.raises(_wire.WireError, match=f"frame length {length} is below the minimum"):
        _wire.FrameReader(_wire.AGENT_MESSAGES).feed(frame)
