"""Recording cost per GB of pty output, without the noise of a live relay:
``python -m bench.recording_micro``.

Benchmark goal #6 wants pty output throughput with recording off / output
only / output+input within 10% of each other. The end-to-end figure (bench/run.py
#1/#5) is noisy on a shared 2-core machine, so this replays ~30 MB of
realistic terminal output (log lines with CRLF, some UTF-8, colour escapes,
split into 16-32 KiB chunks as an SSH channel delivers them, UTF-8 sequences
cut at chunk boundaries) through exactly the objects the gateway uses per
output chunk: ``Recordings.start`` builds the ``SessionRecording`` (cast
writer, command extractor, screen model) from a ``[recording]`` config, the
loop calls ``rec.output`` per chunk the way ``LiveConnection.from_target``
does, ``rec.flush()`` once per simulated second (the flush task) into a real
file, and ``rec.close()`` at the end. It reports gateway CPU seconds
(``getrusage``: user + system) per GB of output for:

* ``off``: ``[recording] enabled = false`` (no recording object: the bare loop);
* ``output``: ``input = "off"`` (cast output, command extractor, screen model);
* ``output+input``: the shipped default, ``input = "redacted"``.

The session types ``cat bigfile`` at a bash prompt first (so the extractor
engages, reads the command and disengages, as in the real bench). Every cast
is checked afterwards: valid asciicast, and its ``o`` events are exactly the
output decoded with U+FFFD for invalid bytes.

    python -m bench.recording_micro                  # 30 MB, best of 3
    python -m bench.recording_micro --mb 100 --runs 5
    python -m bench.recording_micro --data ascii     # bench/run.py's text file
    python -m bench.recording_micro --profile output+input   # cProfile, top 25
    python -m bench.recording_micro --typing 20 --cold 16     # typists, caches cold

``--cold MB`` exists because the live recorder runs cold: between two keys
the machine runs sshd, bash and the client, and what the recorder touched is
evicted. Walking 16 MB before each key made the same key stream cost ~3-7x
(session 15: #3's ~42 us of recording CPU a key live, 7 us warm).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config.models import RecordingSection  # noqa: E402
from gateway.recording import Recordings, SessionRecording  # noqa: E402
from store.events import CloseReason, ConnectionKind  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "off": {"enabled": False},
    "output": {"input": "off"},
    "output+input": {},  # the shipped default: input = "redacted", commands on
}

KINDS = ("exec", "shell")

RATE = 40e6
"""Simulated relay rate (bytes/s): sets the event times, hence coalescing and
how many chunks fall between two flushes."""

BASH_PROMPT = b"\x1b[?2004hroot@target:~# "
"""Benchmark #5's target: bash 5 with PS1 '\\u@target:\\w\\$ ' and bracketed paste."""
BASH_ENTER = b"\x1b[?2004l\r\r\n"
"""What bash 5 echoes for Enter (bracketed paste off while the command runs)."""

PROMPT = b"\x1b]0;alice@web1: ~\x07\x1b[01;32malice@web1\x1b[00m:\x1b[01;34m~\x1b[00m$ "


def make_output(total: int, seed: int = 42, plain: bool = False) -> bytes:
    """``total`` bytes of what ``cat`` of a colourised log through a pty looks
    like: CRLF line ends, ~1 line in 8 with UTF-8, ~1 in 6 with SGR colours.
    ``plain``: what bench/run.py's text file looks like through a pty (ASCII
    words, CRLF)."""
    rnd = random.Random(seed)
    words = [
        "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 10)))
        for _ in range(400)
    ]
    plain_words = list(words)
    words += ["café", "naïve", "Größe", "résumé", "日本語", "данные", "→", "✓", "😀", '"q"', "a\\b"]
    levels = ["INFO ", "DEBUG", "WARN ", "ERROR"]
    colours = ["\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[1;34m"]
    lines: list[str] = []
    size = 0
    n = 0
    while size < 4 << 20:
        n += 1
        if plain:
            body = " ".join(rnd.choice(plain_words) for _ in range(rnd.randint(3, 14)))
            line = f"{size:>10} {body}\r\n"
            lines.append(line)
            size += len(line)
            continue
        body = " ".join(rnd.choice(plain_words) for _ in range(rnd.randint(3, 14)))
        if rnd.random() < 0.125:
            body += " " + rnd.choice(words[len(plain_words) :])
        lvl = rnd.randrange(4)
        level = levels[lvl]
        if rnd.random() < 1 / 6:
            level = f"{colours[lvl]}{level}\x1b[0m"
        line = f"2026-11-23 01:49:{n % 60:02d}.{n % 1000:03d} {level} [worker-{n % 8}] {body}\r\n"
        lines.append(line)
        size += len(line.encode())
    block = "".join(lines).encode()
    reps = -(-total // len(block))
    return (block * reps)[:total]


def chunks(data: bytes, seed: int = 7) -> list[bytes]:
    """``data`` cut into 16-32 KiB reads (cuts land anywhere, also inside a
    UTF-8 sequence or an escape sequence)."""
    rnd = random.Random(seed)
    out = []
    pos = 0
    while pos < len(data):
        n = rnd.randint(16 * 1024, 32 * 1024)
        out.append(data[pos : pos + n])
        pos += n
    return out


class _Store:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: Any) -> None:
        self.events.append(event)


def _live(store: _Store, kind: str) -> Any:
    return SimpleNamespace(
        id="00000000-0000-0000-0000-000000000000",
        kind=ConnectionKind.SHELL if kind == "shell" else ConnectionKind.EXEC,
        command=None if kind == "shell" else "cat bigfile",
        pty=SimpleNamespace(cols=120, rows=40, term_type="xterm-256color"),
        user="alice",
        login="root",
        target="web1",
        store=store,
        opened_at=datetime.now(UTC),
        recording=None,
    )


async def _run_mode(
    mode: str, kind: str, reads: list[bytes], directory: Path
) -> tuple[float, float, Path | None]:
    """(user, system) CPU seconds for one session through ``mode``; the
    cast's path. ``kind``: ``exec`` is ``ssh -tt target cat bigfile`` (what
    bench #1/#5 measure: an exec channel with a pty, so no command extractor
    and no screen model), ``shell`` is ``cat bigfile`` typed at a prompt."""
    cfg = RecordingSection(**MODES[mode])
    gateway = SimpleNamespace(config=SimpleNamespace(recording=cfg), data_dir=directory)
    (directory / "recordings").mkdir(exist_ok=True)
    recordings = Recordings(gateway)  # type: ignore[arg-type]
    store = _Store()
    live = _live(store, kind)
    gc.collect()
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    rec: SessionRecording | None = recordings.start(live)
    live.recording = rec
    t = 0.0
    if rec is not None and kind == "shell":
        # The prompt, the typed command and its echo: the extractor engages
        # around the input, reads "cat bigfile", and disengages in the output.
        rec.output(t, PROMPT)
        for key in b"cat bigfile\r":
            t += 0.08
            rec.input(t, bytes((key,)))
            rec.output(t + 0.0004, b"\r\n" if key == 13 else bytes((key,)))
    next_flush = t + 1.0
    for data in reads:
        t += len(data) / RATE
        # LiveConnection.from_target: one attribute read and a call per chunk.
        rec = live.recording
        if rec is not None:
            rec.output(t, data)
        if t >= next_flush:
            next_flush += 1.0
            if rec is not None:
                rec.flush()
    rec = live.recording
    if rec is not None:
        if kind == "shell":
            rec.output(t, PROMPT)
        rec.close(t, CloseReason.CLIENT_EXIT)
    await recordings.close()
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    if rec is not None and cfg.commands:
        texts = [e.command for e in store.events]
        assert texts == ["cat bigfile"], texts
    cast = Path(rec.cast_path) if rec is not None else None
    return c1.ru_utime - c0.ru_utime, c1.ru_stime - c0.ru_stime, cast


def _chill(buf: bytearray) -> None:
    """Write one byte in every 64 of ``buf``: with ``buf`` bigger than the
    caches, what the recorder touched before is evicted, as the other
    processes of a live gateway's machine evict it between two keys."""
    buf[::64] = bytes(len(range(0, len(buf), 64)))


async def _run_typing(
    lines: int, sessions: int, directory: Path, colour: bool = False, cold_mb: float = 0.0
) -> tuple[int, int, float]:
    """Benchmark #5's typists: ``sessions`` shells through ``SessionRecording``
    (shipped defaults: redacted input, commands, screen model), each typing
    ``lines`` command lines ``echo hi-N-K`` one key every 0.15 s, each key
    echoed, Enter answered with the line and the prompt; a flush per session
    per simulated second. The prompt is bash 5's as benchmark #5 sees it
    (``BASH_PROMPT``), or with ``colour`` a coloured one with a title
    (``PROMPT``). With ``cold_mb``, that much memory is walked before each
    key (``_chill``) and only the recording calls are timed (thread CPU
    time). Returns (keys typed, command lines, recording CPU seconds, or 0.0
    without ``cold_mb``)."""
    prompt, enter = (PROMPT, b"\r\n") if colour else (BASH_PROMPT, BASH_ENTER)
    cfg = RecordingSection()
    gateway = SimpleNamespace(config=SimpleNamespace(recording=cfg), data_dir=directory)
    (directory / "recordings").mkdir(exist_ok=True)
    recordings = Recordings(gateway)  # type: ignore[arg-type]
    stores = [_Store() for _ in range(sessions)]
    recs: list[SessionRecording] = []
    for store in stores:
        live = _live(store, "shell")
        live.id = f"00000000-0000-0000-0000-{len(recs):012d}"
        rec = recordings.start(live)
        assert rec is not None
        live.recording = rec
        rec.output(0.0, b"Welcome to web1\r\n" + prompt)
        recs.append(rec)
    t = 0.0
    next_flush = 1.0
    keys = 0
    chill = bytearray(int(cold_mb * 1e6)) if cold_mb else None
    clock = time.thread_time
    spent = 0.0
    for k in range(lines):
        words = [f"echo hi-{n}-{k}".encode() for n in range(sessions)]
        for i in range(max(map(len, words)) + 1):
            t += 0.15
            for n, rec in enumerate(recs):
                word = words[n]
                if i < len(word):
                    key = word[i : i + 1]
                    echo = key
                elif i == len(word):
                    key = b"\r"
                    echo = enter + word[5:] + b"\r\n" + prompt
                else:
                    continue
                if chill is not None:
                    _chill(chill)
                    t0 = clock()
                rec.input(t, key)
                rec.output(t + 0.0004, echo)
                if chill is not None:
                    spent += clock() - t0
                keys += 1
            if t >= next_flush:
                next_flush += 1.0
                for rec in recs:
                    if chill is not None:
                        _chill(chill)
                        t0 = clock()
                    rec.flush()
                    if chill is not None:
                        spent += clock() - t0
    for rec in recs:
        rec.close(t, CloseReason.CLIENT_EXIT)
    await recordings.close()
    for n, store in enumerate(stores):
        texts = [e.command for e in store.events]
        assert texts == [f"echo hi-{n}-{k}" for k in range(lines)], texts[:3]
    return keys, lines * sessions, spent


def check_cast(path: Path, kind: str, reads: list[bytes]) -> None:
    """The cast is valid asciicast and its output is the bytes, faithfully."""
    from tests.cast_validator import validate_cast

    _, events = validate_cast(path)
    got = "".join(d for _, code, d in events if code == "o")
    whole = b"".join(reads)
    if kind == "shell":
        whole = PROMPT + b"cat bigfile\r\n" + whole + PROMPT
    want = whole.decode("utf-8", errors="replace")
    assert got == want, "cast output differs from the relayed bytes"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=30.0, help="MB of output per run (default 30)")
    ap.add_argument("--runs", type=int, default=3, help="runs per mode; the best is reported")
    ap.add_argument("--mode", choices=list(MODES), action="append", help="only these modes")
    ap.add_argument(
        "--kind", choices=KINDS, action="append", help="exec (ssh -tt target cat; default), shell"
    )
    ap.add_argument("--profile", choices=list(MODES), help="cProfile one run of MODE")
    ap.add_argument(
        "--dir",
        help="where the casts go (default: a temporary directory; /dev/shm takes the "
        "disk out of the figures)",
    )
    ap.add_argument(
        "--no-check",
        action="store_true",
        help="skip the cast check (when counting instructions of the whole process)",
    )
    ap.add_argument(
        "--data",
        choices=("mixed", "ascii", "binary"),
        default="mixed",
        help="mixed: log lines with UTF-8 and colours (default); ascii: bench/run.py's "
        "text file (lowercase words, CRLF); binary: random bytes",
    )
    ap.add_argument(
        "--typing",
        type=int,
        metavar="LINES",
        help="instead: benchmark #5's typists, LINES command lines per session "
        "(count instructions with perf stat at two LINES and subtract)",
    )
    ap.add_argument("--sessions", type=int, default=10, help="--typing: sessions (default 10)")
    ap.add_argument(
        "--colour", action="store_true", help="--typing: a coloured prompt with a title"
    )
    ap.add_argument(
        "--cold",
        type=float,
        metavar="MB",
        default=0.0,
        help="--typing: walk MB of memory before each key and time only the recording "
        "calls: the recorder with cold caches, as in a live gateway (16 MB: ~7x)",
    )
    args = ap.parse_args()
    if args.typing is not None:
        with tempfile.TemporaryDirectory(prefix="recmicro-", dir=args.dir) as tmp:
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
            keys, cmds, spent = asyncio.run(
                _run_typing(args.typing, args.sessions, Path(tmp), args.colour, args.cold)
            )
            if args.profile:
                prof.disable()
                pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        print(f"typing: {keys} keys, {cmds} command lines, {args.sessions} sessions")
        if args.cold:
            print(
                f"recording, caches cold ({args.cold:g} MB walked before each key):"
                f" {spent / keys * 1e6:.1f} us a key"
            )
        return
    total = int(args.mb * 1e6)
    if args.data == "binary":
        data = random.Random(1).randbytes(total)
    else:
        data = make_output(total, plain=args.data == "ascii")
    reads = chunks(data)
    kinds = args.kind or list(KINDS)
    with tempfile.TemporaryDirectory(prefix="recmicro-", dir=args.dir) as tmp:
        directory = Path(tmp)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            asyncio.run(_run_mode(args.profile, kinds[0], reads, directory))
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return
        print(
            f"{total / 1e6:.0f} MB of {args.data} output in {len(reads)} reads, "
            f"best of {args.runs}; gateway CPU seconds per GB"
        )
        print(f"{'kind':6s} {'mode':14s} {'total':>7s} {'user':>7s} {'sys':>7s} {'over off':>9s}")
        for kind in kinds:
            base: float | None = None
            for mode in args.mode or list(MODES):
                best = (float("inf"), 0.0, 0.0)
                ratio = 0.0
                for _ in range(args.runs):
                    user, system, cast = asyncio.run(_run_mode(mode, kind, reads, directory))
                    if user + system < best[0]:
                        best = (user + system, user, system)
                    if cast is not None:
                        if not args.no_check:
                            check_cast(cast, kind, reads)
                        ratio = cast.stat().st_size / total
                        cast.unlink()
                tot, user, system = (x / (total / 1e9) for x in best)
                if mode == "off":
                    base = tot
                over = f"{tot - base:+9.3f}" if base is not None and mode != "off" else ""
                extra = f"   cast {ratio:.3f}x output" if ratio else ""
                print(
                    f"{kind:6s} {mode:14s} {tot:7.3f} {user:7.3f} {system:7.3f} {over:>9s}{extra}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
