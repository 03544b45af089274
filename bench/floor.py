"""The floor of linx's architecture for `/bin/true`, against `subprocess` and linx itself.

    python bench/floor.py [--rounds N] [--block B]

Two stripped-down drivers of the real launcher and agent, with none of linx's own Python
work: the request is encoded once, and each spawn takes a spare agent, sends the request,
reads frames until `EXITED` and asks the launcher for the next spare.

- `direct`: the calling thread reads the agent's socket itself (blocking `recv`).
- `one hop`: an epoll loop in a second thread reads it and releases a lock the calling
  thread waits on, as SPEC §2's one reactor thread must; nothing else of linx runs.

The four cases take turns in blocks, as in bench/spawn.py. What `one hop` costs over
`subprocess` is what any implementation of the fixed architecture pays before checking an
option or making a session. A second pass runs each case `--cpu-rounds` times in a row and
reports the CPU time the whole machine spent a spawn (`/proc/stat`, all processes and the
kernel): on two vCPUs, CPU that the agent's fork and exit add is never quite off the path.
Uses linx's private modules; run by hand, never a test.
"""

from __future__ import annotations

import argparse
import array
import itertools
import os
import select
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable

from spawn import measure  # bench/ is this script's directory, so on sys.path

import linx
from linx import _options, _runtime, _wire

_REQUEST = _options.plan_spawn(["/bin/true"], auto_proceed=True)
_FRAME = _wire.encode(_REQUEST.request)
_RIGHTS = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", _REQUEST.fds))]
_TOKENS = itertools.count(1 << 40)  # far from the runtime's own tokens


class Spares:
    """One agent asked of the runtime's launcher ahead of need, as linx keeps one."""

    def __init__(self) -> None:
        self._launcher = _runtime.get_runtime()._current_launcher()
        self._next = self._ask()

    def send(self) -> socket.socket:
        """Send the request to the spare, then ask for the next one (linx asks later)."""
        sock = self._next
        sock.sendmsg([_FRAME], _RIGHTS)
        self._next = self._ask()
        return sock

    def _ask(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        self._launcher.start_agent(next(_TOKENS), theirs.fileno())
        theirs.close()
        return ours


def read_to_exit(sock: socket.socket) -> None:
    reader = _wire.FrameReader(_wire.AGENT_MESSAGES)
    while True:
        data = sock.recv(65536)
        assert data, "the agent ended without EXITED"
        if any(isinstance(m, _wire.Exited) for m in reader.feed(data)):
            sock.close()
            return


def direct(spares: Spares) -> Callable[[], None]:
    def run() -> None:
        read_to_exit(spares.send())

    return run


def one_hop(spares: Spares) -> Callable[[], None]:
    """The caller registers the socket with an epoll loop in another thread (no wake-up:
    epoll is thread-safe) and waits on a lock that thread releases at `EXITED`."""
    loop = select.epoll()
    waiting: dict[int, tuple[socket.socket, _wire.FrameReader, threading.Lock]] = {}

    def reader() -> None:
        while True:
            for fd, _ in loop.poll():
                sock, frames, done = waiting[fd]
                data = sock.recv(65536)
                assert data, "the agent ended without EXITED"
                if any(isinstance(m, _wire.Exited) for m in frames.feed(data)):
                    loop.unregister(fd)
                    del waiting[fd]
                    sock.close()
                    done.release()

    threading.Thread(target=reader, daemon=True).start()

    def run() -> None:
        sock = spares.send()
        done = threading.Lock()
        done.acquire()
        waiting[sock.fileno()] = (sock, _wire.FrameReader(_wire.AGENT_MESSAGES), done)
        loop.register(sock.fileno(), select.EPOLLIN)
        done.acquire()

    return run


def popen() -> None:
    subprocess.Popen(["/bin/true"]).wait()


def linx_true() -> None:
    assert linx.spawn(["/bin/true"], auto_proceed=True).wait() == linx.Exited(0)


def machine_busy_seconds() -> float:
    """CPU time spent by every CPU outside idle and iowait since boot (`/proc/stat`)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_per_spawn(fn: Callable[[], None], rounds: int) -> tuple[float, float]:
    """(machine CPU µs a spawn, vCPUs busy on average) over `rounds` spawns in a row."""
    for _ in range(20):
        fn()
    busy, start = machine_busy_seconds(), time.perf_counter()
    for _ in range(rounds):
        fn()
    wall, busy = time.perf_counter() - start, machine_busy_seconds() - busy
    return busy / rounds * 1e6, busy / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--block", type=int, default=20, help="spawns per turn (1: alternate)")
    parser.add_argument("--cpu-rounds", type=int, default=2000, help="0: skip the CPU pass")
    args = parser.parse_args()
    spares = Spares()
    cases = [
        ("subprocess.Popen(['/bin/true']).wait()", popen),
        ("direct: the caller reads the agent", direct(spares)),
        ("one hop: a reader thread, then the caller", one_hop(spares)),
        ("linx.spawn(/bin/true, auto_proceed).wait()", linx_true),
    ]
    samples = measure(cases, args.rounds, args.block)  # blocks: see bench/spawn.py
    base = statistics.median(samples[cases[0][0]])
    print(f"{'case':<46} {'median µs':>10} {'/ Popen':>8}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<46} {median:>10.0f} {median / base:>8.2f}")
    if args.cpu_rounds:
        print(f"\n{'case':<46} {'CPU µs':>10} {'vCPUs':>8}")
        for name, fn in cases:
            cpu, vcpus = cpu_per_spawn(fn, args.cpu_rounds)
            print(f"{name:<46} {cpu:>10.0f} {vcpus:>8.2f}")


if __name__ == "__main__":
    main()
