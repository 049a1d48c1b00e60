"""Stalls of the daemon's event loop, told to the operator.

Every relayed keystroke waits for the one loop thread. When that thread does
not get to run for a while, every session feels it at once, and the operator
needs to know whose fault it was: the gateway's own work (a long callback: a
bug to report) or the host (the thread was runnable but had no CPU: an
overloaded or oversubscribed machine). ``LoopWatch`` ticks every ``TICK``
seconds (``IDLE_TICK`` while no session is live); a tick later than
``STALL`` is a stall, and ``loop stalled`` logs how many there were and the
worst: how long, and how much of it the thread spent waiting for a CPU and
running (``/proc/thread-self/schedstat``, where Linux has it). At most one
line per ``REPORT_EVERY`` seconds: a stall within that time of the last line
goes into the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("shellgate.loop")

TICK = 0.1
"""Seconds between the watch's ticks while sessions are live (ten wake-ups a
second: nothing next to a relay's thousands)."""

IDLE_TICK = 1.0
"""Seconds between ticks while no session is live: an idle daemon is not
woken ten times a second for nobody (a stall is still measured, from the
tick it delayed)."""

STALL = 0.25
"""A tick this much later than due is a stall: a pause a typist notices."""

REPORT_EVERY = 10.0
"""Seconds between two ``loop stalled`` lines at the most."""


def thread_times() -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable waiting for one) of the calling
    thread so far, or None where the kernel does not say."""
    try:
        run_ns, wait_ns, _ = Path("/proc/thread-self/schedstat").read_text().split()
        return int(run_ns) / 1e9, int(wait_ns) / 1e9
    except (OSError, ValueError):
        return None


class LoopWatch:
    """Measures how late its own ticks are; reports the stalls."""

    def __init__(
        self,
        tick: float = TICK,
        stall: float = STALL,
        report_every: float = REPORT_EVERY,
        *,
        busy: Callable[[], bool] = lambda: True,
        idle_tick: float = IDLE_TICK,
    ) -> None:
        self.tick = tick
        self.busy = busy  # whether sessions are live: then ``tick``, else ``idle_tick``
        self.idle_tick = idle_tick
        self.stall = stall
        self.report_every = report_every
        self.stalls = 0  # since the last report
        self.worst: dict[str, int] = {}
        self.last_report = float("-inf")

    async def run(self) -> None:
        times = thread_times()
        due = time.monotonic() + self.tick
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            now_times = thread_times()
            self.ticked(now, now - due, times, now_times)
            times = now_times
            due = now + (self.tick if self.busy() else self.idle_tick)

    def ticked(
        self,
        now: float,
        late: float,
        before: tuple[float, float] | None,
        after: tuple[float, float] | None,
    ) -> None:
        """One tick, ``late`` seconds after it was due; the thread's
        (on a CPU, waiting for one) seconds at the previous tick and now."""
        if late >= self.stall:
            self.stalls += 1
            if late * 1000 > self.worst.get("worst_ms", -1):
                self.worst = {"worst_ms": round(late * 1000)}
                if before is not None and after is not None:
                    # Over the whole tick: the stall and the tick's own sleep.
                    self.worst["worst_on_cpu_ms"] = round((after[0] - before[0]) * 1000)
                    self.worst["worst_waiting_for_cpu_ms"] = round((after[1] - before[1]) * 1000)
        if self.stalls and now - self.last_report >= self.report_every:
            log.warning("loop stalled", stalls=self.stalls, **self.worst)
            self.stalls = 0
            self.worst = {}
            self.last_report = now
