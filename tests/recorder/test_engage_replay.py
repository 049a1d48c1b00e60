"""``engage_replay``: the extractor re-engages from a tail's last lines only
when that draws them as the whole replay would. Checked against the whole
replay (``resync_start``) at every key of every corpus session, and on
hand-made tails for the cases where a cut would go wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pyte
import pytest

from recorder.commands import TAIL_BYTES
from recorder.terminal import (
    ENGAGE_LINES,
    OutputTail,
    TrackedScreen,
    close_stream,
    engage_replay,
    place,
    resync_start,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES = sorted(CORPUS.glob("*.json"))


def whole(tail: bytes, cols: int, rows: int) -> TrackedScreen:
    s = TrackedScreen(cols, rows)
    pyte.ByteStream(s).feed(resync_start(tail))
    return s


def cut(tail: bytes, cols: int, rows: int, placed: bool = True) -> tuple[TrackedScreen, bool]:
    """The cut replay, fed from the top and ``place``d (as the extractor
    does), or fed from its row."""
    row, data = engage_replay(tail, cols, rows)
    s = TrackedScreen(cols, rows)
    if placed:
        pyte.ByteStream(s).feed(data)
        place(s, row)
    else:
        s.cursor.y = row
        pyte.ByteStream(s).feed(data)
    return s, row > 0


def assert_same_end(tail: bytes, cols: int, rows: int) -> bool:
    """The cut replay shows the cursor, and every row from the first kept
    line down, as the whole replay does; rows above are blank. Returns
    whether the tail was cut."""
    old = whole(tail, cols, rows)
    new, was_cut = cut(tail, cols, rows)
    from_row, _ = cut(tail, cols, rows, placed=False)
    assert [from_row.row_text(y) for y in range(rows)] == [new.row_text(y) for y in range(rows)]
    assert (new.cursor.x, new.cursor.y) == (old.cursor.x, old.cursor.y)
    assert (from_row.cursor.x, from_row.cursor.y) == (new.cursor.x, new.cursor.y)
    first = 0
    if was_cut:
        row, _ = engage_replay(tail, cols, rows)
        first = max(0, row - from_row.scrolled)
    for y in range(rows):
        if y < first:
            assert new.row_text(y).strip() == "", y
        else:
            assert new.row_text(y) == old.row_text(y), y
            if y > first:
                assert new.is_continuation(y) == old.is_continuation(y), y
                assert from_row.is_continuation(y) == old.is_continuation(y), y
    return was_cut


SCROLLBACK = b"".join(b"earlier output %d\r\n" % i for i in range(30))
"""Output before a corpus session, as in a long-lived shell."""


def engage_points(case: dict, before: bytes = b"") -> list[bytes]:
    """The output tail at each client key (where the extractor may engage)."""
    out = before
    tails = []
    for _, direction, text in case["events"]:
        data = text.encode("latin-1")
        if direction == "o":
            out = (out + data)[-TAIL_BYTES:]
        else:
            tails.append(out)
    return tails


@pytest.mark.parametrize("before", [b"", SCROLLBACK], ids=["fresh", "scrollback"])
@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_cut_replay_matches_whole_replay_on_corpus(path: Path, before: bytes) -> None:
    case = json.loads(path.read_text())
    for tail in engage_points(case, before):
        assert_same_end(tail, case["cols"], case["rows"])


@pytest.mark.parametrize(("limit", "split"), [(TAIL_BYTES, False), (TAIL_BYTES, True), (300, True)])
def test_incremental_scan_agrees(limit: int, split: bool) -> None:
    """``OutputTail.replay`` scans only what is new: it must answer as a
    scan of the whole tail does, with output in any pieces (a sequence cut
    between two scans) and with the tail's front dropped (a marker gone)."""
    for path in CASES:
        case = json.loads(path.read_text())
        cols, rows = case["cols"], case["rows"]
        tail = OutputTail(limit)
        tail.append(SCROLLBACK)
        for _, direction, text in case["events"]:
            data = text.encode("latin-1")
            if direction == "o":
                for i in range(len(data)) if split else [0]:
                    tail.append(data[i : i + 1] if split else data)
            else:
                assert tail.replay(cols, rows) == engage_replay(tail.get(), cols, rows), path.stem


def test_incremental_scan_sees_a_split_sequence() -> None:
    tail = OutputTail(TAIL_BYTES)
    tail.append(LINES)
    assert tail.replay(80, 24)[0] == 23
    for piece in (b"\x1b[1", b"0;1", b"Hx\r\n", LINES[:60], P):
        tail.append(piece)
    assert tail.replay(80, 24)[0] == 0  # the cursor addressing was seen
    tail.append(LINES * 60)  # ... until it left the tail
    assert tail.replay(80, 24)[0] == 23


def test_a_second_replay_of_the_same_tail_is_the_first_answer() -> None:
    """A line that is not plain asks at its first key twice (the fast line's
    check, then the engage): the second answer is the first, not a rescan;
    anything that changes the tail or the arguments asks again."""
    tail = OutputTail(TAIL_BYTES)
    tail.append(LINES)
    first = tail.replay(80, 24)
    assert tail.replay(80, 24) is first
    assert tail.replay(100, 24) == engage_replay(tail.get(), 100, 24)
    tail.append(P)
    assert tail.replay(80, 24) == engage_replay(tail.get(), 80, 24) != first
    tail.clear()
    assert tail.replay(80, 24) == engage_replay(b"", 80, 24)


def test_corpus_is_mostly_cut() -> None:
    """After some scrollback the cheap path is the common one on the corpus
    (not a test of correctness: that the cut is exercised at all)."""
    cuts = total = 0
    for path in CASES:
        case = json.loads(path.read_text())
        for tail in engage_points(case, SCROLLBACK):
            total += 1
            cuts += engage_replay(tail, case["cols"], case["rows"])[0] > 0
    assert total and cuts / total > 0.5, (cuts, total)


P = b"user@host:~$ "
LINES = b"".join(b"line %d\r\n" % i for i in range(40))
KEPT = b"".join(b"kept %d\r\n" % i for i in range(ENGAGE_LINES - 1))  # the cut is just before

# (name, tail, cut?) at 80x24: cut=True means the cheap path must be taken
# (and, as always, must match the whole replay).
TAILS = [
    ("plain scrolling shell", LINES + P, True),
    ("what resync_start skips is not looked at", b"\x1b[1;10r" + LINES + P, True),
    ("fewer lines than kept", b"one\r\n" + P, False),
    ("no line feed at all", P, False),
    (
        "a screenful not reached: cut placed where it started",
        b"a\r\nb\r\nc\r\nd\r\ne\r\n" + P,
        True,
    ),
    ("clear screen in the kept lines", LINES + b"x\r\n\x1b[H\x1b[2Jy\r\n" + P, False),
    ("clear screen long before", b"\x1b[H\x1b[2J" + LINES + P, True),
    ("ESC c long before", b"\x1bc" + LINES + P, True),
    ("cursor up before the cut", LINES[:200] + b"\x1b[3A" + LINES[200:] + P, False),
    ("cursor up in the kept lines", LINES + b"a\r\n\x1b[A\x1b[2Kb\r\n" + P, False),
    ("cursor addressing", LINES + b"\x1b[5;1Hhere\r\n" + P, False),
    ("scroll margins", b"start\r\n\x1b[1;10r" + LINES + P, False),
    ("save and restore cursor", LINES + b"\x1b7x\x1b8\r\n" + P, False),
    ("reverse index", LINES + b"\x1bM\r\n" + P, False),
    ("insert mode", b"start\r\n\x1b[4h" + LINES + P, False),
    ("autowrap off", b"start\r\n\x1b[?1;7l" + LINES + P, False),
    ("bracketed paste mode is harmless", LINES + b"\x1b[?2004h" + P, True),
    ("colour prompt", LINES + b"\x1b[01;32muser@host\x1b[00m:\x1b[01;34m~\x1b[00m$ ", True),
    ("LF without CR at the cut", LINES + b"a\nb\nc\nd\n" + P, False),
    ("an OSC title across the cut", LINES + b"\x1b]0;two\r\nlines\x07" + KEPT + P, False),
    ("OSC 133 marks", LINES + b"\x1b]133;A\x07" + P + b"\x1b]133;B\x07", True),
    ("vertical tab", LINES + b"a\x0bb\r\n" + P, False),
    ("wrapped long prompt", LINES + b"p" * 200 + b"$ ", True),
    (
        "long lines early on (wraps before the cut)",
        b"start\r\n" + b"x" * 300 + b"\r\n" + KEPT + P,
        False,
    ),
    ("tabs early on", b"a\tb\r\n" * 3 + b"c\r\nd\r\ne\r\n" + P, False),
    ("tabs after a screenful", LINES + b"a\tb\r\n" + P, True),
    (
        "after vim exited",
        LINES + b"\x1b[?1049h\x1b[1;24r\x1b[H\x1b[2Jvim\x1b[24;1H\x1b[?1049l\r" + P,
        False,
    ),
    (
        "a screenful after vim exited",
        b"\x1b[?1049h\x1b[H\x1b[2Jvim\x1b[?1049l\r" + P + b"ls\r\n" + LINES + P,
        True,
    ),
    ("a partial escape at the end", LINES + P + b"\x1b[0", True),
    ("unicode wide characters", LINES + "日本語 ok\r\n".encode() * 3 + P, True),
]


@pytest.mark.parametrize(("tail", "expect_cut"), [t[1:] for t in TAILS], ids=[t[0] for t in TAILS])
def test_cut_replay_table(tail: bytes, expect_cut: bool) -> None:
    assert assert_same_end(tail, 80, 24) == expect_cut


def test_cut_is_short() -> None:
    row, data = engage_replay(LINES * 50 + P, 80, 24)
    assert row == 23
    assert data.count(b"\n") == ENGAGE_LINES - 1 and data.endswith(P)


def test_screen_is_freed_without_the_collector() -> None:
    import gc
    import weakref

    gc.disable()
    try:
        s = TrackedScreen(80, 24)
        stream = pyte.ByteStream(s)
        stream.feed(b"abc\r\n")
        ref = weakref.ref(s)
        close_stream(stream)  # as CommandExtractor._disengage does
        del s, stream
        assert ref() is None
    finally:
        gc.enable()
