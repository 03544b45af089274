"""Validation of `spawn()` options into a wire request, before any process exists.

Every bad value raises `TypeError` (wrong kind) or `ValueError` (right kind, bad value)
naming the option and the value. This module opens no process; the only kernel calls it
makes are `fcntl` duplicates of the fds the caller hands over (and checks they are open),
and `getcwd`.
"""

from __future__ import annotations

import enum
import errno
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from operator import itemgetter
from typing import Any, TypeAlias, TypeGuard

from . import _fds, _wire

__all__ = ["Namespace", "SpawnPlan", "plan_spawn"]


class Namespace(enum.StrEnum):
    """Namespace types, as `spawn(namespaces=...)` accepts them."""

    NET = "net"
    MOUNT = "mount"
    PID = "pid"
    UTS = "uts"
    IPC = "ipc"
    USER = "user"
    CGROUP = "cgroup"
    TIME = "time"


# From <linux/sched.h>; os.CLONE_* lacks CLONE_NEWTIME on 3.11.
CLONE_FLAGS: dict[Namespace, int] = {
    Namespace.NET: 0x40000000,
    Namespace.MOUNT: 0x00020000,
    Namespace.PID: 0x20000000,
    Namespace.UTS: 0x04000000,
    Namespace.IPC: 0x08000000,
    Namespace.USER: 0x10000000,
    Namespace.CGROUP: 0x02000000,
    Namespace.TIME: 0x00000080,
}

HOST_NAME_MAX = 64
MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel
MAX_SIGNAL = 64
MAX_GROUPS = 65536  # the kernel's NGROUPS_MAX
ID_MAP_MAX_BYTES = 4096  # a uid_map/gid_map write must be shorter than a page
MAX_FD = 2**31 - 1
MAX_FLOAT_INT = int(sys.float_info.max)  # a larger int does not convert to float
# Far beyond any use, and small enough that the agent's deadline arithmetic in
# nanoseconds cannot overflow.
MAX_ORPHAN_GRACE = 2**31 - 1
StdioValue: TypeAlias = Any
StdioSpec: TypeAlias = str | Mapping[str, StdioValue]
_STDIO_NAMES = ("stdin", "stdout", "stderr")


class _DefaultSetgroups(str):
    """The type of `DEFAULT_SETGROUPS` alone: a "deny" told apart from one the caller gave."""

    __slots__ = ()


# spawn()'s default for `setgroups`. Written only with a gid map, which needs it first;
# without one the caller may not be able to (real and effective uids that differ make the
# agent undumpable, its /proc files root's), where `unshare --user` would work. A value
# the caller gives is written for every new user namespace.
DEFAULT_SETGROUPS: str = _DefaultSetgroups("deny")


@dataclass
class SpawnPlan:
    """A validated request: the message to send and the fds that travel with it.

    `fds` are linx's own duplicates; whoever holds the plan must close them
    (`close_fds()`) once they are sent or the spawn is abandoned.
    """

    request: _wire.Spawn
    fds: list[int] = field(default_factory=list)
    auto_proceed: bool = False
    linger: bool = True

    @property
    def orphan_grace(self) -> float | None:
        """The orphan policy's grace in seconds; `None` for "linger"."""
        if self.request.orphan_linger:
            return None
        return (self.request.orphan_grace_ms or 0) / 1000

    def close_fds(self) -> None:
        _fds.close_copies(self.fds)

    def __del__(self) -> None:
        # A plan dropped with its fds (a KeyboardInterrupt between plan_spawn and the code
        # that takes it over): they are linx's own copies, and nobody else will close them.
        if self.fds:
            try:
                self.close_fds()
            except Exception:  # interpreter shutdown: the modules may be gone
                pass


def stage_path(request: _wire.Spawn, stage: str) -> str | None:
    """The path that `stage` acted on in `request`, for `ProcessError.filename`: a bare
    ENOENT from `execve`, `chdir` or `connect_unix` does not say which file is missing.
    None where the request names no single path for the stage."""
    if stage == "execve":
        return os.fsdecode(request.argv[0])
    if stage == "chdir" and request.cwd is not None:
        return os.fsdecode(request.cwd)
    if stage == "connect_unix":
        # the agent does not say which stream's socket failed: a path only if they agree
        paths = {
            directive[1:]
            for directive in (request.stdin, request.stdout, request.stderr)
            if directive and directive[0] == _wire.STDIO_CONNECT_UNIX
        }
        if len(paths) == 1:
            return os.fsdecode(paths.pop())
    return None


# --- small validators ------------------------------------------------------------------


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {value!r}")
    return value


def _os_bytes(name: str, value: object) -> bytes:
    """A str/bytes/PathLike as bytes with no NUL."""
    if not isinstance(value, str | bytes | os.PathLike):
        raise TypeError(f"{name} must be str, bytes or a path, not {value!r}")
    raw = os.fsencode(value)
    if b"\0" in raw:
        raise ValueError(f"{name} contains a NUL byte: {value!r}")
    return raw


_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def _plain_os_bytes(values: Sequence[object]) -> tuple[bytes, ...] | None:
    """`values` as bytes when all are `str` (or all `bytes`) without a NUL; else None, and
    the general path names the bad item. One join, one encode and one split instead of a
    call per item: the spawn path runs cold, and every call costs about three times what a
    warm loop says (docs/performance.md)."""
    if _FS_ENCODING != "utf-8":
        return None
    try:
        joined = "\0".join(values).encode(_FS_ENCODING, _FS_ERRORS)  # type: ignore[arg-type]
    except TypeError:  # not all str; bytes.join would take any buffer, so check first
        if not all(isinstance(value, bytes) for value in values):
            return None
        joined = b"\0".join(values)  # type: ignore[arg-type]
    except UnicodeEncodeError:
        return None
    items = tuple(joined.split(b"\0"))
    return items if len(items) == len(values) else None  # more: an item had a NUL


def _id(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"{name} must be between 0 and {MAX_ID}, not {value!r}")
    return value


def validate_timeout(timeout: object) -> float | None:
    """A `wait()` timeout: None (no limit) or a number of seconds, not NaN. A negative one
    means "do not wait"; an infinite one, no limit."""
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if isinstance(timeout, int) and abs(timeout) > MAX_FLOAT_INT:
        # float() of it would raise OverflowError, naming nothing; so many seconds are as
        # good as no limit (negative: as no wait), as an infinite float is taken.
        return None if timeout > 0 else -float("inf")
    if math.isnan(timeout):
        raise ValueError(f"timeout must be a number of seconds, not {timeout!r}")
    return None if math.isinf(timeout) and timeout > 0 else float(timeout)


def validate_signal(signum: object) -> int:
    """A signal number in 1..64 (a `signal.Signals` is an int)."""
    if not isinstance(signum, int) or isinstance(signum, bool):
        raise TypeError(f"signum must be an int, not {signum!r}")
    if not 1 <= signum <= MAX_SIGNAL:
        raise ValueError(f"signum must be between 1 and {MAX_SIGNAL}, not {signum!r}")
    return int(signum)


# --- options ---------------------------------------------------------------------------


def _is_sequence(value: object) -> TypeGuard[Sequence[object]]:
    """A sequence but not a string; a list or tuple without the slower ABC check."""
    if isinstance(value, list | tuple):
        return True
    return not isinstance(value, str | bytes) and isinstance(value, Sequence)


def _argv(argv: object) -> tuple[bytes, ...]:
    if not _is_sequence(argv):
        raise TypeError(f"argv must be a sequence of str or bytes, not {argv!r}")
    if not argv:
        raise ValueError(f"argv must not be empty, got {argv!r}")
    items = _plain_os_bytes(argv)
    if items is None:
        items = tuple(_os_bytes(f"argv[{i}]", arg) for i, arg in enumerate(argv))
    if not items[0].startswith(b"/"):
        raise ValueError(f"argv[0] must be an absolute path (no $PATH lookup), not {argv[0]!r}")
    return items


def _namespaces(namespaces: object) -> frozenset[Namespace]:
    if type(namespaces) is tuple and not namespaces:
        return _NO_NAMESPACES  # the default
    if isinstance(namespaces, str | bytes) or not isinstance(namespaces, Iterable):
        raise TypeError(f"namespaces must be a collection of names, not {namespaces!r}")
    found = set()
    for item in namespaces:
        if not isinstance(item, str):
            raise TypeError(f"namespaces: each entry must be a str, not {item!r}")
        try:
            found.add(Namespace(item.lower()))
        except ValueError:
            known = " ".join(n.value for n in Namespace)
            raise ValueError(f"namespaces: unknown namespace {item!r} (known: {known})") from None
    return frozenset(found)


_NO_NAMESPACES: frozenset[Namespace] = frozenset()

_inherited_env: tuple[dict[bytes, bytes], tuple[bytes, ...]] = ({}, ())


def live_environment() -> dict[bytes, bytes]:
    """The dict behind `os.environb` itself (a copy where there is none): copy it with one
    `dict()` call before walking it, since another thread may change it meanwhile."""
    return getattr(os.environb, "_data", None) or dict(os.environb)


def _current_environment() -> tuple[bytes, ...]:
    """This process's environment as `KEY=VALUE` entries, re-encoded only when it changed."""
    global _inherited_env
    current = live_environment()
    snapshot, encoded = _inherited_env
    if current != snapshot:  # one C-level comparison: atomic under the GIL
        # Copied in one C call before it is walked: another thread may change os.environ
        # meanwhile, and walking the live dict would raise, or pair a stale encoding
        # with the new snapshot.
        snapshot = dict(current)
        encoded = tuple(k + b"=" + v for k, v in snapshot.items())
        _inherited_env = (snapshot, encoded)
    return encoded


def _env(env: object) -> tuple[bytes, ...]:
    if env is None:
        return _current_environment()
    if isinstance(env, Mapping):
        pairs = [(_os_bytes("env key", k), _os_bytes(f"env[{k!r}]", v)) for k, v in env.items()]
        for key, _ in pairs:
            if not key or b"=" in key:
                raise ValueError(f"env: a key must be non-empty and contain no '=': {key!r}")
        return tuple(k + b"=" + v for k, v in pairs)
    if not _is_sequence(env):
        raise TypeError(f"env must be a mapping or a sequence of 'KEY=VALUE', not {env!r}")
    items = tuple(_os_bytes(f"env[{i}]", entry) for i, entry in enumerate(env))
    for item in items:
        if b"=" not in item[1:]:
            raise ValueError(f"env entries must look like 'KEY=VALUE', not {item!r}")
    return items


def _cwd(cwd: object) -> bytes:
    if cwd is not None:
        return _absolute_path("cwd", cwd)
    # Never the launcher's directory instead: a workload acting on relative paths would
    # act somewhere unrelated.
    return _current_directory("the workload cannot inherit it; pass cwd=")


def _current_directory(consequence: str) -> bytes:
    """This process's working directory; `FileNotFoundError` saying `consequence` if it
    was removed."""
    try:
        return os.getcwdb()
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, f"linx: the current directory no longer exists, so {consequence}"
        ) from None


def _absolute_path(name: str, value: object) -> bytes:
    """`value` as `_os_bytes`, made absolute against this process's working directory now,
    as `subprocess` would take it. The agent's own is the launcher's: wherever this process
    was when the launcher started."""
    path = _os_bytes(name, value)
    if path.startswith(b"/"):
        return path
    if not path:
        raise ValueError(f"{name} must not be empty, got {value!r}")
    where = _current_directory(f"{name} {value!r}, relative, cannot be made absolute")
    return os.path.join(where, path)


def _orphan_policy(policy: object) -> tuple[int | None, int | None]:
    """(orphan_grace_ms, orphan_linger) for the wire."""
    if policy == "linger":
        return None, 1
    if policy == "kill":
        return 5000, None
    if isinstance(policy, tuple) and len(policy) == 2 and policy[0] == "kill":
        grace = policy[1]
        if not isinstance(grace, int | float) or isinstance(grace, bool):
            raise TypeError(f"orphan_policy grace must be a number of seconds, not {grace!r}")
        # The range first: math.isfinite of an int past float's range raises OverflowError.
        if not 0 <= grace <= MAX_ORPHAN_GRACE or not math.isfinite(grace):
            raise ValueError(
                f"orphan_policy grace must be from 0 to {MAX_ORPHAN_GRACE} seconds, not {grace!r}"
            )
        return round(grace * 1000), None
    raise ValueError(f"orphan_policy must be 'linger' or ('kill', seconds), not {policy!r}")


def _setgroups(value: object, spaces: frozenset[Namespace], gids: bytes | None) -> bytes | None:
    """What to write to the new user namespace's setgroups file, if anything (see
    DEFAULT_SETGROUPS): a value the caller gave, even without a gid map (it may write one
    at the checkpoint), and the default with a gid map."""
    if value not in ("deny", "allow"):
        raise ValueError(f"setgroups must be 'deny' or 'allow', not {value!r}")
    # isinstance, not `is`: a copy of the default (copy, deepcopy, pickle) is still it
    if Namespace.USER not in spaces or (isinstance(value, _DefaultSetgroups) and gids is None):
        return None
    return str(value).encode()


def _id_map(name: str, entries: object) -> bytes:
    if isinstance(entries, str | bytes) or not isinstance(entries, Iterable):
        raise TypeError(f"{name} must be a list of (inside, outside, count), not {entries!r}")
    lines = []
    extents: list[tuple[int, int, int]] = []
    for entry in entries:
        if not isinstance(entry, tuple | list) or len(entry) != 3:
            raise TypeError(f"{name}: each entry must be (inside, outside, count), not {entry!r}")
        inside, outside = (_id(f"{name} entry {entry!r}", v) for v in entry[:2])
        count = _id_count(name, entry, inside, outside, entry[2])
        extents.append((inside, outside, count))
        lines.append(f"{inside} {outside} {count}\n")
    if not lines:
        raise ValueError(f"{name} must not be empty, got {entries!r}")
    if len(lines) > 340:
        raise ValueError(f"{name} has {len(lines)} entries; the kernel allows 340")
    if len(extents) > 1:  # the common map, one line, is spared the sorting
        _no_overlap(name, extents, inside=True)
        _no_overlap(name, extents, inside=False)
    text = "".join(lines).encode()
    if len(text) >= ID_MAP_MAX_BYTES:
        raise ValueError(
            f"{name} of {len(lines)} entries is {len(text)} bytes written out; the kernel "
            f"takes under {ID_MAP_MAX_BYTES}"
        )
    return text


def _no_overlap(name: str, extents: list[tuple[int, int, int]], *, inside: bool) -> None:
    """The kernel refuses a map whose ranges overlap on either side with EINVAL, and only
    once the process exists: say which two entries, before it does."""
    side = 0 if inside else 1
    ordered = sorted(extents, key=itemgetter(side))
    for earlier, later in pairwise(ordered):
        if earlier[side] + earlier[2] > later[side]:
            where = "inside" if inside else "outside"
            raise ValueError(f"{name}: {earlier!r} and {later!r} overlap {where}")


def _id_count(name: str, entry: object, inside: int, outside: int, count: object) -> int:
    """An id map line's count: at least 1, and neither range may reach past the last id,
    which the kernel refuses (EINVAL). (0, 0, 4294967295), every id, is the initial user
    namespace's own map, and fits."""
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"{name} entry {entry!r} must be an int, not {count!r}")
    if count < 1:
        raise ValueError(f"{name}: count must be at least 1 in {entry!r}")
    if max(inside, outside) + count > MAX_ID + 1:
        raise ValueError(
            f"{name}: entry {entry!r} runs past the last id, {MAX_ID}: count can be at most "
            f"{MAX_ID + 1 - max(inside, outside)}"
        )
    return count


def _groups(groups: object) -> bytes:
    if isinstance(groups, str | bytes) or not isinstance(groups, Iterable):
        raise TypeError(f"groups must be a sequence of gids, not {groups!r}")
    encoded = b"".join(_id("groups entry", g).to_bytes(4, "little") for g in groups)
    if len(encoded) > 4 * MAX_GROUPS:
        raise ValueError(f"groups has {len(encoded) // 4} gids; the kernel allows {MAX_GROUPS}")
    return encoded


def _owner(owner: object) -> None:
    if owner is not None and not callable(getattr(owner, "put", None)) and not callable(owner):
        raise TypeError(f"owner must have a put() method or be callable, not {owner!r}")


def plan_spawn(
    argv: object,
    *,
    namespaces: object = (),
    env: object = None,
    cwd: object = None,
    stdio: object = "inherit",
    owner: object = None,
    linger: object = True,
    auto_proceed: object = False,
    no_new_privs: object = False,
    orphan_policy: object = ("kill", 5.0),
    hostname: object = None,
    uid_map: object = None,
    gid_map: object = None,
    setgroups: object = DEFAULT_SETGROUPS,
    uid: object = None,
    gid: object = None,
    groups: object = None,
) -> SpawnPlan:
    """Check every option; return the request. Raises before touching any fd on bad input."""
    args = _argv(argv)
    spaces = _namespaces(namespaces)
    environment = _env(env)
    _owner(owner)
    keep_alive = _bool("linger", linger)
    proceed = _bool("auto_proceed", auto_proceed)
    nnp = _bool("no_new_privs", no_new_privs)
    grace_ms, lingers = _orphan_policy(orphan_policy)
    host = None
    if hostname is not None:
        host = _os_bytes("hostname", hostname)
        if Namespace.UTS not in spaces:
            raise ValueError(f"hostname={hostname!r} needs the 'uts' namespace")
        if not 0 < len(host) <= HOST_NAME_MAX:
            raise ValueError(f"hostname must be 1 to {HOST_NAME_MAX} bytes, not {hostname!r}")
    uids = None if uid_map is None else _id_map("uid_map", uid_map)
    gids = None if gid_map is None else _id_map("gid_map", gid_map)
    for name, given, encoded in (("uid_map", uid_map, uids), ("gid_map", gid_map, gids)):
        if encoded is not None and Namespace.USER not in spaces:
            raise ValueError(f"{name}={given!r} needs the 'user' namespace")
    setgroups_file = _setgroups(setgroups, spaces, gids)
    uid = None if uid is None else _id("uid", uid)
    gid = None if gid is None else _id("gid", gid)
    group_list = None if groups is None else _groups(groups)
    stdio_plan = _check_stdio(stdio)
    workdir = _cwd(cwd)
    fds: list[int] = []
    try:
        stdio_values = _stdio_directives(stdio_plan, fds)  # last: the only step that opens fds
        request = _wire.Spawn(
            version=_wire.VERSION,
            argv=args,
            env=environment,
            cwd=workdir,
            namespaces=sum(CLONE_FLAGS[n] for n in spaces) if spaces else None,
            hostname=host,
            uid_map=uids,
            gid_map=gids,
            setgroups=setgroups_file,
            uid=uid,
            gid=gid,
            groups=group_list,
            stdin=stdio_values[0],
            stdout=stdio_values[1],
            stderr=stdio_values[2],
            auto_proceed=1 if proceed else None,
            no_new_privs=1 if nnp else None,
            orphan_grace_ms=grace_ms,
            orphan_linger=lingers,
        )
        return SpawnPlan(request, fds, auto_proceed=proceed, linger=keep_alive)
    except BaseException:  # a KeyboardInterrupt, say: the copies are linx's to close
        _fds.close_copies(fds)
        raise


# --- stdio ---------------------------------------------------------------------------------


def _check_stdio(stdio: object) -> dict[str, StdioValue]:
    """Per-fd directives, checked for shape; nothing opened yet."""
    if isinstance(stdio, str):
        if stdio == "pty":
            raise ValueError("stdio='pty' is not available in this version of linx")
        if stdio not in ("inherit", "devnull"):
            raise ValueError(f"stdio must be 'inherit', 'devnull' or a dict, not {stdio!r}")
        return dict.fromkeys(_STDIO_NAMES, stdio)
    if not isinstance(stdio, Mapping):
        raise TypeError(f"stdio must be a str or a dict, not {stdio!r}")
    unknown = set(stdio) - set(_STDIO_NAMES)
    if unknown:
        names = ", ".join(sorted(map(repr, unknown)))  # by repr: the keys may be of any type
        raise ValueError(f"stdio: unknown keys {names}; use stdin/stdout/stderr")
    return {name: _check_stdio_value(name, stdio.get(name, "inherit")) for name in _STDIO_NAMES}


def _check_stdio_value(name: str, value: StdioValue) -> StdioValue:
    """`value` checked; a `connect_unix` path comes back absolute, as bytes (the agent
    connects it from the launcher's directory, not this process's)."""
    if value in ("inherit", "devnull"):
        return value
    if isinstance(value, tuple):
        if len(value) != 2 or value[0] != "connect_unix":
            raise ValueError(f"stdio[{name!r}]: expected ('connect_unix', path), not {value!r}")
        return ("connect_unix", _absolute_path(f"stdio[{name!r}] path", value[1]))
    if isinstance(value, str):
        raise ValueError(
            f"stdio[{name!r}] must be 'inherit', 'devnull', a tuple or an fd: {value!r}"
        )
    fd = _fileno(name, value)
    try:
        os.fstat(fd)
    except OSError:
        raise ValueError(f"stdio[{name!r}]: fd {fd} is not open") from None
    return value


def _fileno(name: str, value: StdioValue) -> int:
    if isinstance(value, bool):
        raise TypeError(f"stdio[{name!r}] must not be a bool: {value!r}")
    if isinstance(value, int):
        fd = value
    elif callable(getattr(value, "fileno", None)):
        try:
            fd = value.fileno()
        except (OSError, ValueError) as exc:  # a closed file, StringIO's UnsupportedOperation
            raise ValueError(f"stdio[{name!r}]: {value!r} has no file descriptor: {exc}") from exc
    else:
        raise TypeError(f"stdio[{name!r}]: {value!r} is not a directive, an fd or a file")
    if not isinstance(fd, int) or isinstance(fd, bool) or not 0 <= fd <= MAX_FD:
        raise ValueError(f"stdio[{name!r}]: invalid file descriptor {fd!r}")
    return fd


def _stdio_directives(stdio: dict[str, StdioValue], fds: list[int]) -> list[bytes]:
    """Wire values for fds 0, 1, 2; fds to pass are duplicated into `fds`, which the caller
    closes, also when this raises."""
    return [
        _stdio_directive(fds, target, name, value)
        for target, (name, value) in enumerate(stdio.items())
    ]


def _stdio_directive(fds: list[int], target: int, name: str, value: StdioValue) -> bytes:
    if value == "devnull":
        return _wire.stdio_devnull()
    if isinstance(value, tuple):
        return _wire.stdio_connect_unix(os.fsencode(value[1]))
    fd = target if value == "inherit" else _fileno(name, value)
    try:
        # never 0-2: the next target must see those as they are; into `fds` at once, which
        # its caller closes should anything fail (or be interrupted) from here on
        _fds.duplicate(fd, fds)
    except OSError as exc:
        if exc.errno != errno.EBADF:  # out of fds, say: not the workload's to go without
            raise OSError(
                exc.errno, f"linx: stdio[{name!r}]: copying fd {fd} failed: {exc.strerror}"
            ) from exc
        if value == "inherit":
            return _wire.stdio_closed()  # the caller's own fd is closed: so is the workload's
        raise ValueError(f"stdio[{name!r}]: fd {fd} is not open") from None
    return _FD_DIRECTIVES[len(fds) - 1]


_FD_DIRECTIVES = tuple(_wire.stdio_fd(index) for index in range(len(_STDIO_NAMES)))
