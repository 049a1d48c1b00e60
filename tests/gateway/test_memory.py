"""Memory per session (benchmark #5: <= 150 KiB of gateway RSS per session).

What a closed session leaves behind in a real in-process gateway (the rig of
bench/session_memory.py: asyncssh target shell and clients on loopback).
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from pathlib import Path

from bench.session_memory import PER_SESSION_TYPES, FarSide, start_gateway, wait_until


def per_session_objects() -> Counter[str]:
    alive: Counter[str] = Counter()
    for o in gc.get_objects():
        t = type(o)
        name = f"{t.__module__}.{t.__qualname__}"
        if name in PER_SESSION_TYPES:
            alive[name] += 1
    return alive


async def test_closed_sessions_leave_nothing_behind(tmp_path: Path) -> None:
    far = FarSide()
    gw = await start_gateway(tmp_path, await far.start_target(), logging=False)
    try:
        opened = await far.open(gw.port, 6, 3, 2)
        assert opened["opened"] == 6, opened
        await asyncio.sleep(1.2)  # the idle watcher looks at every live connection
        await far.close()
        assert await wait_until(lambda: len(gw.registry) == 0, 10)
        await asyncio.sleep(1.2)  # and looks again, at none
        gc.collect()
        assert per_session_objects() == Counter()
    finally:
        await gw.stop()
        far.stop()
