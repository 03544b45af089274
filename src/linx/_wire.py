"""Codec for the agent and launcher channels: bytes <-> messages (docs/protocol.md).

Pure code: it never touches a socket, a file descriptor or a clock. Writing (`encode`) and
parsing (`FrameReader`) are separate; both are driven by one schema per message, so a new
field or message is one declaration. Malformed bytes raise `WireError` and nothing else.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import Any, ClassVar

VERSION = 1

MAX_REQUEST = 64 << 20  # first frame on a session channel (protocol.md, Limits)
MAX_COMMAND = 1 << 20  # any later frame Python -> agent
MAX_LAUNCHER_REQUEST = 4 << 10
MAX_INBOUND = 16 << 20  # any frame agent/launcher -> Python

_LEN = struct.Struct("<I")
_HEAD = struct.Struct("<IH")  # length, type
_TYPE = struct.Struct("<H")
_FIELD = struct.Struct("<HI")  # tag, size
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class WireError(ValueError):
    """Bytes that are not a valid frame or message of protocol version 1."""


class Kind(enum.Enum):
    U32 = "u32"
    U64 = "u64"
    BYTES = "bytes"


@dataclass(frozen=True)
class Field:
    tag: int
    kind: Kind
    required: bool = False
    repeated: bool = False


def field_spec(tag: int, kind: Kind, *, required: bool = False, repeated: bool = False) -> Any:
    """Declare a message attribute's wire field (stored in dataclass metadata)."""
    from dataclasses import field as dc_field

    spec = Field(tag, kind, required, repeated)
    default: Any = () if repeated else None
    return dc_field(default=default, metadata={"wire": spec})


class Message:
    """Base of every message; subclasses are slotted dataclasses with a `TYPE`.

    Treat them as values. They are not frozen: a frozen dataclass sets each field through
    `object.__setattr__`, which made building a `Spawn` and decoding the agent's frames a
    measurable part of a spawn (docs/performance.md).
    """

    __slots__ = ()
    TYPE: ClassVar[int]


# --- launcher channel -----------------------------------------------------------------


@dataclass(slots=True)
class StartAgent(Message):
    TYPE: ClassVar[int] = 0x0001
    token: int = field_spec(1, Kind.U64, required=True)


@dataclass(slots=True)
class AgentExited(Message):
    TYPE: ClassVar[int] = 0x0081
    token: int = field_spec(1, Kind.U64, required=True)
    exit_code: int | None = field_spec(2, Kind.U32)
    term_signal: int | None = field_spec(3, Kind.U32)


@dataclass(slots=True)
class LaunchFailed(Message):
    TYPE: ClassVar[int] = 0x0082
    token: int = field_spec(1, Kind.U64, required=True)
    stage: bytes = field_spec(2, Kind.BYTES, required=True)
    errno: int = field_spec(3, Kind.U32, required=True)


# --- session channel, Python -> agent -------------------------------------------------


@dataclass(slots=True)
class Spawn(Message):
    TYPE: ClassVar[int] = 0x0001
    version: int = field_spec(1, Kind.U32, required=True)
    argv: tuple[bytes, ...] = field_spec(2, Kind.BYTES, repeated=True)
    env: tuple[bytes, ...] = field_spec(3, Kind.BYTES, repeated=True)
    cwd: bytes | None = field_spec(4, Kind.BYTES)
    namespaces: int | None = field_spec(5, Kind.U64)
    hostname: bytes | None = field_spec(6, Kind.BYTES)
    uid_map: bytes | None = field_spec(7, Kind.BYTES)
    gid_map: bytes | None = field_spec(8, Kind.BYTES)
    setgroups: bytes | None = field_spec(9, Kind.BYTES)
    uid: int | None = field_spec(10, Kind.U32)
    gid: int | None = field_spec(11, Kind.U32)
    groups: bytes | None = field_spec(12, Kind.BYTES)
    stdin: bytes | None = field_spec(13, Kind.BYTES)
    stdout: bytes | None = field_spec(14, Kind.BYTES)
    stderr: bytes | None = field_spec(15, Kind.BYTES)
    auto_proceed: int | None = field_spec(16, Kind.U32)
    no_new_privs: int | None = field_spec(17, Kind.U32)
    orphan_grace_ms: int | None = field_spec(18, Kind.U64)
    orphan_linger: int | None = field_spec(19, Kind.U32)


@dataclass(slots=True)
class Proceed(Message):
    TYPE: ClassVar[int] = 0x0010


@dataclass(slots=True)
class Abort(Message):
    TYPE: ClassVar[int] = 0x0011


@dataclass(slots=True)
class Signal(Message):
    TYPE: ClassVar[int] = 0x0012
    signum: int = field_spec(1, Kind.U32, required=True)


@dataclass(slots=True)
class Kill(Message):
    """`close()`'s command: abort if not released, else SIGKILL now, even before `RUNNING`."""

    TYPE: ClassVar[int] = 0x0015


# --- session channel, agent -> Python -------------------------------------------------


@dataclass(slots=True)
class Spawned(Message):
    TYPE: ClassVar[int] = 0x0081
    host_pid: int = field_spec(1, Kind.U32, required=True)
    agent_pid: int | None = field_spec(2, Kind.U32)


@dataclass(slots=True)
class Ready(Message):
    TYPE: ClassVar[int] = 0x0082
    host_pid: int = field_spec(1, Kind.U32, required=True)
    child_pid: int | None = field_spec(2, Kind.U32)


@dataclass(slots=True)
class Running(Message):
    TYPE: ClassVar[int] = 0x0083


@dataclass(slots=True)
class Exited(Message):
    TYPE: ClassVar[int] = 0x0084
    code: int = field_spec(1, Kind.U32, required=True)


@dataclass(slots=True)
class Signaled(Message):
    TYPE: ClassVar[int] = 0x0085
    signum: int = field_spec(1, Kind.U32, required=True)


@dataclass(slots=True)
class Aborted(Message):
    TYPE: ClassVar[int] = 0x0086


@dataclass(slots=True)
class Error(Message):
    TYPE: ClassVar[int] = 0x0087
    stage: bytes = field_spec(1, Kind.BYTES, required=True)
    errno: int = field_spec(2, Kind.U32, required=True)


@dataclass(slots=True)
class Notice(Message):
    TYPE: ClassVar[int] = 0x0088
    stage: bytes = field_spec(1, Kind.BYTES, required=True)
    errno: int = field_spec(2, Kind.U32, required=True)


LAUNCHER_REPLIES: dict[int, type[Message]] = {m.TYPE: m for m in (AgentExited, LaunchFailed)}
SESSION_REQUESTS: dict[int, type[Message]] = {
    m.TYPE: m for m in (Spawn, Proceed, Abort, Signal, Kill)
}
AGENT_MESSAGES: dict[int, type[Message]] = {
    m.TYPE: m for m in (Spawned, Ready, Running, Exited, Signaled, Aborted, Error, Notice)
}


# --- stdio directives (the value of Spawn.stdin/stdout/stderr) -------------------------

STDIO_FD, STDIO_DEVNULL, STDIO_CONNECT_UNIX, STDIO_CLOSED = 1, 2, 3, 4


def stdio_fd(index: int) -> bytes:
    """Directive: the `index`-th fd sent with the request goes onto the target fd."""
    return bytes([STDIO_FD]) + _U32.pack(index)


def stdio_devnull() -> bytes:
    return bytes([STDIO_DEVNULL])


def stdio_connect_unix(path: bytes) -> bytes:
    return bytes([STDIO_CONNECT_UNIX]) + path


def stdio_closed() -> bytes:
    return bytes([STDIO_CLOSED])


# --- writing --------------------------------------------------------------------------


_SCHEMAS: dict[type[Message], tuple[tuple[str, Field], ...]] = {}


def _wire_fields(cls: type[Message]) -> tuple[tuple[str, Field], ...]:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        found = ((f.name, f.metadata.get("wire")) for f in fields(cls))  # type: ignore[arg-type]
        schema = _SCHEMAS[cls] = tuple((n, spec) for n, spec in found if spec is not None)
    return schema


def _encode_value(name: str, kind: Kind, value: Any) -> bytes:
    if kind is Kind.BYTES:
        if not isinstance(value, bytes | bytearray):
            raise WireError(f"field {name!r} needs bytes, got {value!r}")
        return bytes(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"field {name!r} needs an int, got {value!r}")
    codec = _U32 if kind is Kind.U32 else _U64
    try:
        return codec.pack(value)
    except struct.error:
        raise WireError(f"field {name!r} out of range for {kind.value}: {value!r}") from None


def _encode_field(name: str, spec: Field, value: Any) -> bytes:
    """One tag-length-value field."""
    if spec.kind is Kind.BYTES and type(value) is bytes:
        raw = value
    else:
        raw = _encode_value(name, spec.kind, value)
    return _FIELD.pack(spec.tag, len(raw)) + raw


# The last repeated field encoded, by identity: a spawn that inherits the environment
# sends the same (cached) tuple every time, and re-encoding it dominated the codec's cost.
_last_repeated: tuple[object, int, bytes] = ((), 0, b"")


def _encode_repeated(name: str, spec: Field, values: tuple[Any, ...]) -> bytes:
    global _last_repeated
    cached_values, cached_tag, cached = _last_repeated
    if values is cached_values and spec.tag == cached_tag:
        return cached
    encoded = b"".join(_encode_field(name, spec, item) for item in values)
    if len(values) > 8:
        _last_repeated = (values, spec.tag, encoded)
    return encoded


def encode(message: Message) -> bytes:
    """One frame carrying `message`."""
    parts: list[bytes] = []
    for name, spec in _wire_fields(type(message)):
        value = getattr(message, name)
        if spec.repeated:
            if not isinstance(value, tuple):
                raise WireError(f"field {name!r} needs a tuple, got {value!r}")
            if spec.required and not value:
                raise WireError(f"{type(message).__name__}: required field {name!r} missing")
            parts.append(_encode_repeated(name, spec, value))
            continue
        if value is not None:
            parts.append(_encode_field(name, spec, value))
        elif spec.required:
            raise WireError(f"{type(message).__name__}: required field {name!r} missing")
    body = b"".join(parts)
    if len(body) + 2 > 0xFFFFFFFF:
        raise WireError("frame too large")
    return _HEAD.pack(len(body) + 2, message.TYPE) + body


# --- parsing --------------------------------------------------------------------------


class _Layout:
    """One message class's fields indexed by tag, for parsing.

    Built once per class: a body is read in one pass, with no intermediate per-tag lists,
    because the reactor parses every frame of every session. A message whose fields are all
    integers also gets `whole`: one struct for the body with every field present in tag
    order, which is how the agent writes them (`SPAWNED`, `READY`, `EXITED`, ...); a body
    of that size whose tags and sizes match is read in one call, any other by the loop.
    """

    __slots__ = ("by_tag", "repeated", "required", "whole", "whole_sizes", "whole_tags")

    def __init__(self, cls: type[Message]) -> None:
        schema = _wire_fields(cls)
        self.by_tag = {spec.tag: (name, spec.kind, spec.repeated) for name, spec in schema}
        self.required = tuple(name for name, spec in schema if spec.required)
        self.repeated = tuple(name for name, spec in schema if spec.repeated)
        self.whole: struct.Struct | None = None
        self.whole_tags: tuple[int, ...] = ()
        self.whole_sizes: tuple[int, ...] = ()
        integers = [s for _, s in schema if s.kind is not Kind.BYTES and not s.repeated]
        in_order = [f.name for f in fields(cls)] == [n for n, _ in schema]  # type: ignore[arg-type]
        if schema and in_order and len(integers) == len(schema):
            codecs = [_U32 if spec.kind is Kind.U32 else _U64 for spec in integers]
            self.whole = struct.Struct("<" + "".join("HI" + c.format[1:] for c in codecs))
            self.whole_tags = tuple(spec.tag for spec in integers)
            self.whole_sizes = tuple(c.size for c in codecs)


_LAYOUTS: dict[type[Message], _Layout] = {}


def _decode_value(name: str, kind: Kind, body: memoryview, pos: int, size: int) -> int | bytes:
    if kind is Kind.BYTES:
        return bytes(body[pos : pos + size])
    codec = _U32 if kind is Kind.U32 else _U64
    if size != codec.size:
        raise WireError(f"field {name!r}: {size} bytes for a {kind.value}")
    value: int = codec.unpack_from(body, pos)[0]
    return value


def decode_body(cls: type[Message], body: bytes | memoryview) -> Message:
    """The message of type `cls` whose fields are `body` (the frame minus length and type).

    Fields with a tag `cls` does not know are skipped (forward compatibility).
    """
    layout = _LAYOUTS.get(cls) or _LAYOUTS.setdefault(cls, _Layout(cls))
    whole = layout.whole
    if whole is not None and len(body) == whole.size:
        values = whole.unpack_from(body)
        if values[0::3] == layout.whole_tags and values[1::3] == layout.whole_sizes:
            return cls(*values[2::3])
    view = memoryview(body)
    end = len(view)
    kwargs: dict[str, Any] = {}
    pos = 0
    while pos < end:
        if end - pos < _FIELD.size:
            raise WireError("truncated field header")
        tag, size = _FIELD.unpack_from(view, pos)
        pos += _FIELD.size
        if size > end - pos:
            raise WireError(f"field {tag} claims {size} bytes, {end - pos} left")
        known = layout.by_tag.get(tag)
        if known is not None:
            name, kind, repeated = known
            value = _decode_value(name, kind, view, pos, size)
            if repeated:
                kwargs.setdefault(name, []).append(value)
            elif name in kwargs:
                raise WireError(f"{cls.__name__}: field {name!r} repeated")
            else:
                kwargs[name] = value
        pos += size
    for name in layout.required:
        if name not in kwargs:
            raise WireError(f"{cls.__name__}: required field {name!r} missing")
    for name in layout.repeated:
        if name in kwargs:
            kwargs[name] = tuple(kwargs[name])
    return cls(**kwargs)


class FrameReader:
    """Incremental parser: `feed()` bytes as they arrive, get whole messages back.

    `types` maps a message type to its class; an unknown type or a frame longer than
    `max_frame` is a `WireError`. After an error the reader is unusable (the channel is
    broken; resynchronising a length-prefixed stream is not possible).
    """

    def __init__(self, types: dict[int, type[Message]], max_frame: int = MAX_INBOUND) -> None:
        self._types = types
        self._max = max_frame
        self._buf = bytearray()
        self._broken: WireError | None = None

    def feed(self, data: bytes | memoryview) -> list[Message]:
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        if buf:
            buf += data
            source: bytes | bytearray | memoryview = buf
        else:
            source = data  # the usual case: whole frames, parsed without a copy
        try:
            messages, used = self._parse(source)
        except WireError as exc:
            self._broken = exc
            raise
        if buf:
            del buf[:used]
        elif used < len(data):
            buf += data[used:]  # `data` may be the reactor's buffer: keep a copy
        return messages

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet make a whole frame."""
        return len(self._buf)

    def _parse(self, source: bytes | bytearray | memoryview) -> tuple[list[Message], int]:
        """The whole frames at the start of `source`, and how many bytes they take."""
        messages: list[Message] = []
        pos = 0
        with memoryview(source) as view:  # released before the caller resizes `source`
            end = len(view)
            while end - pos >= _LEN.size:
                (length,) = _LEN.unpack_from(view, pos)
                if length < 2:
                    raise WireError(f"frame length {length} is below the minimum of 2")
                if length > self._max:
                    raise WireError(f"frame of {length} bytes exceeds the cap of {self._max}")
                if end - pos - _LEN.size < length:
                    break
                (mtype,) = _TYPE.unpack_from(view, pos + _LEN.size)
                cls = self._types.get(mtype)
                if cls is None:
                    raise WireError(f"unknown message type 0x{mtype:04x}")
                messages.append(decode_body(cls, view[pos + _HEAD.size : pos + _LEN.size + length]))
                pos += _LEN.size + length
        return messages, pos
