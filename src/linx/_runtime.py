"""Process-wide machinery, created on first use: the reactor, the launcher, the agent table.

A forked child (multiprocessing's `fork` start method) starts with none of it and builds its
own on first use; the parent's sessions are not affected (`os.register_at_fork`).
"""

from __future__ import annotations

import array
import functools
import itertools
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable
from typing import NamedTuple

from . import _fds, _wire
from ._channel import Channel
from ._launcher import Credentials, Launcher, LauncherBusy, LauncherGone, current_credentials
from ._options import SpawnPlan
from ._reactor import Reactor

# How long a spawn that finds no spare waits for the reactor's refill in progress (seconds);
# it takes well under a millisecond.
REFILL_WAIT = 0.005


class Agent(NamedTuple):
    """An agent asked of a launcher, and the Python end of its session socket."""

    token: int
    sock: socket.socket
    launcher: Launcher


class _Unattached:
    """The agent-table entry of a spawn's agent until its channel exists. It is made before
    the agent is taken or asked for, so that what the launcher says of the agent meanwhile
    (`told`) is never lost: it waits here for `Runtime.attach`."""

    __slots__ = ("launcher", "told")

    def __init__(self) -> None:
        self.launcher: Launcher | None = None
        self.told: Callable[[Channel], None] | None = None


class Sent(NamedTuple):
    """A request on its way to its agent (`Runtime.send`), to be attached to a channel."""

    agent: Agent
    entry: _Unattached
    rest: memoryview
    fds: list[int]
    plan: SpawnPlan


class Runtime:
    def __init__(self) -> None:
        # Reentrant only so that a spawn can tell it was called by a signal handler that
        # interrupted this very thread inside a locked section: nothing takes it twice.
        self._lock = threading.RLock()
        self._launcher: Launcher | None = None
        self._tokens = itertools.count(1)
        # token -> channel (or the agent's entry until it has one), until it is reaped
        self._agents: dict[int, Channel | _Unattached] = {}
        self._channels: weakref.WeakSet[Channel] = weakref.WeakSet()  # closed after a fork
        # One agent asked for ahead of need: a spawn that takes it sends its request straight
        # to the agent, and the launcher's wake-up and fork happen off the spawn path
        # (docs/performance.md). Asked for again when that spawn's first frames arrive.
        self._spare: Agent | None = None
        # A refill asked of the reactor and not done yet. A spawn that finds no spare waits
        # for it (briefly, with the GIL released so that the reactor can run it) rather
        # than ask the launcher itself: that would put a fork on its own path.
        self._refilling = False
        self._refilled = threading.Condition(self._lock)
        # Last: its thread runs from here on, and an exception in what comes before it (a
        # KeyboardInterrupt in the first spawn) would leave that thread with nobody to use it.
        self.reactor = Reactor()

    def send(self, plan: SpawnPlan) -> Sent:
        """Send `plan`'s request to an agent; closes `plan`'s fds once they are sent.

        The first step of a spawn, before the session's own objects exist: making those
        overlaps the agent's clone. `attach` (or `abandon`) must follow.
        """
        if self._lock._is_owned():  # type: ignore[attr-defined]
            plan.close_fds()
            raise RuntimeError(
                "linx: spawn() called by a signal handler that interrupted linx in the middle "
                "of another spawn in this thread, which it would wait for for ever; leave it "
                "to the main loop (a flag, signal.set_wakeup_fd, or asyncio's "
                "add_signal_handler)"
            )
        request = _wire.encode(plan.request)  # first: a request that cannot be sent starts nothing
        entry = _Unattached()
        # A launcher runs with the credentials this process had when it started it, and so
        # would the workload: one from before a privilege drop (setuid and the like) must
        # not serve it.
        credentials = current_credentials()
        agent = None
        # One handler for all of it: an exception anywhere once `entry` may be in the agent
        # table (a KeyboardInterrupt as the spare is taken, or in the last close_fds) must
        # take it out again, or it stays for the life of the process.
        try:
            agent = self._take_spare(entry, credentials) or self._new_agent(
                entry=entry, credentials=credentials
            )
            rest, fds = _send_first(agent.sock, request, plan.fds)
            if not fds:
                plan.close_fds()
            return Sent(agent, entry, rest, fds, plan)
        except BaseException:
            self._forget_entry(entry)
            if agent is not None:
                agent.sock.close()
            plan.close_fds()
            raise

    def attach(self, channel: Channel, sent: Sent) -> None:
        """Hand a sent request's socket and unsent rest to `channel` and the reactor.

        Should it raise, the caller calls `undo_attach`: an exception raised as this is
        entered (a KeyboardInterrupt) would come before any handler of its own."""
        agent = sent.agent
        with self._lock:
            told = sent.entry.told
            if told is None:
                self._agents[agent.token] = channel
            self._channels.add(channel)
        # An agent that ends cleanly after its terminal frame is not reported by the
        # launcher (protocol.md): the terminal frame is where the entry goes.
        channel.on_terminal = lambda: self._forget(agent.token)
        channel.on_started = self._refill_soon
        channel.launcher = agent.launcher
        channel.attach(agent.sock, sent.rest, sent.fds, sent.plan.close_fds)
        if told is not None:
            self.reactor.call_soon(lambda: told(channel))

    def undo_attach(self, channel: Channel, sent: Sent) -> None:
        """Give up a request whose `attach` raised, wherever it stopped: the agent sees EOF
        and applies its orphan policy."""
        self._forget(sent.agent.token)
        # Once the channel has the socket the reactor may watch it, and only the reactor
        # thread closes it (with the fds still queued), or epoll would watch whatever file
        # gets its number next, and keep the channel and its owner for good.
        if not channel.give_up():
            self.abandon(sent.agent, sent.plan)

    def abandon(self, agent: Agent, plan: SpawnPlan) -> None:
        """Give up a request sent to `agent`: it sees EOF and applies its orphan policy."""
        self._discard(agent)
        plan.close_fds()

    def _discard(self, agent: Agent) -> None:
        """Let `agent` go: out of the agent table, its socket closed (it sees EOF and ends)."""
        self._forget(agent.token)
        agent.sock.close()

    def _new_agent(
        self,
        launcher: Launcher | None = None,
        entry: _Unattached | None = None,
        credentials: Credentials | None = None,
    ) -> Agent:
        """An agent asked of `launcher` without blocking (raises `LauncherBusy` or
        `LauncherGone`), or else of the current launcher, started anew if need be (or if
        its credentials are not `credentials`). With `entry`, the agent is in the agent
        table under it before it is asked for."""
        ours, theirs = _fds.socketpair()
        token = next(self._tokens)
        if entry is not None:
            with self._lock:
                self._agents[token] = entry
        try:
            ours.setblocking(False)  # here, not on the spawn path, for a spare
            if launcher is None:
                launcher = self._request_agent(token, theirs.fileno(), credentials)
            else:
                launcher.start_agent(token, theirs.fileno(), block=False)
        except BaseException:
            self._forget(token)
            ours.close()
            raise
        finally:
            theirs.close()
        if entry is not None:
            entry.launcher = launcher
        return Agent(token, ours, launcher)

    def _take_spare(self, entry: _Unattached, credentials: Credentials) -> Agent | None:
        """The spare agent, if any, in the agent table under `entry`: taken and entered
        under one lock, so no word of the launcher on it falls in between. None if its
        launcher is dead or has other credentials than `credentials`."""
        with self._lock:
            if self._spare is None and self._refilling and self._may_wait_for_refill():
                self._refilled.wait_for(lambda: not self._refilling, REFILL_WAIT)
            spare, self._spare = self._spare, None
            if spare is not None:
                entry.launcher = spare.launcher
                self._agents[spare.token] = entry
        if spare is not None and (
            not spare.launcher.alive or spare.launcher.credentials != credentials
        ):
            # Dead: its launcher may have died before forking it (not worth finding out).
            # Other credentials: it would run the workload with those.
            self._discard(spare)
            return None
        return spare

    def _may_wait_for_refill(self) -> bool:
        """Not in the reactor thread, which would wait for itself, nor in a running event
        loop (`linx.aio`), which must never block: both ask the launcher themselves."""
        if self.reactor.in_reactor_thread():
            return False
        asyncio = sys.modules.get("asyncio")  # not imported here: see _owners.make_deliver
        return asyncio is None or asyncio._get_running_loop() is None

    def _refill_soon(self) -> None:
        """Ask for the next spare after this loop round (reactor thread)."""
        with self._lock:
            self._refilling = True
        self.reactor.call_next(self._refill_spare)

    def _refill_spare(self) -> None:
        """Ask for the next spare agent. Reactor thread only, so never two at once."""
        spare = None
        try:
            with self._lock:
                launcher = self._launcher
                if self._spare is not None or launcher is None or not launcher.alive:
                    return  # without a launcher, the next spawn starts one: never the reactor
            try:
                spare = self._new_agent(launcher)
            except (OSError, LauncherBusy, LauncherGone):
                return  # the next spawn asks for its agent itself
        finally:
            with self._lock:
                if spare is not None and spare.launcher is self._launcher:
                    self._spare, spare = spare, None
                self._refilling = False
                self._refilled.notify_all()
            if spare is not None:  # its launcher was replaced meanwhile (credentials)
                self._discard(spare)

    def _request_agent(self, token: int, fd: int, credentials: Credentials | None) -> Launcher:
        # One retry: a launcher that died since the last spawn is replaced transparently.
        for _ in range(2):
            launcher = self._current_launcher(credentials)
            try:
                launcher.start_agent(token, fd)
                return launcher
            except LauncherGone:
                with self._lock:
                    if self._launcher is launcher:
                        self._launcher = None
        raise OSError("linx: could not start a launcher process")

    def _current_launcher(self, credentials: Credentials | None = None) -> Launcher:
        """The launcher to ask for agents: started anew if there is none, it died, or it
        has other credentials than `credentials`. One replaced for its credentials is
        retired (`Launcher.retire`: it exits, its agents run on) and its spare ends."""
        retired = stale = None
        with self._lock:
            launcher = self._launcher
            if (
                launcher is None
                or not launcher.alive
                or (credentials is not None and launcher.credentials != credentials)
            ):
                Launcher(
                    self.reactor,
                    self._agent_exited,
                    self._launch_failed,
                    self._launcher_gone,
                    functools.partial(setattr, self, "_launcher"),
                )
                current = self._launcher
                assert current is not None  # stored by adopt
                if launcher is not None and launcher.alive:
                    # Replaced for its credentials. Kept, it and its spare would let this
                    # process (say, a server that dropped root) start agents with the
                    # credentials it gave up: both go.
                    retired = launcher
                    if self._spare is not None and self._spare.launcher is launcher:
                        stale, self._spare = self._spare, None
            else:
                current = launcher
        if stale is not None:
            self._discard(stale)
        if retired is not None:
            retired.retire()
        return current

    # --- reactor thread ----------------------------------------------------------------

    def _forget(self, token: int) -> None:
        with self._lock:
            self._agents.pop(token, None)

    def _forget_entry(self, entry: _Unattached) -> None:
        """Take `entry` out of the agent table, under whichever token it went in (a spawn
        that failed may not have learnt it)."""
        with self._lock:
            for token in [t for t, e in self._agents.items() if e is entry]:
                del self._agents[token]

    def _agent_exited(self, token: int, status: int) -> None:
        self._drop_spare(token)
        self._tell(token, lambda channel: channel.agent_exited(status))

    def _launch_failed(self, token: int, stage: str, code: int) -> None:
        self._drop_spare(token)
        self._tell(token, lambda channel: channel.launch_failed(stage, code))

    def _tell(self, token: int, tell: Callable[[Channel], None]) -> None:
        """Pass the launcher's word on an agent to its channel, now or once attached."""
        with self._lock:
            entry = self._agents.pop(token, None)
            if isinstance(entry, _Unattached):
                entry.told = tell
                return
        if entry is not None:
            tell(entry)

    def _drop_spare(self, token: int) -> None:
        # The spare's agent died waiting, or was never forked: no spawn is to get it.
        with self._lock:
            spare = self._spare
            if spare is None or spare.token != token:
                return
            self._spare = None
        spare.sock.close()

    def _launcher_gone(self, launcher: Launcher) -> None:
        with self._lock:
            orphans = [t for t, c in self._agents.items() if c.launcher is launcher]
            spare = self._spare if self._spare and self._spare.launcher is launcher else None
            if spare is not None:
                self._spare = None
        for token in orphans:
            self._tell(token, lambda channel: channel.agent_exited(None))
        if spare is not None:
            # never to be handed to a spawn (_take_spare): let it go now, not at the next
            # spawn, which may never come
            self._discard(spare)

    # --- fork ---------------------------------------------------------------------------

    def forget_in_child(self) -> None:
        # No locks here: the reactor thread may have held one at the fork, and it is gone.
        for channel in list(self._channels):
            channel.forget_in_child()
        self._agents.clear()
        if self._spare is not None:
            self._spare.sock.close()
            self._spare = None
        if self._launcher is not None:
            self._launcher.forget_in_child()
        self.reactor.forget_in_child()


def _send_first(
    sock: socket.socket, request: bytes, fds: list[int]
) -> tuple[memoryview, list[int]]:
    """Send what the (non-blocking) socket takes now; the fds ride on the first byte.

    Returns what is left to send and the fds not yet sent. An agent gone already takes
    nothing: the channel learns of it from the EOF.
    """
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    view = memoryview(request)
    try:
        sent = sock.sendmsg([view], rights)
    except BlockingIOError:
        return view, fds
    except (BrokenPipeError, ConnectionResetError):
        return view[:0], []
    return view[sent:], []


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    runtime = _runtime
    if runtime is not None:
        return runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime()
        return _runtime


def _after_fork_in_child() -> None:
    global _runtime, _runtime_lock
    _runtime_lock = threading.Lock()
    runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.forget_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
