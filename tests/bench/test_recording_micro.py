"""bench/recording_micro.py's typists, warm and with cold caches: every
command line is still extracted (``_run_typing`` checks the records), and
``--cold`` times the recording calls alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.recording_micro import _chill, _run_typing


def test_chill_writes_every_cache_line() -> None:
    buf = bytearray(b"\xff" * 1000)
    _chill(buf)
    assert all(buf[i] == 0 for i in range(0, 1000, 64))
    assert buf[1] == 0xFF  # only one byte a line: a walk, not a copy


def test_typists_warm_and_cold(tmp_path: Path) -> None:
    (tmp_path / "warm").mkdir()
    (tmp_path / "cold").mkdir()
    keys, cmds, spent = asyncio.run(_run_typing(2, 3, tmp_path / "warm"))
    assert (cmds, spent) == (6, 0.0)  # warm: nothing timed (instruction counts stay clean)
    keys_cold, cmds_cold, spent_cold = asyncio.run(
        _run_typing(2, 3, tmp_path / "cold", cold_mb=0.5)
    )
    assert (keys_cold, cmds_cold) == (keys, cmds)
    assert spent_cold > 0.0
