"""``shellgate serve`` with the CPU time of its hot calls counted:
``python -m bench.cpu_account serve --config FILE`` (bench #5 ``--attribute``).

py-spy samples the wall clock: a thread preempted right after a loopback send
looks busy in ``transport.write``, so under #5's load its profile cannot say
what the gateway spends its CPU on. This launcher wraps the relay's and the
recorder's entry points (``ACCOUNTED``) so that each call adds the calling
thread's CPU time (``CLOCK_THREAD_CPUTIME_ID``: running only, never queued)
to its entry, then runs the real daemon.

Times are inclusive (``LiveConnection.from_client`` includes the recording's
``input``, which includes the command extractor's) and include the wrappers'
own cost, ~0.3 us a call. ``SIGUSR1`` starts a window (counters to zero);
``SIGUSR2`` ends it and writes the window to the path in
``SHELLGATE_CPU_ACCOUNT``: per entry CPU seconds per second, calls per second
and microseconds per call, and every thread's CPU share from /proc.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

ACCOUNTED: tuple[tuple[str, str, str], ...] = (
    # Every read from a client or a target: decryption, asyncssh's dispatch
    # and everything below it (the two relay calls included). The daemon's
    # main thread minus this is the loop itself: uvloop, timers, the flush
    # and store tasks.
    ("asyncssh.connection", "SSHConnection", "data_received"),
    # ... of which the receive loop (gateway.sshtune's direct path: every
    # whole packet of the read opened, channel data handed to the sessions)
    ("asyncssh.connection", "SSHConnection", "_recv_pkthdr"),
    ("gateway.live", "LiveConnection", "from_client"),  # the relay, client -> target
    ("gateway.live", "LiveConnection", "from_target"),  # the relay, target -> client
    ("gateway.live", "LiveConnection", "flush_output"),  # the turn's gathered output
    # Every channel write, both legs: sealing and the send system call (on
    # loopback that includes the receiving side's TCP work and its wake-up)
    ("asyncssh.channel", "SSHChannel", "write"),
    ("gateway.recording", "SessionRecording", "input"),
    ("gateway.recording", "SessionRecording", "output"),
    ("gateway.recording", "SessionRecording", "flush"),
    ("gateway.recording", "SessionRecording", "emit_command"),
    ("recorder.commands", "CommandExtractor", "input"),
    ("recorder.commands", "CommandExtractor", "output"),
    ("recorder.commands", "CommandExtractor", "_engage"),
    ("recorder.screen", "ScreenModel", "feed"),
    ("recorder.cast", "CastWriter", "input"),
    ("recorder.cast", "CastWriter", "output"),
)
"""(module, class, method) whose calls are counted."""

_clock = time.thread_time_ns


class Accounts:
    """CPU nanoseconds and calls per wrapped method, and the window's start."""

    def __init__(self) -> None:
        self.slots: dict[str, list[int]] = {}
        self.started = time.monotonic()
        self.threads0: dict[str, float] = {}

    def wrap(self, cls: type, name: str) -> None:
        """Replace ``cls.name`` by a wrapper that counts its calls' CPU time."""
        inner: Callable[..., Any] = getattr(cls, name)
        slot = self.slots.setdefault(f"{cls.__name__}.{name}", [0, 0])

        def counted(*args: Any, **kwargs: Any) -> Any:
            t0 = _clock()
            try:
                return inner(*args, **kwargs)
            finally:
                slot[0] += _clock() - t0
                slot[1] += 1

        counted.__wrapped__ = inner  # type: ignore[attr-defined]
        setattr(cls, name, counted)

    def reset(self) -> None:
        for slot in self.slots.values():
            slot[0] = slot[1] = 0
        self.started = time.monotonic()
        self.threads0 = thread_cpu()

    def window(self) -> dict[str, Any]:
        """What the window since ``reset`` counted, per second of it."""
        wall = max(time.monotonic() - self.started, 1e-9)
        threads = thread_cpu()
        return {
            "wall_s": round(wall, 3),
            "threads_cpu_per_s": {
                k: round((v - self.threads0.get(k, 0.0)) / wall, 4) for k, v in threads.items()
            },
            "calls": {
                k: {
                    "cpu_per_s": round(ns / 1e9 / wall, 4),
                    "calls_per_s": round(n / wall, 1),
                    "us_per_call": round(ns / 1e3 / n, 2) if n else None,
                }
                for k, (ns, n) in self.slots.items()
            },
        }


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each of this process's threads, keyed
    ``"tid:name"``."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
                name = f.read().strip()
        except OSError:
            continue  # the thread ended
        out[f"{tid}:{name}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def install(out_path: str) -> Accounts:
    """Wrap ``ACCOUNTED`` and hook the window signals."""
    accounts = Accounts()
    from gateway import sshtune

    sshtune.install()  # first: it replaces data_received, which is wrapped here
    for module, cls_name, name in ACCOUNTED:
        accounts.wrap(getattr(importlib.import_module(module), cls_name), name)

    def dump(signum: int, frame: Any) -> None:
        tmp = out_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(accounts.window(), f, indent=1)
        os.replace(tmp, out_path)  # the bench never reads half a file

    signal.signal(signal.SIGUSR1, lambda signum, frame: accounts.reset())
    signal.signal(signal.SIGUSR2, dump)
    return accounts


def main() -> int:
    out_path = os.environ.get("SHELLGATE_CPU_ACCOUNT")
    if not out_path:
        print("bench.cpu_account: set SHELLGATE_CPU_ACCOUNT to the output file", file=sys.stderr)
        return 2
    install(out_path)
    from gateway import cli

    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
