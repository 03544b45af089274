"""Process-wide machinery, created on first use: the reactor, the launcher, the agent table.

A forked child (multiprocessing's `fork` start method) starts with none of it and builds its
own on first use; the parent's sessions are not affected (`os.register_at_fork`).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import weakref

from . import _wire
from ._channel import Channel
from ._launcher import Launcher, LauncherGone
from ._options import SpawnPlan
from ._reactor import Reactor


class Runtime:
    def __init__(self) -> None:
        self.reactor = Reactor()
        self._lock = threading.Lock()
        self._launcher: Launcher | None = None
        self._tokens = itertools.count(1)
        self._agents: dict[int, Channel] = {}  # token -> channel, until the agent is reaped
        self._channels: weakref.WeakSet[Channel] = weakref.WeakSet()  # closed after a fork

    def start(self, channel: Channel, plan: SpawnPlan) -> None:
        """Get an agent for `channel` and send it `plan`'s request. Closes `plan`'s fds."""
        request = _wire.encode(plan.request)  # first: a request that cannot be sent starts nothing
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        token = next(self._tokens)
        try:
            with self._lock:
                self._agents[token] = channel
                self._channels.add(channel)
            # An agent that ends cleanly after its terminal frame is not reported by the
            # launcher (protocol.md): the terminal frame is where the entry goes.
            channel.on_terminal = lambda: self._forget(token)
            channel.launcher = self._request_agent(token, theirs.fileno())
            channel.attach(ours, request, plan.fds, plan.close_fds)
        except BaseException:
            self._forget(token)
            ours.close()
            plan.close_fds()
            raise
        finally:
            theirs.close()

    def _request_agent(self, token: int, fd: int) -> Launcher:
        # One retry: a launcher that died since the last spawn is replaced transparently.
        for _ in range(2):
            launcher = self._current_launcher()
            try:
                launcher.start_agent(token, fd)
                return launcher
            except LauncherGone:
                with self._lock:
                    if self._launcher is launcher:
                        self._launcher = None
        raise OSError("linx: could not start a launcher process")

    def _current_launcher(self) -> Launcher:
        with self._lock:
            if self._launcher is None or not self._launcher.alive:
                self._launcher = Launcher(
                    self.reactor, self._agent_exited, self._launch_failed, self._launcher_gone
                )
            return self._launcher

    # --- reactor thread ----------------------------------------------------------------

    def _forget(self, token: int) -> None:
        with self._lock:
            self._agents.pop(token, None)

    def _agent_exited(self, token: int, status: int) -> None:
        with self._lock:
            channel = self._agents.pop(token, None)
        if channel is not None:
            channel.agent_exited(status)

    def _launch_failed(self, token: int, stage: str, code: int) -> None:
        with self._lock:
            channel = self._agents.pop(token, None)
        if channel is not None:
            channel.launch_failed(stage, code)

    def _launcher_gone(self, launcher: Launcher) -> None:
        with self._lock:
            orphans = [t for t, c in self._agents.items() if c.launcher is launcher]
            channels = [self._agents.pop(t) for t in orphans]
        for channel in channels:
            channel.agent_exited(None)

    # --- fork ---------------------------------------------------------------------------

    def forget_in_child(self) -> None:
        # No locks here: the reactor thread may have held one at the fork, and it is gone.
        for channel in list(self._channels):
            channel.forget_in_child()
        self._agents.clear()
        if self._launcher is not None:
            self._launcher.forget_in_child()
        self.reactor.forget_in_child()


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
