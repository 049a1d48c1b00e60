"""Micro benchmark of the recorder's hot path (not collected by pytest).

Run: ``.venv/bin/python tests/recorder/bench_cast.py``. Feeds 100 MB through
``CastWriter.output`` alone, then with ``CommandExtractor.output`` and
``ScreenModel.feed`` too (everything the relay does per output chunk), in
16 KiB reads, calling ``take()`` once per simulated second as the gateway
does, and prints MB/s for text and for random binary. For scale it also
prints what pyte over every byte would cost.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pyte

from recorder.cast import CastWriter
from recorder.commands import CommandExtractor
from recorder.screen import ScreenModel

TOTAL = 100 * 1024 * 1024
CHUNK = 16 * 1024
READS_PER_SECOND = 6000  # ~100 MB/s relay: one take() per ~6000 reads


def make_text() -> bytes:
    line = b"2026-11-23 01:49:00 INFO  some log line with \xc3\xa9 and numbers 1234567890\r\n"
    return (line * (CHUNK // len(line) + 1))[:CHUNK]


def bench(name: str, chunk: bytes, full: bool) -> None:
    w = CastWriter(80, 24, 0, input_mode="redacted")
    ext = screen = None
    if full:
        ext = CommandExtractor(80, 24)
        screen = ScreenModel(80, 24)
        ext.output(0.0, b"bash-5.2$ ")
        ext.input(0.0, b"cat big\r")
        ext.output(0.0, b"cat big\r\n")
    n = TOTAL // len(chunk)
    written = 0
    t0 = time.perf_counter()
    for i in range(n):
        t = i * 1e-5
        w.output(t, chunk)
        if ext is not None and screen is not None:
            ext.output(t, chunk)
            screen.feed(chunk)
        if i % READS_PER_SECOND == 0:
            written += len(w.take())
    written += len(w.finish(n * 1e-5))
    if screen is not None:
        screen.redraw()  # a reattach at the end: one bounded replay
    dt = time.perf_counter() - t0
    label = f"{name}{' +extractor +screen' if full else ' cast only'}"
    print(f"{label:36s} {TOTAL / dt / 1e6:8.1f} MB/s  (cast {written / 1e6:.1f} MB)")


def pyte_rate(chunk: bytes) -> None:
    screen = pyte.Screen(80, 24)
    stream = pyte.ByteStream(screen)
    t0 = time.perf_counter()
    for _ in range(64):
        stream.feed(chunk)
    dt = time.perf_counter() - t0
    print(f"{'(pyte over every byte, text)':36s} {64 * len(chunk) / dt / 1e6:8.1f} MB/s")


def main() -> None:
    text = make_text()
    binary = os.urandom(CHUNK)
    for full in (False, True):
        bench("text", text, full)
        bench("random binary", binary, full)
    pyte_rate(text)


if __name__ == "__main__":
    main()
