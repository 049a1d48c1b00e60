"""Recordings on disk: one asciicast per connection, fed from the relay.

``SessionRecording`` ties one live connection to the sans-I/O recorder parts
(``CastWriter``, ``CommandExtractor``, ``ScreenModel``) and to its file
``recordings/<connection id>.cast`` (mode 0600). ``Recordings`` owns the set of
open recordings and the one task that flushes them every ``flush_interval``,
so the relay's per-chunk work is a few list appends and never a write().

A recording that cannot be written (disk full, permissions) closes its
connection with ``error`` unless ``[recording] on_failure = "continue"``:
unrecorded traffic never passes silently.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from config.models import InputRecording, OnFailure
from recorder.cast import CastWriter
from recorder.commands import Command, CommandExtractor, ExtractorEvent, exec_command
from recorder.screen import ScreenModel
from store.events import SYSTEM, AuditEntry, CloseReason, CommandRecord, ConnectionKind

if TYPE_CHECKING:
    from gateway.daemon import Gateway
    from gateway.live import LiveConnection

log = structlog.get_logger("shellgate.recording")

_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
"""Buffers per ``os.writev`` call (Linux: 1024)."""

_FLUSH_SLICE = 0.002
"""Seconds of flushing per loop turn (see ``Recordings._flush_spread``)."""

FLUSH_BYTES = 512 * 1024
"""Output bytes a recording holds before it flushes at the end of the loop
turn instead of waiting for the flush task. A second of bulk output is tens of
MB: held for the once-a-second flush, it and its escaped copy grew the heap by
that much and gave it back every second, and every byte of the cast was
written into freshly faulted pages (the page faults were most of the relay's
kernel time under a pty ``cat``). Flushed every half MB, the same memory is
reused while it is still in cache, and a streaming session holds at most this
much. A keystroke's echo never comes near it."""

FLUSH_EVENTS = 64
"""Cast events a recording holds before it flushes at the end of the loop
turn instead of waiting for the flush task. One second of a fast typist's
keys and echoes took ~0.7 ms to encode in one go (400 keys, warm caches),
during which every other session's keystroke waited; 64 events take ~0.1 ms.
A thousand ordinary typists (a few keys a second each) never reach it: they
stay on the once-a-second flush, spread by ``_FLUSH_SLICE``."""


class RecordingError(Exception):
    """A recording could not be started and ``on_failure`` says close."""


class SessionRecording:
    """One connection's cast file, command extractor and screen model."""

    def __init__(
        self,
        owner: Recordings,
        live: LiveConnection,
        path: Path,
        fd: int,
        writer: CastWriter,
        extractor: CommandExtractor | None,
        screen: ScreenModel | None,
        input_mode: InputRecording,
    ) -> None:
        self.owner = owner
        self.live = live
        self.cast_path = str(path)
        self._fd: int | None = fd
        self.writer = writer
        self.extractor = extractor
        self.screen = screen
        # Input goes to the cast directly only when nothing must be redacted;
        # in redacted mode the extractor releases what was echoed.
        self._input_direct = input_mode is InputRecording.ON
        self._input_via_extractor = input_mode is InputRecording.REDACTED and extractor is not None
        self.failed = False
        # Exec output without a pty may be a tarball: a cast of it is useless
        # to a reader and costs the relay dearly (every invalid byte becomes
        # an escaped U+FFFD). Once it turns binary, only its size is recorded.
        self._watch_binary = live.kind is ConnectionKind.EXEC and live.pty is None
        self._binary_bytes = 0
        self._held = 0  # output bytes since the last flush (see FLUSH_BYTES)
        self._flush_queued = False  # a flush at the end of this loop turn (FLUSH_EVENTS)

    # -- the relay's calls (hot path: appends only) -----------------------------
    def output(self, t: float, data: bytes) -> None:
        if self._watch_binary and (self._binary_bytes or _is_binary(data)):
            self._binary(t, len(data))
            return
        self.writer.output(t, data)
        held = self._held = self._held + len(data)
        if held > FLUSH_BYTES and held - len(data) <= FLUSH_BYTES:
            asyncio.get_running_loop().call_soon(self.flush)  # once per crossing
        if self.screen is not None:
            self.screen.feed(data)
        if self.extractor is not None:
            events = self.extractor.output(t, data)
            if events:
                self._handle(events)
        if self.writer.pending_events >= FLUSH_EVENTS and not self._flush_queued:
            self._queue_flush()

    def input(self, t: float, data: bytes) -> None:
        if self._input_direct:
            self.writer.input(t, data)
        if self.extractor is not None:
            events = self.extractor.input(t, data)
            if events:
                self._handle(events)
        if self.writer.pending_events >= FLUSH_EVENTS and not self._flush_queued:
            self._queue_flush()

    def _queue_flush(self) -> None:
        self._flush_queued = True
        asyncio.get_running_loop().call_soon(self.flush)

    def _binary(self, t: float, n: int) -> None:
        if not self._binary_bytes:
            self.writer.marker(t, "binary output follows; not recorded, only its size")
        self._binary_bytes += n

    def resize(self, t: float, cols: int, rows: int) -> None:
        self.writer.resize(t, cols, rows)
        if self.extractor is not None:
            self.extractor.resize(cols, rows)
        if self.screen is not None:
            self.screen.resize(cols, rows)

    def marker(self, t: float, text: str) -> None:
        self.writer.marker(t, text)

    def redraw(self) -> bytes:
        return self.screen.redraw() if self.screen is not None else b""

    def _handle(self, events: Sequence[ExtractorEvent]) -> None:
        for e in events:
            if isinstance(e, Command):
                self.emit_command(e)
            elif self._input_via_extractor:
                self.writer.input(e.time, e.data)

    def emit_command(self, command: Command) -> None:
        live = self.live
        live.store.emit(
            CommandRecord(
                time=live.opened_at + timedelta(seconds=command.time),
                connection_id=live.id,
                user=live.user,
                target=live.target,
                target_user=live.login,
                command=command.text,
            )
        )

    # -- disk ------------------------------------------------------------------
    def flush(self) -> None:
        self._held = 0
        self._flush_queued = False
        if self._fd is None:
            return
        parts = self.writer.take_parts()
        if parts:
            self._write(parts)

    def _write(self, parts: list[bytes]) -> None:
        """Append ``parts`` (complete lines, in pieces) to the file with
        ``writev``: a second of bulk output is tens of MB, and joining it first
        cost a copy and the page faults of a fresh buffer."""
        if self._fd is None:
            return
        written = 0
        todo: list[bytes | memoryview] = list(parts)
        try:
            i = 0
            while i < len(todo):
                batch = todo[i : i + _IOV_MAX]
                done = os.writev(self._fd, batch)
                written += done
                # A short write: skip what went out, resume inside the part it cut.
                for part in batch:
                    if done < len(part):
                        todo[i] = memoryview(part)[done:]
                        break
                    done -= len(part)
                    i += 1
        except OSError as e:
            if written:
                # A short write (disk full) left a torn line: cut it, so every
                # line on disk stays complete and the cast stays valid.
                try:
                    os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
                except OSError:
                    pass
            self._failed(e)

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        self.owner.discard(self)

    def _failed(self, e: OSError) -> None:
        self._close_file()
        self.failed = True
        why = f"recording {self.cast_path} could not be written: {e.strerror or e}"
        live = self.live
        audit_recording_failure(live, why)
        if self.owner.on_failure is OnFailure.CLOSE:
            log.error("recording failed; closing the connection", connection_id=live.id, error=why)
            live.recording = None  # nothing more to write; close without it
            live.close(CloseReason.ERROR, SYSTEM, why)
        else:
            log.error(
                "recording failed; connection continues unrecorded (on_failure=continue)",
                connection_id=live.id,
                error=why,
            )
            live.recording = None

    def close(self, t: float, reason: CloseReason) -> None:
        """Final marker, last commands, and the file closed complete."""
        if self.extractor is not None:
            self._handle(self.extractor.finish())
        if self._binary_bytes:
            self.writer.marker(t, f"binary output: {self._binary_bytes} bytes")
        self.writer.marker(t, f"closed: {reason.value}")
        if self._fd is not None:
            self._write(self.writer.finish_parts(t))  # finish() takes what is pending
        self._close_file()


class Recordings:
    """Every open recording of the daemon and the task that flushes them."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._open: set[SessionRecording] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def directory(self) -> Path:
        return self.gateway.data_dir / "recordings"

    @property
    def on_failure(self) -> OnFailure:
        return self.gateway.config.recording.on_failure

    def start(self, live: LiveConnection) -> SessionRecording | None:
        """A recording for a new connection, its header already on disk; None
        when recording is off. Raises OSError if the file cannot be created."""
        cfg = self.gateway.config.recording
        if not cfg.enabled:
            return None
        if live.kind is ConnectionKind.EXEC and live.command is not None:
            # An exec request is one command, exactly its string.
            cmd = exec_command(live.command, 0.0)
        else:
            cmd = None
        path = self.directory / f"{live.id}.cast"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        pty = live.pty
        cols, rows = (pty.cols, pty.rows) if pty else (80, 24)
        writer = CastWriter(
            cols,
            rows,
            int(time.time()),
            env={"TERM": pty.term_type if pty else None, "SHELL": None},
            title=f"{live.user} -> {live.login}@{live.target}",
            command=live.command,
            input_mode=cfg.input.value,  # type: ignore[arg-type]
            format=cfg.format.value,  # type: ignore[arg-type]
        )
        shell = live.kind is ConnectionKind.SHELL
        extractor = CommandExtractor(cols, rows) if shell and cfg.commands else None
        screen = ScreenModel(cols, rows) if shell and pty is not None else None
        # The header is written here, not through SessionRecording._write: a
        # failure now (disk full) is a recording that could not be created,
        # refused (or continued unrecorded) before the connection exists.
        try:
            view = memoryview(writer.header())
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        rec = SessionRecording(self, live, path, fd, writer, extractor, screen, cfg.input)
        if cmd is not None and cfg.commands:
            rec.emit_command(cmd)
        self._open.add(rec)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_forever())
        return rec

    def discard(self, rec: SessionRecording) -> None:
        self._open.discard(rec)

    def flush_all(self) -> None:
        for rec in list(self._open):
            rec.flush()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.gateway.config.recording.flush_interval or 1.0)
            await self._flush_spread()

    async def _flush_spread(self) -> None:
        """Flush every recording, giving the loop back every ~2 ms of work: a
        thousand casts flushed in one go held every keystroke's echo for the
        whole pass, once a second (the p99 of benchmark #5)."""
        clock = time.perf_counter
        started = clock()
        for rec in list(self._open):
            rec.flush()
            if clock() - started > _FLUSH_SLICE:
                await asyncio.sleep(0)
                started = clock()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.flush_all()


def audit_recording_failure(live: LiveConnection, why: str) -> None:
    """The audit entry for a recording that could not be created or written."""
    live.store.emit(
        AuditEntry(
            actor=SYSTEM,
            action="recording_failed",
            detail=why,
            connection_id=live.id,
            target=live.target,
        )
    )


def _is_binary(data: bytes) -> bool:
    """True when ``data`` is not UTF-8 text or holds NUL bytes. A character
    cut by the read boundary is fine at either end: up to 3 continuation
    bytes at the start (the rest of the previous read's last character), and
    an incomplete sequence at the end (``final=False``)."""
    if b"\x00" in data:
        return True
    if data.isascii():  # the common case, word-at-a-time; no decode
        return False
    start = 0
    while start < 3 and start < len(data) and 0x80 <= data[start] < 0xC0:
        start += 1
    try:
        codecs.utf_8_decode(memoryview(data)[start:], "strict", False)
    except UnicodeDecodeError:
        return True
    return False


ORPHAN_MARGIN = 60.0
"""Seconds before the store's newest event that a torn cast may have been
last written and still be from the stop being recovered (see
``repair_torn_casts``)."""


def repair_torn_casts(directory: Path, newest_event: datetime | None) -> list[Path]:
    """Repair the casts in ``directory`` last written from ``ORPHAN_MARGIN``
    before the store's ``newest_event`` on (every cast when the store has
    none) whose last line is torn, and return them.

    Start-up repair goes by the store's live rows, but a kill -9 between a
    connection's first cast write and the commit of its ``open`` event leaves
    a cast with no row. Only a stop tears a line (a short write is cut at
    once), and a cast torn by the stop being recovered was written at or
    after the store's newest event: start-up does not read every cast ever
    recorded."""
    since = newest_event.timestamp() - ORPHAN_MARGIN if newest_event else 0.0
    repaired: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        log.warning("could not scan recordings", path=str(directory), error=str(e))
        return repaired
    for entry in entries:
        if not entry.name.endswith(".cast"):
            continue
        try:
            st = entry.stat()
            if st.st_mtime < since or st.st_size == 0:
                continue
            with open(entry.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        except OSError:
            continue
        if torn and repair_cast(Path(entry.path), "closed: gateway_crashed"):
            repaired.append(Path(entry.path))
    return repaired


def repair_cast(path: Path, marker: str) -> bool:
    """Make a cast left by an unclean stop valid: cut a torn last line and
    append a closing marker. Returns True if the file was changed."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return False
            f.seek(max(0, size - 65536))
            tail = f.read()
            keep = size
            if not tail.endswith(b"\n"):
                keep = size - (len(tail) - (tail.rfind(b"\n") + 1))
            f.truncate(keep)
            f.seek(0)
            v3 = b'"version":3' in f.readline().replace(b" ", b"")
            # Back up far enough to hold the whole last line (an "o" event can
            # be longer than 64 KiB; a fragment would give the marker time 0).
            back = 65536
            while True:
                f.seek(max(0, keep - back))
                chunk = f.read(keep - max(0, keep - back))
                if back >= keep or b"\n" in chunk[:-1]:
                    break
                back *= 4
            lines = chunk.splitlines()
            last_t = 0.0
            if not v3 and lines and lines[-1].startswith(b"["):
                try:
                    last_t = float(json.loads(lines[-1])[0])
                except (ValueError, IndexError, TypeError):
                    last_t = 0.0
            f.seek(0, os.SEEK_END)
            f.write(json.dumps([round(last_t, 6), "m", marker]).encode() + b"\n")
            return True
    except OSError as e:
        log.warning("could not repair recording", path=str(path), error=str(e))
        return False
