"""Micro benchmark of the recorder's hot path (not collected by pytest).

Run: ``.venv/bin/python tests/recorder/bench_cast.py``. Feeds 100 MB through
``CastWriter.output`` (and ``CommandExtractor.output`` when present) in 16 KiB
reads, calling ``take()`` once per simulated second as the gateway does, and
prints MB/s for text and for random binary.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recorder.cast import CastWriter

TOTAL = 100 * 1024 * 1024
CHUNK = 16 * 1024
READS_PER_SECOND = 6000  # ~100 MB/s relay: one take() per ~6000 reads


def make_text() -> bytes:
    line = b"2026-11-23 01:49:00 INFO  some log line with \xc3\xa9 and numbers 1234567890\r\n"
    return (line * (CHUNK // len(line) + 1))[:CHUNK]


def bench(name: str, chunk: bytes, with_extractor: bool) -> None:
    w = CastWriter(80, 24, 0, input_mode="redacted")
    ext = None
    if with_extractor:
        from recorder.commands import CommandExtractor

        ext = CommandExtractor(80, 24)
        ext.output(0.0, b"bash-5.2$ ")
        ext.input(0.0, b"cat big\r")
        ext.output(0.0, b"cat big\r\n")
    n = TOTAL // len(chunk)
    written = 0
    t0 = time.perf_counter()
    for i in range(n):
        t = i * 1e-5
        w.output(t, chunk)
        if ext is not None:
            ext.output(t, chunk)
        if i % READS_PER_SECOND == 0:
            written += len(w.take())
    written += len(w.finish(n * 1e-5))
    dt = time.perf_counter() - t0
    label = f"{name}{' +extractor' if with_extractor else ''}"
    print(f"{label:28s} {TOTAL / dt / 1e6:8.1f} MB/s  (cast {written / 1e6:.1f} MB)")


def main() -> None:
    text = make_text()
    binary = os.urandom(CHUNK)
    for with_extractor in (False, True):
        if with_extractor:
            try:
                import recorder.commands  # noqa: F401
            except ImportError:
                continue
        bench("text", text, with_extractor)
        bench("random binary", binary, with_extractor)


if __name__ == "__main__":
    main()
