"""When recordings reach the disk: the periodic flush gives the event loop
back while it works (with a thousand casts, one pass held every keystroke's
echo), and bulk output or a fast typist's many events are flushed in
between, at the end of the loop turn that passed the bound."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from config.models import RecordingSection
from gateway.recording import FLUSH_BYTES, FLUSH_EVENTS, Recordings
from store.events import CloseReason, ConnectionKind
from tests.cast_validator import validate_cast


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


def _recording(tmp_path: Path, kind: ConnectionKind, command: str | None) -> tuple[Any, Any]:
    """A real SessionRecording under ``tmp_path`` whose periodic flush is an
    hour away, and its Recordings."""
    cfg = RecordingSection(flush_interval=3600)
    gateway = SimpleNamespace(config=SimpleNamespace(recording=cfg), data_dir=tmp_path)
    (tmp_path / "recordings").mkdir()
    recordings = Recordings(gateway)  # type: ignore[arg-type]
    live = SimpleNamespace(
        id="00000000-0000-0000-0000-000000000001",
        kind=kind,
        command=command,
        pty=SimpleNamespace(cols=80, rows=24, term_type="xterm"),
        user="alice",
        login="root",
        target="web1",
        store=SimpleNamespace(emit=lambda event: None),
        opened_at=datetime.now(UTC),
    )
    rec = recordings.start(live)  # type: ignore[arg-type]
    assert rec is not None
    return recordings, rec


async def test_bulk_output_is_flushed_by_size_between_the_periodic_flushes(
    tmp_path: Path,
) -> None:
    """A streaming session's output goes to disk once it holds FLUSH_BYTES, at
    the end of that loop turn, not only at the periodic flush (an hour away
    here): memory per session stays bounded and the cast is whole."""
    recordings, rec = _recording(tmp_path, ConnectionKind.EXEC, "cat big.log")
    path = Path(rec.cast_path)
    header = path.stat().st_size
    line = b"0123456789 abcdefghij klmnopqrst uvwxyz\r\n"
    sent = b""
    sizes: list[int] = []
    for turn in range(6):
        chunk = line * (FLUSH_BYTES // len(line) // 3)
        for i in range(4):  # 4/3 of FLUSH_BYTES this turn
            rec.output(turn + i / 10, chunk)
            sent += chunk
        assert path.stat().st_size == (sizes[-1] if sizes else header)  # nothing mid-turn
        await asyncio.sleep(0)
        sizes.append(path.stat().st_size)
        assert sizes[-1] > len(sent), (turn, sizes)  # all of it on disk after the turn
        assert rec._held == 0
    rec.close(7.0, CloseReason.CLIENT_EXIT)
    await recordings.close()
    _, events = validate_cast(path)
    assert "".join(d for _, code, d in events if code == "o") == sent.decode()


async def test_a_fast_typist_is_flushed_by_event_count(tmp_path: Path) -> None:
    """Keys and their echoes go to disk FLUSH_EVENTS at a time, at the end of
    the loop turn that reached it: never a second's worth in one encoding
    (which held every other session's keystrokes), and the cast is whole."""
    recordings, rec = _recording(tmp_path, ConnectionKind.SHELL, None)
    path = Path(rec.cast_path)
    rec.output(0.0, b"$ ")
    header = path.stat().st_size
    typed = ""
    t = 0.01
    for i in range(3 * FLUSH_EVENTS):
        key = bytes((0x61 + i % 26,))
        rec.input(t, key)
        rec.output(t + 0.001, key)  # the echo
        typed += key.decode()
        t += 0.1  # apart: no two echoes coalesce
        assert rec.writer.pending_events <= FLUSH_EVENTS + 2
        await asyncio.sleep(0)  # the end of the turn
    assert path.stat().st_size > header  # on disk long before the periodic flush
    assert rec.writer.pending_events < FLUSH_EVENTS
    rec.close(t, CloseReason.CLIENT_EXIT)
    await recordings.close()
    _, events = validate_cast(path)
    assert "".join(d for _, code, d in events if code == "o") == "$ " + typed
    assert "".join(d for _, code, d in events if code == "i") == typed
