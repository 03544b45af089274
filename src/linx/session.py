"""`Session` and `spawn()`: one child process, from clone to its one terminal outcome.

A session never forks this Python process. Its agent (a small C program forked by the
launcher) does the clone and the exec; this object is the handle that drives it. Every
method is thread-safe. What happens in each corner:

- `wait()` from any number of threads returns the same outcome to all; a timeout raises
  `TimeoutError` and leaves the session as it was.
- `close()` (or leaving a `with` block) on a live session aborts a parked child or kills a
  running workload with SIGKILL, and returns once it is reaped; closing twice is harmless.
  After `close()` every method raises `NoProcess`; `host_pid` and `exit_reason` stay.
- Dropping the last reference to a live session applies its `orphan_policy` without
  waiting. An owner given to `spawn()` or `set_owner()` still gets the terminal event; the
  default queue goes with the session.
- If this Python process dies, even by SIGKILL, the same orphan policy applies.
- A Python signal handler runs in the main thread between any two bytecodes, so it may
  interrupt a call on the very session it wants to use. `proceed()`, `abort()` and
  `signal()` from such a handler are carried out right after that call (what they raise
  then is logged); `info()`, `wait()`, `close()` and `set_owner()` raise `RuntimeError`,
  since they would wait for ever on the call they interrupted; so does `spawn()` from a
  handler that interrupted another `spawn()` at such a point. Forwarding a signal with
  `signal.signal(SIGTERM, lambda n, f: session.signal(n))` is safe.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import weakref
from collections.abc import Sequence
from functools import partial
from typing import Any, NoReturn, SupportsIndex

from . import _options
from ._channel import Channel
from ._owners import Deliver, make_deliver
from ._runtime import get_runtime
from ._state import Info, SessionState
from ._types import EnvArg, ExitReason, OrphanPolicy, Owner, PathArg, StdioArg
from .errors import NoProcess, ProcessError
from .events import Event, Outcome

__all__ = ["Session", "spawn"]

log = logging.getLogger("linx")

CLOSE_TIMEOUT = 30.0  # seconds close() waits for a killed workload before giving up on it


class Session:
    """The handle of one spawned process. Create it with `linx.spawn()`."""

    def __init__(self, *, _token: object = None) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use linx.spawn() to create a Session")
        self._events: queue.Queue[Event] | None = None
        # The default owner's events until someone asks for `events`: a session that is
        # only waited on never builds a queue (its locks and conditions cost a spawn more
        # than the deque and the lock below).
        self._early: collections.deque[Event] | None = None
        self._events_lock = threading.Lock()
        self._owner: Any = _UNMADE
        self._channel: Channel
        # The default owner's delivery when the caller brought its own kind (`linx.aio`);
        # None for the built-in queue, reached through `_put_default`. Never that bound
        # method itself: stored here it would be a reference cycle (see `_deliver_through`).
        self._own_deliver: Deliver | None = None

    @classmethod
    def _start(
        cls,
        plan: _options.SpawnPlan,
        owner: Any,
        *,
        default_owner: Any = None,
        front: Any = None,
        pty: bool = False,
    ) -> Session:
        """Start a validated spawn. Without `owner`, events go to `default_owner` (a fresh
        `queue.Queue` unless the caller brings its own kind, as `linx.aio` does).

        Events name the new session, or `front` (held weakly): the handle `linx.aio` made
        for it before the spawn, so that even the first event names that. `front._bind(s)`
        gets the new session before any event can be delivered."""
        session = cls(_token=_PRIVATE)
        deliver = session._take_owner(owner, default_owner)  # may refuse it: before any process
        runtime = get_runtime()
        sent = runtime.send(plan)
        # From here the agent clones while the rest of the session is made.
        try:
            state = SessionState(
                mode="spawn",
                auto_proceed=plan.auto_proceed,
                pty=pty,
                session=weakref.ref(session if front is None else front),
                path_of=partial(_options.stage_path, plan.request),
            )
            session._channel = channel = Channel(
                runtime.reactor,
                state,
                deliver,
                session,
                linger=plan.linger,
                orphan_grace=plan.orphan_grace,
                owner_outlives=owner is not None,
            )
            if front is not None:
                front._bind(session)
        except BaseException:
            runtime.abandon(sent.agent, plan)
            raise
        try:
            runtime.attach(channel, sent)
        except BaseException:
            runtime.undo_attach(channel, sent)
            raise
        return session

    def _take_owner(self, owner: Any, default_owner: Any) -> Deliver:
        """Set up who gets the events; return the channel's delivery function."""
        if owner is not None:
            self._owner = owner
            return make_deliver(owner)
        # The session owns its default owner; the channel, held by the reactor, reaches it
        # only through the session, weakly: the queue is made only when someone asks for
        # it (`_early` until then), and the reactor must not keep a dropped session alive.
        if default_owner is not None:
            self._adopt_owner(default_owner)
        else:
            self._early = collections.deque()
        return _deliver_through(weakref.ref(self))

    def _adopt_owner(self, owner: Any) -> None:
        """Make `owner` this session's own default owner."""
        if isinstance(owner, queue.Queue):
            self._events = owner
        self._own_deliver = make_deliver(owner)
        self._owner = owner

    def _put_default(self, event: Event) -> None:
        with self._events_lock:
            if self._early is not None:
                self._early.append(event)
                return
        assert self._events is not None
        self._events.put(event)

    def _make_events(self) -> None:
        with self._events_lock:
            early = self._early
            if early is None:
                return  # made by another thread meanwhile
            events: queue.Queue[Event] = queue.Queue()
            for event in early:
                events.put(event)
            self._events = events
            if self._owner is _UNMADE:  # not replaced by set_owner() meanwhile
                self._owner = events
            self._early = None  # last: a reader that sees None finds the queue made

    # --- properties ------------------------------------------------------------------------

    @property
    def events(self) -> queue.Queue[Event] | None:
        """The default owner (a `queue.Queue` of every event so far) when no `owner` was
        given, else `None`."""
        if self._early is not None:
            self._make_events()
        return self._events

    @property
    def host_pid(self) -> int | None:
        """The workload's pid as the host sees it; `None` until the agent has cloned it."""
        return self._channel.state.host_pid

    @property
    def owner(self) -> Owner:
        """Who receives this session's events."""
        owner = self._owner
        if owner is not _UNMADE:
            return owner  # type: ignore[no-any-return]  # what set_owner/spawn took
        events = self.events  # the default owner, made now if need be
        assert events is not None
        return events

    @property
    def exit_reason(self) -> ExitReason | None:
        """The reference's exit reason once terminal (`"normal"`, `("exited", n)`, ...)."""
        return self._channel.exit_reason

    # --- verbs -------------------------------------------------------------------------------

    def proceed(self) -> None:
        """Release the child from the checkpoint: it runs its pre-exec steps and `execve`s.

        Raises `NotReady` before `Ready`, `AlreadyRunning` if already released,
        `NoProcess` once the session has ended, or at `Ready` once `abort()` was called.
        """
        self._channel.send(lambda state: state.proceed())

    def abort(self) -> None:
        """Discard the child at the checkpoint; the workload never runs (`Aborted`).

        Before `Ready` the abort is buffered and fires when the child reaches the checkpoint.
        Raises `AlreadyRunning` once released, `NoProcess` once ended.
        """
        self._channel.send(lambda state: state.abort())

    def signal(self, signum: int) -> None:
        """Send `signum` to the workload (through a pidfd: a reused pid is never hit).

        Signals that reach the agent before the workload has exec'd are buffered and
        delivered in order once it has (`Running`). That is after `execve` returned, so
        the workload may have started, and set a handler for one, by then. Once the
        child is released (`proceed()`, `auto_proceed`), the agent may already be past
        `Running` when a signal reaches it, though this process has not seen `Running`
        yet; such a signal is delivered at once. Raises `NoProcess` once the session has
        ended.

        It goes to the workload alone, not to processes it started. In a new pid namespace
        the workload is that namespace's init, and the kernel drops every signal it has
        no handler for (SIGKILL and SIGSTOP from outside excepted): a plain `sleep`
        ignores SIGTERM there.
        """
        number = _options.validate_signal(signum)
        self._channel.send(lambda state: state.signal(number))

    def wait(self, timeout: float | None = None) -> Outcome:
        """Block until the terminal outcome: `Exited`, `Signaled` or `Aborted`.

        Raises `ProcessError` for a pre-exec or agent failure, `TimeoutError` if `timeout`
        seconds pass first (the session stays alive), `NoProcess` after `close()`. With
        `linger=False` the session closes itself at its end: threads already waiting get
        the outcome, a later call (an owner's on the terminal event too) `NoProcess`.
        Otherwise an owner (it runs in linx's reactor thread) gets the outcome once it is
        known (on the terminal event at the latest), and `RuntimeError` before, rather
        than a deadlock.
        """
        timeout = _options.validate_timeout(timeout)
        if self._channel.closed:
            raise NoProcess("the session is closed")
        return _unwrap(self._channel.wait(timeout))

    def info(self) -> Info:
        """A snapshot: mode, stage, host_pid, child_pid, pty, result."""
        return self._channel.info()

    def pty_write(self, data: bytes) -> None:
        """Write to the workload's terminal. Raises `NoPty` without `stdio="pty"`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {data!r}")
        self._channel.send(_require_pty)

    def pty_set_winsize(self, size: object) -> None:
        """Set the workload's terminal size. Raises `NoPty` without `stdio="pty"`."""
        self._channel.send(_require_pty)

    def set_owner(self, owner: Owner) -> None:
        """Send events from now on to `owner` (past events are not replayed)."""
        deliver = make_deliver(owner)
        self._channel.set_deliver(deliver)
        with self._events_lock:  # not undone by a default queue being made meanwhile
            self._owner = owner

    def close(self) -> None:
        """End the session: abort a parked child or kill a running workload, then release.

        A child released by `proceed()` but not yet `Running` is killed at once, not at
        `Running` as `signal(SIGKILL)` would be (it may be stopped on its way to `execve`):
        its owner then hears `Failed` with stage `exec_outcome`.

        Returns once the workload is reaped; in an owner (the reactor thread, which brings
        the outcome), at once, and the outcome follows as usual. A session whose agent does
        not answer within `CLOSE_TIMEOUT` seconds is released anyway, and threads still in
        `wait()` then raise `NoProcess`; its workload may run on until the agent does (one
        stopped by SIGSTOP, say, which a workload outside a pid namespace can send it),
        which then finds the channel closed and applies the orphan policy. Idempotent.
        """
        channel = self._channel
        if not channel.begin_close():
            return
        if get_runtime().reactor.in_reactor_thread():
            channel.finish_close_later(CLOSE_TIMEOUT)  # an owner: see finish_close_later
            return
        try:
            channel.outcome.wait(CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("linx: session %s did not end after SIGKILL; abandoning it", self)
        channel.finish_close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        channel = getattr(self, "_channel", None)
        if channel is not None:
            try:
                channel.abandon()
            except Exception:  # interpreter shutdown: the reactor may be gone
                pass

    def __copy__(self) -> Session:
        # A handle, not a value: a copy sharing the channel would, once dropped, apply the
        # orphan policy (`__del__`) to the workload the original still drives.
        return self

    def __deepcopy__(self, memo: object) -> Session:
        return self

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError("a linx.Session cannot be pickled: it is a handle on a live process")

    def __repr__(self) -> str:
        channel = getattr(self, "_channel", None)
        if channel is None:
            return "<linx.Session (not started)>"
        state = channel.state
        closed = " closed" if channel.closed else ""
        return f"<linx.Session {state.stage} host_pid={state.host_pid}{closed}>"


_PRIVATE = object()
_UNMADE = object()  # `Session._owner` while the default queue is not made yet


def _deliver_through(ref: weakref.ref[Session]) -> Deliver:
    """Delivery to a session's default owner that does not keep the session alive.

    Nothing a session holds may lead back to it (events hold theirs weakly): a session
    dropped by its caller must be freed at once, by reference counting, for its workload
    to get the orphan policy; a cycle would wait for the garbage collector.
    """

    def deliver(event: Event) -> None:
        session = ref()
        if session is None:
            return
        own = session._own_deliver
        if own is None:
            session._put_default(event)
        else:
            own(event)

    return deliver


def _require_pty(state: SessionState) -> None:
    state.require_pty()


def _unwrap(result: Outcome | ProcessError | NoProcess) -> Outcome:
    # A fresh exception per waiter: threads raising one object would share a traceback.
    if isinstance(result, ProcessError):
        raise ProcessError(result.stage, result.code, result.filename)
    if isinstance(result, NoProcess):
        raise NoProcess(*result.args)
    return result


def spawn(
    argv: Sequence[str | bytes],
    *,
    namespaces: Sequence[str] = (),
    env: EnvArg | None = None,
    cwd: PathArg | None = None,
    stdio: StdioArg = "inherit",
    owner: Owner | None = None,
    linger: bool = True,
    auto_proceed: bool = False,
    no_new_privs: bool = False,
    orphan_policy: OrphanPolicy = ("kill", 5.0),
    hostname: str | bytes | None = None,
    uid_map: Sequence[tuple[int, int, int]] | None = None,
    gid_map: Sequence[tuple[int, int, int]] | None = None,
    setgroups: str = _options.DEFAULT_SETGROUPS,
    uid: int | None = None,
    gid: int | None = None,
    groups: Sequence[int] | None = None,
) -> Session:
    """Start `argv[0]` (an absolute path) in a child cloned into `namespaces`.

    The child parks at the checkpoint (`Ready`) until `proceed()` unless `auto_proceed`.
    Returns at once; events go to `owner` (default: `session.events`, a `queue.Queue`).
    Bad options raise `TypeError`/`ValueError` naming the value, before any process exists.

    - `argv`: `str`/`bytes` items, no NUL; `argv[0]` is executed as given (no `$PATH`).
    - `namespaces`: any of "user", "pid", "mount", "uts", "ipc", "net", "cgroup", "time"
      (or `linx.Namespace`). Each is new at `Ready` and can be shaped from outside then,
      through `/proc/<host_pid>`; "time" is entered at `execve` and "cgroup" made on
      release, rooted where the child is by then.
    - `env`: a mapping or a sequence of "K=V"; `None` sends `os.environ` as it is now.
      `cwd`: the workload's directory; `None` is this process's, as it is now.
    - `stdio`: "inherit", "devnull", or a dict with keys "stdin"/"stdout"/"stderr" whose
      values are "inherit", "devnull", `("connect_unix", path)` (connected by the agent,
      before any namespace), an fd, or an object with `fileno()`. linx holds its own copy
      of a passed fd: yours may be closed as soon as `spawn()` returns.
    - `owner`: an unbounded `queue.Queue`, an `asyncio.Queue` of the running loop, any
      object with `put(event)`, or a callable; it runs in linx's reactor thread and must
      not block. An owner given here (or by `set_owner`) hears the outcome even if the
      session is dropped first; the default queue goes with the session.
    - `linger`: keep the session readable (`info()`, `wait()`) after its end; with `False`
      it is released then, and only `exit_reason` and `host_pid` stay.
    - `auto_proceed`: no checkpoint; `Ready` and `Running` still come, in order.
    - `no_new_privs`: set `PR_SET_NO_NEW_PRIVS` before `execve`.
    - `orphan_policy`: what happens to a running workload when the session is dropped or
      this process dies: `("kill", seconds)` (SIGTERM, then SIGKILL after that grace;
      the default is 5 s) or "linger" (it runs on). A parked child is always discarded.
      Like `close()`, it signals the workload alone: what the workload started outlives
      it, unless it runs in a new pid namespace ("pid"), whose other processes the
      kernel kills when its init, the workload, ends.
    - `hostname`: set in the new UTS namespace (needs "uts").
    - `uid_map`/`gid_map`: `(inside, outside, count)` lines, written before `Ready`
      (need "user"); at most 340, no two sharing an id on either side, as the kernel
      requires (refused here, before any process). `setgroups`: "deny" or "allow",
      written before the gid map; given explicitly, written for every new user
      namespace, gid map or not (for one written at the checkpoint). The default,
      "deny", is written only with a `gid_map`.
    - `uid`/`gid`/`groups`: the workload's ids, as seen inside its user namespace, set in
      the child before `execve`. A `uid` or `gid` without `groups` clears the
      supplementary groups where it may.
    """
    plan = _options.plan_spawn(
        argv,
        namespaces=namespaces,
        env=env,
        cwd=cwd,
        stdio=stdio,
        owner=owner,
        linger=linger,
        auto_proceed=auto_proceed,
        no_new_privs=no_new_privs,
        orphan_policy=orphan_policy,
        hostname=hostname,
        uid_map=uid_map,
        gid_map=gid_map,
        setgroups=setgroups,
        uid=uid,
        gid=gid,
        groups=groups,
    )
    return _start_plan(plan, owner)


def _start_plan(
    plan: _options.SpawnPlan, owner: Any, default_owner: Any = None, front: Any = None
) -> Session:
    """`Session._start`, releasing the plan's fds if it fails (shared with `linx.aio`)."""
    try:
        return Session._start(plan, owner, default_owner=default_owner, front=front)
    except BaseException:
        plan.close_fds()
        raise
