"""Memory per session (benchmark #5: <= 150 KiB of gateway RSS per session).

What a closed session leaves behind in a real in-process gateway (the rig of
bench/session_memory.py: asyncssh target shell and clients on loopback), and
what a long-lived shell's screen model keeps while nobody reattaches.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from pathlib import Path

import pytest

from bench.session_memory import PER_SESSION_TYPES, FarSide, start_gateway, wait_until
from recorder.screen import BOUND, COMPACT_BYTES, MAX_CHUNKS, ScreenModel

PROMPT = b"root@target:~# "


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


class Unbounded(ScreenModel):
    """The model without feed-time compaction: everything waits for the redraw."""

    def _compact(self) -> None:
        pass


def same_screen(a: ScreenModel, b: ScreenModel) -> None:
    assert a.text() == b.text()
    sa, sb = a._screen, b._screen
    for y in range(sa.lines):
        assert [sa.buffer[y][x] for x in range(sa.columns)] == [
            sb.buffer[y][x] for x in range(sb.columns)
        ]
    assert (sa.cursor.x, sa.cursor.y) == (sb.cursor.x, sb.cursor.y)
    assert a.redraw() == b.redraw()


def typist(n: int) -> list[bytes]:
    """A shell session as the relay sees it: each key's echo alone, then the
    command's output and the next prompt."""
    chunks = [b"Last login: today\r\n" + PROMPT]
    for i in range(n):
        chunks += [bytes([c]) for c in b"echo hi-%d" % i]
        chunks.append(b"\r\nhi-%d\r\n" % i + PROMPT)
    return chunks


def test_a_long_lived_shell_keeps_a_few_kib_and_no_emulator() -> None:
    m, ref = ScreenModel(80, 24), Unbounded(80, 24)
    for chunk in typist(3000):  # ~75 KB in ~36,000 chunks
        m.feed(chunk)
        ref.feed(chunk)
        assert len(m._pending) <= MAX_CHUNKS + 1
        assert m._pending_size <= 2 * COMPACT_BYTES
    assert m._emulator is None  # nobody asked for the screen yet
    same_screen(m, ref)


def test_compaction_keeps_colours_clears_and_the_alternate_screen() -> None:
    m, ref = ScreenModel(60, 10), Unbounded(60, 10)
    script = [
        *typist(400),
        b"\x1b[2J\x1b[H\x1b[1;32mgreen\x1b[0m after a clear\r\n" + PROMPT,
        *typist(50),
        b"vim\r\n\x1b[?1049h\x1b[H\x1b[2J~\r\n~\r\n\x1b[1;1H\x1b[7mvim here\x1b[0m",
        *[b"\x1b[5;1Hline %05d" % i for i in range(3000)],
        b"\x1b[?1049l" + PROMPT,
        *typist(600),
    ]
    for i, chunk in enumerate(script):
        m.feed(chunk)
        ref.feed(chunk)
        if i % 997 == 0:
            same_screen(m, ref)
    same_screen(m, ref)
    assert m._pending_size <= 2 * BOUND


def test_a_full_screen_program_keeps_at_most_twice_the_replay_bound() -> None:
    m = ScreenModel(80, 24)
    m.feed(b"$ top\r\n\x1b[?1049h\x1b[H\x1b[2J")
    for i in range(40_000):
        m.feed(b"\x1b[3;1H%08d tasks" % i)
        assert m._pending_size <= 2 * BOUND
    assert m.text()[2].startswith("00039999 tasks")


def test_very_long_lines_stay_bounded_too() -> None:
    m, ref = ScreenModel(80, 24), Unbounded(80, 24)
    line = b"x" * 50_000 + b"\r\n"
    for _ in range(40):
        m.feed(line)
        ref.feed(line)
        assert m._pending_size <= 2 * BOUND + len(line)
    m.feed(PROMPT)
    ref.feed(PROMPT)
    same_screen(m, ref)


def test_the_heap_is_trimmed_once_after_many_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import daemon

    calls: list[int] = []
    monkeypatch.setattr(daemon, "_malloc_trim", lambda pad: calls.append(pad) or 1)
    gw = daemon.Gateway.__new__(daemon.Gateway)  # only what the trim looks at
    gw._live_peak, gw._last_trim, gw._trim_at = 0, 0.0, None
    live: list[object] = []
    gw.registry = live  # type: ignore[assignment]
    now = 1000.0

    def tick(n: int, seconds: float = 1.0) -> None:
        nonlocal now
        now += seconds
        live[:] = [object()] * n
        gw._trim_after_closes(now)

    tick(300)
    tick(250)  # a few closed: no trim
    tick(150)  # 150 fewer than the peak: a trim TRIM_DELAY from now
    tick(100)
    assert calls == []
    tick(0, daemon.TRIM_DELAY)
    assert calls == [0]
    tick(0)  # nothing closed since
    tick(200)
    tick(0)  # 200 more closed, but within TRIM_INTERVAL of the last trim
    tick(0, daemon.TRIM_DELAY)
    assert calls == [0]
    tick(0, daemon.TRIM_INTERVAL)
    tick(0, daemon.TRIM_DELAY)
    assert calls == [0, 0]


async def test_a_closed_session_is_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    far = FarSide()
    gw = await start_gateway(tmp_path, await far.start_target(), logging=False)
    try:
        await far.open(gw.port, 3, 3, 1)
        gc.collect()
        gc.disable()
        try:
            await far.close()
            assert await wait_until(lambda: len(gw.registry) == 0, 10)
            await asyncio.sleep(0.2)
            # pyte's own cycles (ByteStream <-> its parser generator, a
            # screen's row factory closing over the screen) are left aside.
            left = per_session_objects()
            del left["recorder.terminal.TrackedScreen"]
            assert left == Counter()
        finally:
            gc.enable()
    finally:
        await gw.stop()
        far.stop()
