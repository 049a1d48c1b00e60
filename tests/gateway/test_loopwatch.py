"""The loop watch (gateway/loopwatch.py): a stall is logged with how much of
it the loop thread spent running and waiting for a CPU, at most one line per
``report_every``, and stalls between two lines are counted, never dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog

from gateway.loopwatch import LoopWatch, thread_times


def _stalls(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "loop stalled"]


def test_stalls_between_two_lines_go_into_the_next_line() -> None:
    watch = LoopWatch(tick=0.1, stall=0.25, report_every=10.0)
    with structlog.testing.capture_logs() as logs:
        watch.ticked(100.0, 0.01, (1.0, 0.0), (1.005, 0.0))  # on time: nothing
        assert _stalls(logs) == []
        watch.ticked(101.0, 0.4, (1.0, 0.0), (1.1, 0.3))  # the first stall: told at once
        watch.ticked(102.0, 0.3, (1.1, 0.3), (1.4, 0.3))  # within 10 s: counted
        watch.ticked(103.0, 0.9, (1.4, 0.3), (1.5, 1.1))  # ... the worst of them
        watch.ticked(104.0, 0.26, None, None)
        assert len(_stalls(logs)) == 1
        watch.ticked(111.5, 0.0, (1.5, 1.1), (1.5, 1.1))  # no stall, but 10 s passed
        watch.ticked(130.0, 0.0, (1.5, 1.1), (1.5, 1.1))  # nothing left to tell
    first, second = _stalls(logs)
    assert first == {
        "event": "loop stalled",
        "log_level": "warning",
        "stalls": 1,
        "worst_ms": 400,
        "worst_on_cpu_ms": 100,
        "worst_waiting_for_cpu_ms": 300,
    }
    assert second["stalls"] == 3
    assert (second["worst_ms"], second["worst_on_cpu_ms"], second["worst_waiting_for_cpu_ms"]) == (
        900,
        100,
        800,
    )


def test_without_schedstat_the_stall_is_still_told() -> None:
    watch = LoopWatch()
    with structlog.testing.capture_logs() as logs:
        watch.ticked(5.0, 1.5, None, None)
    assert _stalls(logs) == [
        {"event": "loop stalled", "log_level": "warning", "stalls": 1, "worst_ms": 1500}
    ]


async def test_a_blocked_loop_is_reported_with_its_cpu_time() -> None:
    if thread_times() is None:
        pytest.skip("no /proc/thread-self/schedstat here")
    watch = LoopWatch(tick=0.02, stall=0.2, report_every=0.0)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.get_running_loop().create_task(watch.run())
        await asyncio.sleep(0.1)
        end = time.monotonic() + 0.4
        while time.monotonic() < end:  # a callback that hogs the loop
            pass
        await asyncio.sleep(0.1)
        task.cancel()
    (stall,) = _stalls(logs)
    assert isinstance(stall["worst_ms"], int) and stall["worst_ms"] >= 350
    # Runnable throughout: on a CPU or waiting for one (a busy machine).
    ran = stall["worst_on_cpu_ms"] + stall["worst_waiting_for_cpu_ms"]
    assert ran >= 350


async def test_an_idle_daemon_is_woken_once_a_second_not_ten_times() -> None:
    """While ``busy()`` says no session is live the watch sleeps ``idle_tick``;
    the first tick after sessions appear puts it back on ``tick``."""
    live = False
    watch = LoopWatch(tick=0.02, busy=lambda: live, idle_tick=0.3)
    ticks: list[float] = []
    original = watch.ticked

    def count(now: float, *args: Any) -> None:
        ticks.append(now)
        original(now, *args)

    watch.ticked = count  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(watch.run())
    try:
        await asyncio.sleep(0.7)
        idle_ticks = len(ticks)
        live = True
        await asyncio.sleep(0.7)  # up to one idle tick, then 20 ms ticks
        busy_ticks = len(ticks) - idle_ticks
    finally:
        task.cancel()
    assert idle_ticks <= 3
    assert busy_ticks >= 10
