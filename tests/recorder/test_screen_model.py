"""The screen model: what a reattaching client is shown.

Each test feeds output, takes ``redraw()``, plays it into a fresh model (a
fresh terminal) and checks that it shows the same cells, attributes and cursor.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from recorder.screen import BOUND, ScreenModel

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def cells(m: ScreenModel) -> list[list[tuple]]:
    m.text()  # catch up
    s = m._screen
    return [[tuple(s.buffer[y][x]) for x in range(s.columns)] for y in range(s.lines)]


def roundtrip(m: ScreenModel) -> ScreenModel:
    fresh = ScreenModel(m.cols, m.rows)
    fresh.feed(m.redraw())
    return fresh


def assert_same(m: ScreenModel) -> ScreenModel:
    fresh = roundtrip(m)
    assert fresh.text() == m.text()
    assert cells(fresh) == cells(m)
    assert (fresh._screen.cursor.x, fresh._screen.cursor.y) == (
        m._screen.cursor.x,
        m._screen.cursor.y,
    )
    return fresh


def test_scrolling_shell_shows_last_screenful() -> None:
    m = ScreenModel(80, 24)
    m.feed(b"".join(b"line %d\r\n" % i for i in range(200)) + b"$ ls")
    assert m.text()[-1] == "$ ls"
    assert m.text()[-2] == "line 199"
    assert m.text()[0] == "line 177"
    assert_same(m)


def test_colors_bold_reverse() -> None:
    m = ScreenModel(40, 5)
    m.feed(
        b"\x1b[1;31mred bold\x1b[0m \x1b[7mrev\x1b[0m \x1b[44;97mbg\x1b[0m"
        b" \x1b[38;5;208m256\x1b[0m \x1b[38;2;1;2;3mtrue\x1b[0m\r\nplain"
    )
    fresh = assert_same(m)
    row = fresh._screen.buffer[0]
    assert row[0].bold and row[0].fg == "red"
    assert row[9].reverse


def test_cursor_hidden_and_attrs_restored() -> None:
    m = ScreenModel(20, 4)
    m.feed(b"abc\x1b[?25l\x1b[2;5H\x1b[32m")
    out = m.redraw()
    assert out.endswith(b"\x1b[?25l")
    assert b"\x1b[2;5H\x1b[0;32m" in out
    assert_same(m)


def test_alternate_screen_and_back() -> None:
    m = ScreenModel(30, 6)
    m.feed(b"$ echo hi\r\nhi\r\n$ vim\r\n")
    m.feed(b"\x1b[?1049h\x1b[?1h\x1b[H\x1b[2J~\r\n~\r\n\x1b[1;1Hhello vim")
    out = m.redraw()
    assert out.startswith(b"\x1b[?1049h")
    assert b"\x1b[?1h" in out
    assert m.alternate_screen
    assert m.text()[0] == "hello vim"
    assert_same(m)
    m.feed(b"\x1b[?1049l\x1b[?1l$ ")
    assert not m.alternate_screen
    assert m.text()[:4] == ["$ echo hi", "hi", "$ vim", "$"]
    assert not m.redraw().startswith(b"\x1b[?1049h")
    assert_same(m)


def test_wide_characters() -> None:
    m = ScreenModel(20, 3)
    m.feed("日本語 ok".encode())
    assert_same(m)


def test_bulk_feed_is_cheap_and_redraw_correct() -> None:
    m = ScreenModel(80, 24)
    chunk = b"".join(b"%08d some text of a log line\r\n" % i for i in range(2000))
    started = time.perf_counter()
    for _ in range(300):  # ~18 MB
        m.feed(chunk)
    fed = time.perf_counter() - started
    m.feed(b"$ ")
    assert fed < 1.0, f"feeding took {fed:.2f}s"
    started = time.perf_counter()
    text = m.text()
    assert time.perf_counter() - started < 5.0
    assert text[-1] == "$"
    assert text[-2] == "00001999 some text of a log line"
    assert_same(m)


def test_overflow_inside_full_screen_program() -> None:
    m = ScreenModel(40, 10)
    m.feed(b"$ top\r\n\x1b[?1049h\x1b[H\x1b[2Jheader")
    filler = b"\x1b[5;1Hcounter %06d"
    for i in range(BOUND // 10):
        m.feed(filler % i)
    assert m.alternate_screen
    text = m.text()
    assert text[4] == f"counter {BOUND // 10 - 1:06d}"
    assert_same(m)


@pytest.mark.parametrize("name", ["vim", "less", "color_prompt", "long_line_wrap"])
def test_corpus_sessions_redraw_at_every_point(name: str) -> None:
    case = json.loads((CORPUS / f"{name}.json").read_text())
    m = ScreenModel(case["cols"], case["rows"])
    for _t, direction, text in case["events"]:
        if direction == "o":
            m.feed(text.encode("latin-1"))
            assert_same(m)
