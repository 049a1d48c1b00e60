"""SessionRecording's writes to the cast file: pieces written with writev,
short writes resumed, a failed write cut back so the file stays valid."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import gateway.recording as recording
from config.models import InputRecording, OnFailure
from recorder.cast import CastWriter
from store.events import CloseReason, ConnectionKind
from tests.cast_validator import validate_cast


class Live(SimpleNamespace):
    def close(self, reason: CloseReason, by: str, message: str) -> None:
        self.closed = (reason, by, message)


def open_recording(tmp_path: Path) -> tuple[recording.SessionRecording, Path, Any]:
    path = tmp_path / "c.cast"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    writer = CastWriter(80, 24, 1_700_000_000, input_mode="off")
    os.write(fd, writer.header())
    owner = SimpleNamespace(on_failure=OnFailure.CLOSE, discard=lambda rec: None)
    live = Live(
        id="c1",
        kind=ConnectionKind.EXEC,
        pty=SimpleNamespace(cols=80, rows=24),
        target="web1",
        store=SimpleNamespace(emitted=[]),
        closed=None,
    )
    live.store.emit = live.store.emitted.append
    rec = recording.SessionRecording(
        owner,  # type: ignore[arg-type]
        live,  # type: ignore[arg-type]
        path,
        fd,
        writer,
        None,
        None,
        InputRecording.OFF,
    )
    live.recording = rec
    return rec, path, live


def output(rec: recording.SessionRecording, n: int) -> bytes:
    """``n`` output events far enough apart not to coalesce."""
    sent = b""
    for i in range(n):
        data = b'line %d \xc3\xa9 \x1b[1m"q"\\\r\n' % i * 50
        rec.output(i * 0.1, data)
        sent += data
    return sent


def test_many_pieces_and_short_writes_reach_the_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording, "_IOV_MAX", 5)
    real = os.writev
    calls = []

    def short_writev(fd: int, buffers: list[Any]) -> int:
        calls.append(len(buffers))
        # Write at most 1000 bytes, often cutting a piece in the middle.
        data = b"".join(bytes(b) for b in buffers)[:1000]
        return real(fd, [data])

    monkeypatch.setattr(recording.os, "writev", short_writev)
    rec, path, live = open_recording(tmp_path)
    sent = output(rec, 40)
    rec.flush()
    sent += output(rec, 3)
    rec.close(10.0, CloseReason.CLIENT_EXIT)
    assert max(calls) <= 5 and len(calls) > 40
    _, events = validate_cast(path)
    assert "".join(d for _, c, d in events if c == "o") == sent.decode()
    assert events[-1][1:] == ("m", "closed: client_exit")
    assert live.closed is None


def test_a_failed_write_is_cut_back_and_closes_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec, path, live = open_recording(tmp_path)
    output(rec, 2)
    rec.flush()
    good = path.read_bytes()
    real = os.writev

    def full_disk(fd: int, buffers: list[Any]) -> int:
        if os.fstat(fd).st_size > len(good) + 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, [bytes(buffers[0])[:150]])  # short: tears a line

    monkeypatch.setattr(recording.os, "writev", full_disk)
    output(rec, 5)
    rec.flush()
    assert path.read_bytes() == good  # the torn flush is cut off
    validate_cast(path)
    assert rec.failed
    assert live.closed is not None and live.closed[0] is CloseReason.ERROR
    assert "No space left on device" in live.closed[2]
    assert [e.action for e in live.store.emitted] == ["recording_failed"]


@pytest.mark.parametrize(
    ("chunks", "binary"),
    [
        ([b"plain text\n" * 100], False),
        (["caf\u00e9 \U0001f600 ok\n".encode() * 50], False),
        # A character cut by the read boundary, at the end of one read and
        # at the start of the next: still text.
        ([b"x" * 99 + b"\xf0\x9f", b"\x98\x80 more text\n"], False),
        ([b"a\xc3", b"\xa9b"], False),
        ([b"text then \x00 a NUL"], True),
        ([b"text then \xff\xfe bad bytes"], True),
        ([b"\x80\x80\x80\x80 four continuation bytes at the start"], True),
    ],
)
def test_exec_output_without_a_pty_is_binary_only_when_it_is(
    tmp_path: Path, chunks: list[bytes], binary: bool
) -> None:
    rec, path, live = open_recording(tmp_path)
    live.pty = None
    rec._watch_binary = True
    for i, chunk in enumerate(chunks):
        rec.output(i * 0.1, chunk)
    rec.close(1.0, CloseReason.CLIENT_EXIT)
    _, events = validate_cast(path)
    markers = [d for _, c, d in events if c == "m"]
    assert any(m.startswith("binary output") for m in markers) is binary
    if not binary:
        assert "".join(d for _, c, d in events if c == "o") == b"".join(chunks).decode()
