"""What the recorder needs from a terminal emulator, on top of pyte.

Owns two small things shared by ``commands`` and ``screen``:

* ``TrackedScreen``: a ``pyte.Screen`` that also knows which rows are soft
  wraps of the row above (pyte forgets that) and how many rows have scrolled
  off the top, so a position taken earlier can still be found after the
  screen scrolled (a long command line typed at the bottom row scrolls).
  Its cells are shared (see "Memory" below).
* ``OutputTail``: a bounded tail of raw output, cheap to append to on the hot
  path, from which an emulator is re-synchronised when it is needed again.
* ``PrivateModes``: DEC private modes (alternate screen, bracketed paste,
  cursor keys, mouse) from a byte search per chunk; pyte 0.8 ignores the
  alternate screen.
* ``resync_start``: where to start replaying a tail into a fresh emulator.

Memory (benchmark #5: a thousand shells, each extractor's screen alive while
a line is typed): pyte makes a new 9-field ``Char`` namedtuple for every cell
drawn (``cursor.attrs._replace(data=ch)``, ~130 bytes and a ``_make`` call
each) and every row through ``StaticDefaultDict[int, Char](...)`` (a
``GenericAlias`` call that also leaves an ``__orig_class__`` in each row's
instance dict), from a ``lambda`` that closes over the screen (so every screen
is a reference cycle, freed only by the cyclic collector). ``TrackedScreen``
instead shares one immutable cell per (attributes, character) through a
bounded table (``CELL_CACHE``), makes rows of a slotted ``dict`` subclass, and
its row factory holds the screen weakly: a dropped screen is freed at once.
"""

from __future__ import annotations

import re
import weakref
from collections import defaultdict
from typing import Any

import pyte
from pyte import modes as _modes
from pyte.charsets import LAT1_MAP as _LAT1
from pyte.screens import Char

CELL_CACHE = 4096
"""Distinct (attributes, character) cells shared by all screens; the table is
emptied when it is full (cells already on a screen stay valid: immutable)."""

_cells: dict[Char, dict[str, Char]] = {}  # attributes -> character -> cell
_cell_count = 0


class _Cell(Char):  # type: ignore[misc]  # pyte ships no type hints
    """A ``Char`` whose ``_replace(data=...)`` (what pyte's ``draw`` calls
    per cell) returns one shared instance per (attributes, character).
    Everything else behaves as ``Char`` (equality is a tuple's)."""

    __slots__ = ()

    def _replace(self, **kw: Any) -> Char:  # type: ignore[override]
        if len(kw) == 1 and "data" in kw:
            return _cell(self, kw["data"])
        return Char._replace(self, **kw)


def _cells_of(attrs: Char) -> dict[str, Char]:
    """The shared cells with ``attrs``' attributes, by character."""
    cells = _cells.get(attrs)
    if cells is None:
        cells = _cells[attrs] = {}
    return cells


def _cell(attrs: Char, data: str) -> Char:
    """The shared cell showing ``data`` with ``attrs``' attributes."""
    global _cell_count
    cells = _cells_of(attrs)
    cell = cells.get(data)
    if cell is None:
        if _cell_count >= CELL_CACHE:
            _cells.clear()
            _cell_count = 0
            cells = _cells_of(attrs)
        cell = cells[data] = Char._replace(attrs, data=data)
        _cell_count += 1
    return cell


_BLANK = _Cell(" ", "default", "default", reverse=False)
_BLANK_REVERSE = _Cell(" ", "default", "default", reverse=True)


class _Row(dict[int, Char]):
    """A screen row: column -> cell, ``default`` for columns never drawn
    (pyte's ``StaticDefaultDict`` without an instance dict)."""

    __slots__ = ("default",)

    def __init__(self, default: Char) -> None:
        self.default = default

    def __missing__(self, key: int) -> Char:
        return self.default


class _RowFactory:
    """Makes a screen's rows; holds the screen weakly (no reference cycle)."""

    __slots__ = ("_screen",)

    def __init__(self, screen: TrackedScreen) -> None:
        self._screen = weakref.ref(screen)

    def __call__(self) -> _Row:
        screen = self._screen()
        return _Row(screen.default_char if screen is not None else _BLANK)


class TrackedScreen(pyte.Screen):  # type: ignore[misc]  # pyte ships no type hints
    """A pyte screen that records soft wraps and scrolling.

    ``scrolled`` counts rows that left the top; an *absolute* row is
    ``y + scrolled``. ``wrapped`` holds the absolute rows that continue the row
    above because the cursor ran past the right margin (not because of a
    line feed)."""

    def __init__(self, columns: int, lines: int) -> None:
        self.scrolled = 0
        self.wrapped: set[int] = set()
        self._drawing = False
        super().__init__(columns, lines)
        # pyte's factory is a lambda over self: a reference cycle per screen.
        self.buffer = defaultdict(_RowFactory(self))  # type: ignore[arg-type]

    @property
    def default_char(self) -> Char:
        """pyte's blank cell (reverse under DECSCNM), shared."""
        return _BLANK_REVERSE if _modes.DECSCNM in self.mode else _BLANK

    def reset(self) -> None:
        super().reset()
        self.cursor.attrs = _BLANK  # pyte's Cursor(0, 0) has a plain Char(" ")
        self.wrapped = set()

    def draw(self, data: str) -> None:
        # pyte wraps inside draw() with carriage_return()+linefeed(); flagging
        # the call lets linefeed() tell a soft wrap from a real line feed.
        self._drawing = True
        try:
            if (
                data.isascii()
                and data.isprintable()
                and self.charset == 0
                and self.g0_charset is _LAT1
                and type(self.cursor.attrs) is _Cell
                and _modes.IRM not in self.mode
            ):
                self._draw_ascii(data)
            else:
                super().draw(data)
        finally:
            self._drawing = False

    def _draw_ascii(self, data: str) -> None:
        """pyte's ``draw`` for printable ASCII under the default character
        set, without insert mode: one column per character, so no width
        lookups, no translation, and the cells come from the shared table
        (what the typist's echo and a replayed prompt are: ~10x faster)."""
        cursor = self.cursor
        columns = self.columns
        attrs = cursor.attrs
        autowrap = _modes.DECAWM in self.mode
        line = self.buffer[cursor.y]
        x = cursor.x
        cells = _cells_of(attrs)
        for ch in data:
            if x == columns:
                if autowrap:
                    self.dirty.add(cursor.y)
                    cursor.x = x
                    self.carriage_return()
                    self.linefeed()
                    line = self.buffer[cursor.y]
                    x = cursor.x
                else:
                    x -= 1
            cell = cells.get(ch)
            if cell is None:
                cell = _cell(attrs, ch)
                cells = _cells_of(attrs)  # (the table may have been emptied)
            line[x] = cell
            x += 1
        cursor.x = x
        self.dirty.add(cursor.y)

    def index(self) -> None:
        top, bottom = self.margins or (0, self.lines - 1)
        if self.cursor.y != bottom:
            self.cursor_down()
            return
        if top == 0:
            self.scrolled += 1
        # pyte's scroll (``buffer[y] = buffer[y + 1]``) makes every row it
        # moves that was never drawn; only those that exist move here.
        self.dirty.update(range(self.lines))
        buf = self.buffer
        for y in range(top, bottom):
            row = buf.pop(y + 1, None)
            if row is None:
                buf.pop(y, None)
            else:
                buf[y] = row

    def linefeed(self) -> None:
        super().linefeed()
        row = self.cursor.y + self.scrolled
        if self._drawing:
            self.wrapped.add(row)
        else:
            self.wrapped.discard(row)
        if len(self.wrapped) > 4 * self.lines:
            low = self.scrolled
            self.wrapped = {r for r in self.wrapped if r >= low}

    def select_graphic_rendition(self, *attrs: int, private: bool = False) -> None:
        # pyte's parser passes private=True for "CSI > ... m" (xterm key
        # modifier options, sent by vim), which Screen does not accept.
        if not private:
            super().select_graphic_rendition(*attrs)

    def erase_in_display(self, how: int = 0, *args: object, **kwargs: object) -> None:
        super().erase_in_display(how, *args, **kwargs)
        if how in (2, 3):
            self.wrapped = set()

    def row_text(self, y: int, start: int = 0) -> str:
        """The characters of row ``y`` from column ``start``, trailing blanks kept."""
        line = self.buffer[y]
        columns = self.columns
        chars = [line.default.data] * (columns - start)
        for x, cell in line.items():  # the cells drawn (a row is sparse)
            if start <= x < columns:
                chars[x - start] = cell.data
        return "".join(chars)

    def is_continuation(self, y: int) -> bool:
        """Whether row ``y`` continues row ``y - 1`` (a soft wrap). Falls back
        to "the row above is full to the last column", which catches
        programs that position the cursor themselves across the margin."""
        if y <= 0:
            return False
        if y + self.scrolled in self.wrapped:
            return True
        above = self.buffer[y - 1]
        return above[self.columns - 1].data not in (" ", "")


class OutputTail:
    """The last ``limit`` bytes of output, appended in O(1) without copying:
    chunks are kept in a list and the oldest ones are dropped as soon as the
    rest holds ``limit`` bytes; they are joined only when there are more than
    ``MAX_CHUNKS`` (a typist's one-byte echoes) or when ``get()`` asks.

    Holds at most ``limit`` bytes plus one chunk (a bulk ``cat`` arrives in
    reads of up to 32 KiB, each usually larger than the limit: compacting by
    ``join`` + slice copied every byte of it once more)."""

    MAX_CHUNKS = 64

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def append(self, data: bytes) -> None:
        chunks = self._chunks
        chunks.append(data)
        size = self._size + len(data)
        limit = self.limit
        if size - len(chunks[0]) >= limit:
            drop = 0
            while size - len(chunks[drop]) >= limit:
                size -= len(chunks[drop])
                drop += 1
            del chunks[:drop]
        self._size = size
        if len(chunks) > self.MAX_CHUNKS:
            joined = b"".join(chunks)[-limit:]
            self._chunks = [joined]
            self._size = len(joined)

    def clear(self) -> None:
        self._chunks = []
        self._size = 0

    def get(self) -> bytes:
        joined = b"".join(self._chunks)
        self._chunks = [joined] if joined else []
        return joined[-self.limit :]


_PRIVATE_MODE = re.compile(rb"\x1b\[\?([0-9;]+)([hl])")

ALT_MODES = frozenset({47, 1047, 1049})
"""DEC private modes that switch to the alternate screen."""

TRACKED_MODES = frozenset({1, 25, 1000, 1002, 1003, 1005, 1006, 2004}) | ALT_MODES
"""Modes worth restoring on a reattached terminal: application cursor keys,
cursor visibility, mouse reporting, bracketed paste, alternate screen."""


class PrivateModes:
    """DEC private modes (``CSI ? n h/l``) from the output stream, cheap enough
    for every byte: a sequence split across two reads is caught by keeping the
    last few bytes of the previous one, reads without ESC cost one memchr and
    reads without ``?`` two.
    pyte 0.8 ignores the alternate screen, hence this."""

    def __init__(self) -> None:
        self.modes: dict[int, bool] = {}
        self._carry = b""

    @property
    def alt(self) -> bool:
        """Whether a full-screen program has the alternate screen."""
        return any(self.modes.get(m, False) for m in ALT_MODES)

    def feed(self, data: bytes) -> None:
        if self._carry:
            buf = self._carry + data
        elif b"\x1b" not in data:
            return
        else:
            buf = data
        # Every such sequence has a "?": one memchr rules out most reads, where
        # a search for "[?" crawled through coloured text full of "[" (~1.5 s
        # per GB of output, twice per shell: the screen model and the extractor).
        if b"?" in buf and b"\x1b[?" in buf:
            end = 0
            for m in _PRIVATE_MODE.finditer(buf):
                on = m.group(2) == b"h"
                for num in m.group(1).split(b";"):
                    if num and int(num) in TRACKED_MODES:
                        self.modes[int(num)] = on
                end = m.end()
            buf = buf[end:]  # never match the same sequence twice
        tail = buf[-16:]
        self._carry = tail if b"\x1b" in tail else b""


def resync_start(tail: bytes) -> bytes:
    """Where to start replaying a tail into a fresh emulator: at the last
    alternate-screen switch or full clear when there is one (everything
    before it is invisible anyway), else just after the first line feed, so
    the replay never begins inside an escape sequence or a half line."""
    best = -1
    for marker in (b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b[2J", b"\x1bc"):
        best = max(best, tail.rfind(marker))
    if best >= 0:
        return tail[best:]
    nl = tail.find(b"\n")
    return tail[nl + 1 :] if nl >= 0 else tail
