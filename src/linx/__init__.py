"""linx: the Linux process lifecycle for Python, safe from multithreaded programs.

Spawn a child with `clone(2)` into fresh namespaces, park it at a checkpoint so you can
shape it from outside, then let it `execve` its workload or abort it; deliver signals; get
exactly one terminal outcome. No forking happens in this process: a small C agent per
session does it, driven over a socket by one background reactor thread.

    >>> import linx
    >>> with linx.spawn(["/bin/true"], namespaces=["pid"]) as s:
    ...     ready = s.events.get()        # Ready(host_pid=...)
    ...     s.proceed()
    ...     s.wait()
    Exited(code=0)
"""

from ._options import Namespace
from ._state import Info, Stage
from .errors import (
    AlreadyRunning,
    NoProcess,
    NoPty,
    NotReady,
    NotRunning,
    ProcessError,
    SessionError,
)
from .events import (
    Aborted,
    Event,
    Exited,
    Failed,
    Outcome,
    PtyInDropped,
    PtyOut,
    Ready,
    Running,
    Signaled,
    TerminalEvent,
)
from .session import Session, spawn

__version__ = "0.1.0"

__all__ = [
    "Aborted",
    "AlreadyRunning",
    "Event",
    "Exited",
    "Failed",
    "Info",
    "Namespace",
    "NoProcess",
    "NoPty",
    "NotReady",
    "NotRunning",
    "Outcome",
    "ProcessError",
    "PtyInDropped",
    "PtyOut",
    "Ready",
    "Running",
    "Session",
    "SessionError",
    "Signaled",
    "Stage",
    "TerminalEvent",
    "__version__",
    "spawn",
]
