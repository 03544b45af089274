"""One session's channel to its agent: socket I/O around the state machine.

Reads happen in the reactor thread; verbs write from the caller's thread under the channel
lock (an unfinished write is completed by the reactor). Events are produced only in the
reactor thread, so every owner sees them in order. The channel holds its `Session` weakly:
dropping the last reference to a session ends it under its orphan policy.
"""

from __future__ import annotations

import array
import collections
import logging
import select
import signal
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _wire
from ._owners import Deliver, deliver_guarded
from ._reactor import Reactor
from ._settled import Settled
from ._state import Info, SessionState, exit_reason
from ._types import ExitReason
from .errors import NoProcess, ProcessError, SessionError
from .events import Event, Outcome

log = logging.getLogger("linx")

STATUS_GRACE = 2.0  # seconds to wait for the launcher's word on a vanished agent
Result = Outcome | ProcessError | NoProcess
# The outcome of a session released before its agent said how it ended (a close() that
# gave up waiting): threads still in wait() get NoProcess rather than waiting for ever.
RELEASED_UNSETTLED = NoProcess("the session was closed before its outcome was known")


class _Outgoing:
    """One frame waiting to be written, and the fds that ride on its first byte."""

    __slots__ = ("data", "fds", "on_sent", "sent")

    def __init__(
        self, data: bytes | memoryview, fds: list[int], on_sent: Callable[[], None] | None
    ) -> None:
        self.data = memoryview(data)
        self.fds = fds
        self.on_sent = on_sent
        # What the last sendmsg took, not yet dropped from `data` (see Channel._flush).
        self.sent: list[int] = []

    def advance(self) -> None:
        """Drop what `sent` says went out: nothing runs between the two stores, so an
        interrupted advance is only done again, never halfway."""
        self.data = self.data[self.sent[0] :]
        del self.sent[:]
        self.fds = []  # they went with the first byte
        on_sent, self.on_sent = self.on_sent, None
        if on_sent is not None:
            on_sent()


class Channel:
    """The live part of a session. All public methods are thread-safe."""

    def __init__(
        self,
        reactor: Reactor,
        state: SessionState,
        deliver: Deliver,
        session: Any,
        *,
        linger: bool,
        orphan_grace: float | None,
        owner_outlives: bool,
    ) -> None:
        self._reactor = reactor
        # Reentrant only so that a verb can tell it was called by a signal handler that
        # interrupted this very thread inside a locked section (see _interrupted_here):
        # nothing ever takes it twice.
        self._lock = threading.RLock()
        self.state = state
        self._deliver = deliver
        self._session_ref = weakref.ref(session)
        self._linger = linger
        self._orphan_grace = orphan_grace  # None: the orphan policy is "linger"
        # The owner is the caller's, not the session's own default queue: it can still hear
        # the outcome once the session is dropped (see abandon).
        self._owner_outlives = owner_outlives
        self._reader = _wire.FrameReader(_wire.AGENT_MESSAGES)
        self._sock: socket.socket | None = None
        self._attached = False  # given its socket (`attach`): the reactor reads it
        # Verbs' commands go in as they come from the state machine, encoded by _flush.
        self._out: collections.deque[_Outgoing | _wire.Message] = collections.deque()
        self._want_write = False
        self.closed = False
        self.exit_reason: ExitReason | None = None
        self.launcher: object = None
        # Called once Python needs no more word of the agent (terminal, or released by
        # us); the runtime drops its entry then. Idempotent.
        self.on_terminal: Callable[[], None] = lambda: None
        # Called once, in the reactor thread, when the agent's first frame arrives; it must
        # not block or do more than schedule its work (the outcome may be in the same read).
        self.on_started: Callable[[], None] | None = None
        self.outcome: Settled[Result] = Settled()

    # --- start ---------------------------------------------------------------------------

    def attach(
        self,
        sock: socket.socket,
        first: bytes | memoryview,
        fds: list[int],
        done: Callable[[], None],
    ) -> None:
        """Take the Python end of the session socket and queue what is left of the request
        (`first`, and `fds` if none of it was sent yet); `done` runs once the fds are sent.
        `sock` is non-blocking already."""
        with self._lock:
            self._sock = sock
            self._attached = True
            if first:
                self._out.append(_Outgoing(first, fds, done))
            self._reactor.register(sock.fileno(), select.EPOLLIN, self._on_ready)
            self._send_queued()

    def give_up(self) -> bool:
        """`attach` failed part way (a KeyboardInterrupt in it): once it has taken the socket
        the socket may be watched, so the reactor thread closes it, with what is queued (and
        the fds waiting in that, through `done`), and the agent applies its orphan policy at
        the EOF. Returns False if `attach` never took the socket: it is the caller's still."""
        with self._lock:
            if self._sock is None:
                return False
            self.closed = True  # a session dropped meanwhile asks nothing of the agent
        self._reactor.call_soon(self._release)
        return True

    # --- verbs (any thread) ----------------------------------------------------------------

    def _interrupted_here(self) -> bool:
        """Whether this thread holds the lock already. Nothing takes it twice, so it can
        only be a Python signal handler run in the middle of one of this channel's locked
        sections (handlers run in the main thread, between any two bytecodes): waiting for
        the lock there would wait for ever, on the very call the handler interrupted."""
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def _refuse_if_interrupted_here(self, verb: str) -> None:
        if self._interrupted_here():
            raise RuntimeError(
                f"linx: {verb}() called by a signal handler that interrupted another call on "
                "the same session, which it would wait for for ever; leave the work to the "
                "main loop (a flag, signal.set_wakeup_fd, or asyncio's add_signal_handler)"
            )

    def _send_later(self, make: Callable[[SessionState], _wire.Message | None]) -> None:
        try:
            self.send(make)
        except SessionError as exc:
            log.warning("linx: a verb called from a signal handler failed: %s", exc)

    def send(self, make: Callable[[SessionState], _wire.Message | None]) -> None:
        """Run a verb of the state machine under the lock and write what it returns.

        From a signal handler that interrupted a call on this session, the verb is left to
        the reactor thread, to run once that call is out of its locked section; what it
        raises then is logged."""
        if self._interrupted_here():
            self._reactor.call_soon(lambda: self._send_later(make))
            return
        with self._lock:
            if self.closed:
                raise NoProcess("the session is closed")
            message = make(self.state)
            if message is not None and self._sock is not None:
                # Appended as it is, with nothing run in between: an exception raised there
                # by a signal handler (a KeyboardInterrupt) would lose a command the state
                # counts as sent, and a proceed() so lost left the child parked for good.
                self._out.append(message)
                self._send_queued()

    def wait(self, timeout: float | None) -> Result:
        """The outcome, once set. In the reactor thread (an owner calling `wait()`) it is
        taken from the state machine once known (on the terminal event at the latest) and
        never waited for: the reactor thread is the one that would set it."""
        self._refuse_if_interrupted_here("wait")
        if not self._reactor.in_reactor_thread():
            return self.outcome.wait(timeout)
        with self._lock:
            result = self.state.result
        if result is None:
            raise RuntimeError(
                "linx: wait() called by an owner before the terminal event would block the "
                "reactor thread that delivers it; wait in another thread, or act on the "
                "terminal event"
            )
        return result

    def info(self) -> Info:
        self._refuse_if_interrupted_here("info")
        with self._lock:
            if self.closed:
                raise NoProcess("the session is closed")
            return self.state.info()

    def set_deliver(self, deliver: Deliver) -> None:
        """Deliver to an owner of the caller's from now on."""
        self._refuse_if_interrupted_here("set_owner")
        with self._lock:
            if self.closed:
                raise NoProcess("the session is closed")
            self._deliver = deliver
            self._owner_outlives = True

    def begin_close(self) -> bool:
        """Start ending a live session: `KILL` aborts a child not yet released and kills
        any other at once, even one released and not yet `Running`, where a SIGKILL would
        wait for `Running` and a child stopped on its way to `execve` would never get it.

        Returns False if it was already closed.
        """
        self._refuse_if_interrupted_here("close")
        with self._lock:
            if self.closed:
                return False
            if not self.state.terminal and self._sock is not None:
                self._queue(_wire.Kill())
            return True

    def finish_close(self) -> None:
        """Mark closed and release the socket (the reactor closes it)."""
        with self._lock:
            self.closed = True
            if self.state.terminal:
                return  # released already (see _release)
        self._reactor.call_soon(self._release)

    def finish_close_later(self, timeout: float) -> None:
        """`finish_close` for a close() in the reactor thread (an owner), which cannot wait
        for the outcome: that thread is the one that brings it. Closed to the verbs now;
        the channel stays open for the outcome that the kill from `begin_close` brings (its
        terminal step releases it), and is released after `timeout` seconds without one."""
        with self._lock:
            self.closed = True
            if self.state.terminal:
                return
        # Weakly: once the outcome has come and gone, the timer must not keep the channel
        # (and a close in an owner is cheap enough to come by the thousand).
        self._reactor.call_later(timeout, _while_alive(self, Channel._release))

    def abandon(self) -> None:
        """The session object was dropped: its orphan policy acts (see `_abandoned`).

        Called from `Session.__del__`, so from any thread at any point: the thread may hold
        this channel's lock already (a garbage collection run inside a locked section),
        and at interpreter exit the reactor thread, frozen, may hold it for ever. So the
        work is the reactor's, and this takes no lock. At exit it may never run: the
        process's end closes the channel, and the agent applies the policy at EOF."""
        if self.closed or self.state.terminal:
            # Released by its terminal step (see _release), or closed already (close(),
            # or in a forked child, whose copy of the reactor has no thread and whose wake
            # fd number may be another file's by now): waking the reactor thread would at
            # best slow the caller's next spawn. A bool set without the lock: the session
            # is gone, nobody else writes it but to True.
            self.closed = True
            return
        self._reactor.call_soon(self._abandoned)

    def _abandoned(self) -> None:
        """An owner of the caller's still hears how the session ends, as SPEC's one
        terminal event promises: Python applies the policy through the agent and reads on.
        Otherwise nobody can hear it: the channel is closed, and the agent applies the
        policy at EOF."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.state.terminal:
                return  # released already (see _release)
            if self._owner_outlives and self._attached:
                # With no socket left (the agent's EOF came first) the outcome is still on
                # its way: the launcher's word on the agent, or STATUS_GRACE's timer.
                # Released now, the runtime would drop that word and the owner would get
                # agent_died with no status, late.
                if self._sock is not None:
                    self._orphan_here()
                return
        self._release()

    def _orphan_here(self) -> None:
        """The agent's orphan policy, asked for with verbs (lock held): a parked child is
        discarded; a released one gets SIGTERM (and SIGCONT, should it be stopped), then
        SIGKILL after the grace, or with "linger" runs on. Signals before `Running` are
        buffered by the agent as ever. Should this process die meanwhile, the agent's own
        policy at EOF takes over."""
        if not self.state.released:
            abort = self.state.abort()
            if abort is not None:
                self._queue(abort)
            return
        if self._orphan_grace is None:
            return
        self._queue(_wire.Signal(signum=signal.SIGTERM))
        self._queue(_wire.Signal(signum=signal.SIGCONT))
        # weakly: an outcome before the grace ends frees the channel at once
        self._reactor.call_later(self._orphan_grace, _while_alive(self, Channel._orphan_kill))

    def _orphan_kill(self) -> None:
        # KILL, not a SIGKILL the agent would hold for `Running`: a released child still
        # short of `execve` (stopped, say) ends at the grace too
        with self._lock:
            if not self.state.terminal:
                self._queue(_wire.Kill())

    def _release(self) -> None:
        # Once Python closes the channel itself nobody waits to hear of the agent: an agent
        # left to its orphan policy exits cleanly and is never reported.
        # Never needed for a terminal channel: the step that made it terminal (the terminal
        # frame, EOF, a broken channel, a failed launch) closed its socket or scheduled that,
        # and `on_terminal` has run or runs right after. Asking the reactor anyway would wake
        # it just as the caller, done with one session, starts the next.
        self._close_socket()
        self.on_terminal()
        self.outcome.set(RELEASED_UNSETTLED)  # no-op once the outcome is known

    def forget_in_child(self) -> None:
        """In a forked child: this channel belongs to the parent. Takes no lock (see caller)."""
        self._lock = threading.RLock()
        self.closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- writing (lock held) -------------------------------------------------------------

    def _queue(self, message: _wire.Message) -> None:
        if self._sock is None:
            return  # the agent is gone; the outcome is on its way
        self._out.append(message)
        self._send_queued()

    def _send_queued(self) -> None:
        try:
            self._flush()
        except BaseException:
            # Interrupted halfway (a KeyboardInterrupt): the reactor sends what is left,
            # which may be all that releases a parked child.
            self._reactor.call_soon(self._flush_if_open)
            raise

    def _flush_if_open(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._flush()

    def _flush(self) -> None:
        assert self._sock is not None
        while self._out:
            item = self._out[0]
            if not isinstance(item, _Outgoing):
                self._out[0] = item = _Outgoing(_wire.encode(item), [], None)
            if item.sent:  # went out, but an exception came before it was accounted for
                item.advance()
            if not item.data:
                self._out.popleft()
                continue
            rights = []
            if item.fds:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", item.fds))]
            try:
                # extend(map(...)): the count goes from sendmsg into the item with no
                # bytecode run in between. A signal handler's exception there (a
                # KeyboardInterrupt as sendmsg returns: where a Ctrl-C during signal()
                # lands) would lose it, and the next verb would send the frame again.
                item.sent.extend(map(self._sock.sendmsg, ([item.data],), (rights,)))
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                # The agent is gone; what it said before going is still to be read.
                self._drop_output()
                return
        self._set_want_write(bool(self._out))

    def _drop_output(self) -> None:
        for item in self._out:
            if isinstance(item, _Outgoing) and item.on_sent is not None:
                item.on_sent()
        self._out.clear()
        self._set_want_write(False)

    def _set_want_write(self, want: bool) -> None:
        if want != self._want_write and self._sock is not None:
            self._want_write = want
            mask = select.EPOLLIN | (select.EPOLLOUT if want else 0)
            self._reactor.modify(self._sock.fileno(), mask)

    # --- reactor thread --------------------------------------------------------------------

    def _on_ready(self, events: int) -> None:
        if events & select.EPOLLOUT:
            with self._lock:
                if self._sock is not None:
                    self._flush()
        if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            self._read()

    def _read(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is None:
            return
        try:
            data = self._reactor.recv(sock)
        except BlockingIOError:
            return
        except OSError:
            data = memoryview(b"")
        if not data:
            self._on_eof()
            return
        try:
            messages = self._reader.feed(data)
        except _wire.WireError as exc:
            log.error("linx: session channel broken: %s", exc)
            self._emit(lambda state: state.channel_broken())
            self._close_socket()
            return
        for message in messages:
            if isinstance(message, _wire.Notice):
                log.debug("linx: agent notice: %s errno %d", message.stage, message.errno)
        # One step for all the frames of a read (often SPAWNED to EXITED at once): one lock
        # round and one delivery run, as if they had come in one frame.
        self._emit(lambda state: [event for m in messages for event in state.receive(m)])
        if self.on_started is not None:
            self.on_started()  # schedules its work after this loop round
            self.on_started = None
        if self.state.terminal:
            # The agent sends nothing after its terminal frame and exits: no need to wait
            # for the EOF (one reactor wake-up less per session). After this round of the
            # loop.
            self._reactor.call_next(self._close_socket)

    def _on_eof(self) -> None:
        self._close_socket()
        self._emit(lambda state: state.channel_closed())
        if not self.state.terminal:
            launcher_alive = getattr(self.launcher, "alive", False)
            if launcher_alive:
                self._reactor.call_later(STATUS_GRACE, lambda: self.agent_exited(None))
            else:
                self.agent_exited(None)

    def agent_exited(self, status: int | None) -> None:
        """The launcher's report (reactor thread)."""
        self._emit(lambda state: state.agent_exited(status))

    def launch_failed(self, stage: str, code: int) -> None:
        self._emit(lambda state: state.launch_failed(stage, code))
        self._close_socket()

    def _emit(self, step: Callable[[SessionState], list[Event]]) -> None:
        with self._lock:
            events = step(self.state)
            result = self.state.result if events and self.state.terminal else None
            if result is not None:
                self.exit_reason = exit_reason(result)
                # Without linger the session is released the moment it is terminal: an owner
                # that looks at it on the terminal event already sees it closed.
                self.closed = self.closed or not self._linger
        if not events:
            return
        if self._session_ref() is None and not self._owner_outlives:
            self._abandoned()
            if result is not None:
                self.on_terminal()
            return
        # The owner is looked up again for each event: one that calls set_owner() on
        # Ready has the Running and the outcome that came in the same read go to the new
        # owner (a plain read; set_deliver's write of it is one store as well).
        for event in events:
            deliver_guarded(self._deliver, event)
        if result is not None:
            self.outcome.set(result)
            self.on_terminal()

    def _close_socket(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            self._drop_output()  # runs on_sent: passed fds never outlive the channel
        if sock is not None:
            self._reactor.unregister(sock.fileno())
            sock.close()


def _while_alive(channel: Channel, method: Callable[[Channel], None]) -> Callable[[], None]:
    """`method(channel)` for a timer, which holds `channel` weakly: a channel whose outcome
    came meanwhile is freed at once, and the call does nothing."""
    ref = weakref.ref(channel)

    def call() -> None:
        alive = ref()
        if alive is not None:
            method(alive)

    return call
