"""TrackedScreen's memory: cells shared through a bounded table, slotted rows
made without a reference to the screen, and an ASCII fast path in ``draw``,
all drawing exactly what pyte draws."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pyte
import pytest

from recorder.terminal import CELL_CACHE, TrackedScreen, _cells, feed

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES = sorted(CORPUS.glob("*.json"))


def test_cells_are_shared_and_bounded() -> None:
    a, b = TrackedScreen(80, 24), TrackedScreen(80, 24)
    pyte.ByteStream(a).feed(b"hello \x1b[1mbold\x1b[0m")
    pyte.ByteStream(b).feed(b"hello \x1b[1mbold\x1b[0m")
    assert a.buffer[0][0] is b.buffer[0][0]
    assert a.buffer[0][6] is b.buffer[0][6] and a.buffer[0][6].bold
    assert a.buffer[0][6] != a.buffer[0][0]
    assert a.buffer[5][3] is a.default_char  # never drawn
    s = TrackedScreen(80, 24)
    stream = pyte.ByteStream(s)
    for i in range(CELL_CACHE + 10):
        stream.feed(chr(0x4E00 + i).encode())
    assert sum(map(len, _cells.values())) <= CELL_CACHE


def test_screen_is_freed_without_the_collector() -> None:
    gc.disable()
    try:
        s = TrackedScreen(80, 24)
        s.draw("abc")
        s.linefeed()
        s.draw("def")
        ref = weakref.ref(s)
        del s
        assert ref() is None
    finally:
        gc.enable()


DRAWS = [
    b"plain text",
    b"x" * 200,  # wraps twice
    b"\x1b[?7l" + b"y" * 100 + b"z",  # no autowrap: the last column is overwritten
    b"ab\x1b[4hc\x1b[1Dd\x1b[4le",  # insert mode
    b"\x1b[1;31mred\x1b[0m plain \x1b[7mrev\x1b[m",
    "wide 日本 and combining e\u0301 mixed".encode(),
    b"\x1b[5h" + b"reverse screen",  # DECSCNM (private 5 without ?: plain mode 5)
    b"\x1b[?5hreverse\x1b[?5l back",
    b"tab\there\r\n" * 3 + b"\x1b[20hlnm\nfeed",
    b"ctrl \x01\x02 chars",
]


@pytest.mark.parametrize("data", DRAWS)
def test_screen_draws_as_pyte(data: bytes) -> None:
    """TrackedScreen's shared cells and ASCII fast path draw what pyte draws."""
    ref = pyte.Screen(80, 24)
    pyte.ByteStream(ref).feed(data)
    s = TrackedScreen(80, 24)
    pyte.ByteStream(s).feed(data)
    assert (s.cursor.x, s.cursor.y) == (ref.cursor.x, ref.cursor.y)
    assert tuple(s.cursor.attrs) == tuple(ref.cursor.attrs)
    for y in range(24):
        assert [tuple(s.buffer[y][x]) for x in range(80)] == [
            tuple(ref.buffer[y][x]) for x in range(80)
        ], y


@pytest.mark.parametrize("path", CASES[::4], ids=[p.stem for p in CASES[::4]])
def test_screen_draws_corpus_as_pyte(path: Path) -> None:
    case = json.loads(path.read_text())
    out = b"".join(t.encode("latin-1") for _, d, t in case["events"] if d == "o")
    ref = pyte.Screen(case["cols"], case["rows"])
    pyte.ByteStream(ref).feed(out)
    s = TrackedScreen(case["cols"], case["rows"])
    pyte.ByteStream(s).feed(out)
    assert s.display == ref.display
    assert (s.cursor.x, s.cursor.y) == (ref.cursor.x, ref.cursor.y)


@pytest.mark.parametrize("path", CASES[1::3], ids=[p.stem for p in CASES[1::3]])
@pytest.mark.parametrize("piece", [1, 2, 7])
def test_feed_shortcut_draws_as_the_stream(path: Path, piece: int) -> None:
    """``feed`` takes plain ASCII and CR/LF straight to the screen only
    between sequences: output cut anywhere (inside an escape sequence or a
    UTF-8 character) draws as ``stream.feed`` does."""
    case = json.loads(path.read_text())
    out = b"".join(t.encode("latin-1") for _, d, t in case["events"] if d == "o")
    out += "\x1b[1mé\x1b]0;t\x07 done\r\n".encode()
    ref = TrackedScreen(case["cols"], case["rows"])
    ref_stream = pyte.ByteStream(ref)
    s = TrackedScreen(case["cols"], case["rows"])
    stream = pyte.ByteStream(s)
    for i in range(0, len(out), piece):
        ref_stream.feed(out[i : i + piece])
        feed(s, stream, out[i : i + piece])
    assert s.display == ref.display
    assert (s.cursor.x, s.cursor.y, s.wrapped) == (ref.cursor.x, ref.cursor.y, ref.wrapped)


SIMPLE = [
    b"\x1b[?2004hroot@target:~# echo hi\x1b[?2004l\r\r\nhi\r\n",
    b"\x1b]0;alice@web1: ~\x07\x1b[01;32malice@web1\x1b[00m:\x1b[01;34m~\x1b[00m$ ",
    b"ab\x08 \x08\x08x\x1b[m\x1b[;1;4;7mX\x1b[0m\x1b[38;5;208mY\x1b[38;2;1;2;3mZ\x1b[48;5mW",
    b"\x1b]1;icon\x07\x1b]2;title\x07\x1b[4hins\x1b[4l\x1b[?25l\x1b[?25h\x1b[?7l" + b"w" * 90,
    b"\x1b[?5hrev\x1b[1mB\x1b[?5l\x1b[1mB\x1b[20h\n\x1b[20l\x1b[99999m\x1b[?1mq\x1b[>4;1m",
]


@pytest.mark.parametrize("path", CASES[::4], ids=[p.stem for p in CASES[::4]])
def test_feed_simple_sequences_as_the_stream(path: Path) -> None:
    """Modes, colours, titles and backspace handed straight to the screen
    (``_SIMPLE``) leave it as pyte's parser does, fed a line at a time."""
    case = json.loads(path.read_text())
    out = b"".join(t.encode("latin-1") for _, d, t in case["events"] if d == "o")
    out += b"".join(SIMPLE)
    ref = TrackedScreen(case["cols"], case["rows"])
    ref_stream = pyte.ByteStream(ref)
    s = TrackedScreen(case["cols"], case["rows"])
    stream = pyte.ByteStream(s)
    for piece in out.splitlines(keepends=True) + SIMPLE + SIMPLE:
        ref_stream.feed(piece)
        feed(s, stream, piece)
        assert s.cursor.attrs == ref.cursor.attrs
        assert type(s.cursor.attrs) is type(ref.cursor.attrs)
    assert s.display == ref.display
    assert [dict(s.buffer[y]) for y in range(s.lines)] == [
        dict(ref.buffer[y]) for y in range(ref.lines)
    ]
    assert (s.cursor.x, s.cursor.y, s.wrapped) == (ref.cursor.x, ref.cursor.y, ref.wrapped)
    assert (s.mode, s.title, s.icon_name) == (ref.mode, ref.title, ref.icon_name)
