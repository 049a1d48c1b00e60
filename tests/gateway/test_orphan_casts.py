"""Start-up repair of casts torn by a kill -9 whose connection never reached
the store (``gateway.recording.repair_torn_casts``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from gateway.recording import ORPHAN_MARGIN, repair_torn_casts
from tests.cast_validator import validate_cast

HEADER = b'{"version": 2, "width": 80, "height": 24, "timestamp": 1764720000}\n'


def _cast(directory: Path, name: str, body: bytes, mtime: float | None = None) -> Path:
    path = directory / name
    path.write_bytes(body)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_torn_recent_cast_is_cut_and_marked(tmp_path: Path) -> None:
    torn = _cast(tmp_path, "a.cast", HEADER + b'[0.5, "o", "hello\\r\\n"]\n[0.9, "o", "hal')
    assert repair_torn_casts(tmp_path, newest_event=datetime.now(UTC)) == [torn]
    _, events = validate_cast(torn)
    assert events == [(0.5, "o", "hello\r\n"), (0.5, "m", "closed: gateway_crashed")]


def test_whole_old_empty_and_other_files_are_left_alone(tmp_path: Path) -> None:
    whole = HEADER + b'[0.5, "o", "hello"]\n'
    torn = HEADER + b'[0.5, "o", "hel'
    newest = datetime.now(UTC)
    since = newest.timestamp() - ORPHAN_MARGIN
    files = {
        _cast(tmp_path, "whole.cast", whole): whole,
        # Torn, but last written before the stop being recovered: an older
        # stop's, already handled then (start-up does not read every cast).
        _cast(tmp_path, "old.cast", torn, mtime=since - 3600): torn,
        _cast(tmp_path, "empty.cast", b""): b"",
        _cast(tmp_path, "notes.txt", b"torn"): b"torn",
    }
    assert repair_torn_casts(tmp_path, newest_event=newest) == []
    for path, body in files.items():
        assert path.read_bytes() == body, path


def test_unreadable_directory_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    assert repair_torn_casts(tmp_path / "missing", newest_event=None) == []
