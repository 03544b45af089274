"""The types of `spawn()`'s arguments, and of `exit_reason`, as a type checker sees them.

These say what SPEC §3-§5 promise, so that a user's type checker catches a wrong option
before it runs. The checks at run time, which name the bad value, are `_options.py`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol, TypeAlias

from .errors import ProcessError
from .events import Event


class HasFileno(Protocol):
    """An open file, socket or anything else that has an fd."""

    def fileno(self) -> int: ...


class SupportsPut(Protocol):
    """An owner that takes events by `put` (a `queue.Queue`, an `asyncio.Queue`, ...)."""

    def put(self, event: Event, /) -> object: ...


PathArg: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]
EnvArg: TypeAlias = Mapping[str, str | bytes] | Mapping[bytes, str | bytes] | Sequence[str | bytes]
StdioTarget: TypeAlias = (
    Literal["inherit", "devnull"] | tuple[Literal["connect_unix"], PathArg] | int | HasFileno
)
StdioArg: TypeAlias = Literal["inherit", "devnull", "pty"] | Mapping[str, StdioTarget]
Owner: TypeAlias = SupportsPut | Callable[[Event], object]
OrphanPolicy: TypeAlias = Literal["linger", "kill"] | tuple[Literal["kill"], float]
ExitReason: TypeAlias = (
    Literal["normal"]
    | tuple[Literal["exited", "signaled"], int]
    | tuple[Literal["shutdown"], Literal["aborted"]]
    | tuple[Literal["error"], ProcessError]
)
