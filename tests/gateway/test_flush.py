"""The recordings' periodic flush gives the event loop back while it works:
with a thousand casts, one pass held every keystroke's echo."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.recording import Recordings


class _SlowRecording:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def flush(self) -> None:
        time.sleep(0.001)  # a cast's worth of encoding and writev
        self.log.append(self.name)


async def test_flush_pass_yields_to_the_loop_and_flushes_everything() -> None:
    log: list[str] = []
    recs = Recordings(gateway=None)  # type: ignore[arg-type]
    recs._open = {_SlowRecording(log, f"r{i}") for i in range(20)}  # type: ignore[assignment]
    stop = False

    async def ticker() -> None:
        while not stop:
            log.append("tick")
            await asyncio.sleep(0)

    task: asyncio.Task[Any] = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await recs._flush_spread()
    stop = True
    await task
    flushed = [x for x in log if x != "tick"]
    assert sorted(flushed) == sorted(f"r{i}" for i in range(20))
    first, last = log.index(flushed[0]), log.index(flushed[-1])
    # the loop ran other work between the first and the last cast's flush
    assert "tick" in log[first:last]
