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
* ``resync_start`` and ``engage_replay``: what of a tail to replay into a
  fresh emulator.

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

    def draw_char(self, ch: str) -> None:
        """``draw(ch)`` of one printable ASCII character (a key's echo): what
        ``_draw_ascii`` does with it when the cursor is inside the row, without
        the loop and the checks ``draw`` makes for a run of text."""
        cursor = self.cursor
        x = cursor.x
        attrs = cursor.attrs
        if (
            x >= self.columns
            or self.charset != 0
            or self.g0_charset is not _LAT1
            or type(attrs) is not _Cell
            or _modes.IRM in self.mode
        ):
            self.draw(ch)
            return
        cell = _cells_of(attrs).get(ch)
        if cell is None:
            cell = _cell(attrs, ch)
        y = cursor.y
        self.buffer[y][x] = cell
        cursor.x = x + 1
        self.dirty.add(y)

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

    def blank(self) -> None:
        """As new: pyte's reset, and what it leaves (scroll count, saved
        cursors, dirty rows)."""
        self.reset()
        self.scrolled = 0
        self.savepoints.clear()
        self.dirty.clear()

    def shift_down(self, count: int) -> None:
        """Move every row ``count`` rows down (those pushed past the bottom
        are dropped), the cursor with them; absolute rows stay the same (a
        replay drawn from the top, then put where it would have been drawn)."""
        if count <= 0:
            return
        buf = self.buffer
        for y in sorted(buf, reverse=True):
            row = buf.pop(y)
            if y + count < self.lines:
                buf[y + count] = row
        self.cursor.y = min(self.cursor.y + count, self.lines - 1)
        self.scrolled -= count
        self.dirty.update(range(self.lines))

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


ENGAGE_LINES = 3
"""Lines of a tail replayed when ``engage_replay`` can cut it: the prompt's
line and the two above it (a two-line prompt and the line before it; a shell
that redraws its prompt moves up at most that far). Each line costs ~15 us of
pyte per re-engage, i.e. per command line typed."""


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
        self.total = 0  # bytes ever appended: the stream offset of the tail's end
        # ``replay``'s facts about the stream so far, as stream offsets:
        self._scanned = 0  # bytes looked at
        self._marker = -1  # start of the last resync_start marker
        self._uncuttable = -1  # end of the last sequence engage_replay must not cut across
        # The last replay, for the same tail and arguments: a line that is not
        # plain asks twice at its first key (``_start_fast``, then ``_engage``).
        self._last_replay: tuple[tuple[int, int, int, int], tuple[int, bytes]] | None = None

    def append(self, data: bytes) -> None:
        self.total += len(data)
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
        self._last_replay = None

    def get(self) -> bytes:
        joined = b"".join(self._chunks)
        self._chunks = [joined] if joined else []
        return joined[-self.limit :]

    def replay(self, columns: int, lines: int, keep: int | None = None) -> tuple[int, bytes]:
        """``engage_replay(self.get(), columns, lines, keep)``, looking only
        at the bytes that came since the last call (and the escape sequence
        they may have started inside): a typist's re-engage costs what was
        printed since, not a scan of the whole tail."""
        if keep is None:
            keep = ENGAGE_LINES
        key = (self.total, columns, lines, keep)
        last = self._last_replay
        if last is not None and last[0] == key:
            return last[1]
        result = self._replay(columns, lines, keep)
        self._last_replay = (key, result)
        return result

    def _replay(self, columns: int, lines: int, keep: int) -> tuple[int, bytes]:
        tail = self.get()
        start = self.total - len(tail)  # stream offset of tail[0]
        self._scan(tail, start)
        if self._marker >= start:
            first = self._marker - start
        else:
            nl = tail.find(b"\n")
            first = nl + 1 if nl >= 0 else 0
        region = tail[first:]  # resync_start(tail)
        if self._uncuttable <= start + first:
            plan = _cut(region, columns, lines, keep)
            if plan is not None:
                return plan
        return 0, region

    def _scan(self, tail: bytes, start: int) -> None:
        pos = self._scanned - start
        if pos >= len(tail):
            return
        if pos <= 0:
            pos = 0  # all of the tail is new (what came before is gone)
        else:
            # Back to the last ESC: a sequence may have been cut by the last scan.
            esc = tail.rfind(b"\x1b", 0, pos)
            pos = esc if esc >= 0 else pos - 1  # (or a C1 pair's first byte)
        for marker in _MARKERS:
            at = tail.rfind(marker, pos)
            if at >= 0:
                self._marker = max(self._marker, start + at)
        end = -1
        for m in _UNCUTTABLE.finditer(tail, pos):
            end = m.end()
        for m in _SET_MODE.finditer(tail, pos):
            if _sets_drawing_mode(m.group(1)):
                end = max(end, m.end())
        for control in _UNCUTTABLE_CONTROLS:
            at = tail.rfind(control, pos)
            if at >= 0:
                end = max(end, at + len(control))
        if end >= 0:
            self._uncuttable = max(self._uncuttable, start + end)
        self._scanned = start + len(tail)


_PRIVATE_MODE = re.compile(rb"\x1b\[\?([0-9;]+)([hl])")

ALT_MODES = frozenset({47, 1047, 1049})
"""DEC private modes that switch to the alternate screen."""

TRACKED_MODES = frozenset({1, 25, 1000, 1002, 1003, 1005, 1006, 2004}) | ALT_MODES
"""Modes worth restoring on a reattached terminal: application cursor keys,
cursor visibility, mouse reporting, bracketed paste, alternate screen."""


class PrivateModes:
    """DEC private modes (``CSI ? n h/l``) from the output stream, cheap enough
    for every byte: a sequence split across two reads is caught by keeping the
    last few bytes of the previous one (``carry``), reads without ESC cost one
    memchr and reads without ``?`` two. A caller may skip ``feed`` of a read
    without ESC while ``carry`` is empty (a typed key's echo): it would change
    nothing.
    pyte 0.8 ignores the alternate screen, hence this."""

    def __init__(self) -> None:
        self.modes: dict[int, bool] = {}
        self.alt = False
        """Whether a full-screen program has the alternate screen (kept up to
        date by ``feed``: read at every line the extractor resolves)."""
        self.carry = b""

    def feed(self, data: bytes) -> None:
        # (``0x1B in data``, an int: a bytes needle costs a buffer export.)
        if self.carry:
            buf = self.carry + data
        elif 0x1B not in data:
            return
        else:
            buf = data
        # Every such sequence has a "?": one memchr rules out most reads, where
        # a search for "[?" crawled through coloured text full of "[" (~1.5 s
        # per GB of output, twice per shell: the screen model and the extractor).
        if 0x3F in buf and b"\x1b[?" in buf:
            end = 0
            modes = self.modes
            for m in _PRIVATE_MODE.finditer(buf):
                on = m.group(2) == b"h"
                for num in m.group(1).split(b";"):
                    if num and int(num) in TRACKED_MODES:
                        modes[int(num)] = on
                end = m.end()
            if end:
                self.alt = any(modes.get(m, False) for m in ALT_MODES)
            buf = buf[end:]  # never match the same sequence twice
        tail = buf[-16:]
        self.carry = tail if 0x1B in tail else b""


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


_MARKERS = (b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b[2J", b"\x1bc")
"""Where ``resync_start`` may start a replay."""

# What ``engage_replay`` must not cut across, because pyte would draw the kept
# lines differently without what came before: any vertical cursor motion
# (CUU CUD CNL CPL CUP HVP VPA VPR, IL DL, margins DECSTBM, tab stops TBC;
# IND NEL RI HTS DECSC DECRC DECALN, charset switch ESC %; not RIS, which is a
# replay's start), VT and FF (line feeds that are not "\n"), C1 CSI and OSC in
# UTF-8 (pyte honours them), and modes that change drawing.
_UNCUTTABLE = re.compile(rb"\x1b(?:\[[\x20-\x3f]*[ABEFHLMdefgr]|[DEMH78#%])")
_UNCUTTABLE_CONTROLS = (b"\x0b", b"\x0c", b"\xc2\x9b", b"\xc2\x9d")
_SET_MODE = re.compile(rb"\x1b\[([\x20-\x3f]*)[hl]")
_DRAWING_MODES = frozenset({4, 20})  # IRM, LNM
_DRAWING_PRIVATE_MODES = frozenset({3, 6, 7})  # DECCOLM, DECOM, DECAWM
# Horizontal moves that can carry a line past the right margin (a wrap) in
# fewer bytes than columns: CUF, HPR, CHA, HPA.
_FAR_RIGHT = re.compile(rb"\x1b\[[0-9;]*[CaG`]")
# One complete escape sequence: CSI, OSC (BEL or ST), or ESC + final byte.
_COMPLETE = re.compile(
    rb"\x1b(?:\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
    rb"|\][^\x07\x1b]*(?:\x07|\x1b\\)|[\x20-\x2f]*[\x30-\x7e])"
)


_drawing_params: dict[bytes, bool] = {}


def _sets_drawing_mode(params: bytes) -> bool:
    """Whether ``CSI params h/l`` sets or resets a mode that changes drawing;
    remembered per parameter string (a prompt's ``?2004h`` comes back at
    every line, and parsing it cost more than the rest of the scan)."""
    got = _drawing_params.get(params)
    if got is None:
        nums = {int(n) for n in re.findall(rb"[0-9]+", params)}
        got = bool(nums & (_DRAWING_PRIVATE_MODES if b"?" in params else _DRAWING_MODES))
        if len(params) <= 16:  # (a prompt's; never a flood of long ones)
            if len(_drawing_params) >= 256:
                _drawing_params.clear()
            _drawing_params[params] = got
    return got


def engage_replay(
    tail: bytes, columns: int, lines: int, keep: int | None = None
) -> tuple[int, bytes]:
    """What to replay into a fresh ``columns`` x ``lines`` emulator to see the
    end of ``tail`` as a replay of all of ``resync_start(tail)`` would show
    it, cheaply: ``(row, data)``: feed ``data`` with the cursor on ``row``
    (column 0); or, the same and cheaper (no scrolling, no blank rows made),
    feed it from the top and then ``shift_down`` the screen until the cursor
    is where it would be (``place``). (``OutputTail.replay`` gives the same
    answer, scanning only what is new since its last call.)

    Usually ``data`` is the last ``keep`` (``ENGAGE_LINES``) lines and ``row`` where the
    whole replay would have started them (the bottom row once the tail has a
    screenful of lines). That is exact for the cursor, its row and every row
    of the kept lines when the bytes before them only ever moved the cursor
    down: no cursor addressing, no cursor up, no scroll margins, no modes that
    change drawing, nothing unfinished at the cut (the cut is just after a
    ``CR LF``, column 0, outside any escape sequence). Each row is then drawn
    on a blank row in both replays, so the only difference is above the kept
    lines: blank here, older output there (the extractor reads the prompt's
    line and what follows it). When any of that cannot be shown from the
    bytes, or there are fewer lines than ``keep``, the answer is
    ``(0, resync_start(tail))``: the whole replay, as before (``row`` is 0
    only then: a cut is after at least one line feed)."""
    t = OutputTail(max(1, len(tail)))
    t.append(tail)
    return t.replay(columns, lines, keep)


_COUNT_WINDOW = 2048
"""Bytes before a cut in which ``_cut`` first counts line feeds."""


def _cut(region: bytes, columns: int, lines: int, keep: int) -> tuple[int, bytes] | None:
    """``engage_replay``'s cut of a region without uncuttable sequences,
    or None."""
    cut = len(region)
    for _ in range(keep):
        cut = region.rfind(b"\n", 0, cut)
        if cut <= 0:
            return None  # fewer lines than kept
    if region[cut - 1] != 0x0D:
        return None  # LF alone keeps the column
    cut += 1
    esc = region.rfind(b"\x1b", 0, cut)
    if esc >= 0:
        m = _COMPLETE.match(region, esc)
        if m is None or m.end() > cut - 2:
            return None  # a sequence open across the CR LF
    # The whole replay starts at row 0 and goes down a row per line feed and
    # per wrap, to the bottom row at most.
    # (One count over the last KiB or so usually settles it: a screenful of
    # a shell's short lines; an rfind per line cost ~1k instructions each.)
    low = max(0, cut - _COUNT_WINDOW)
    before = min(region.count(b"\n", low, cut), lines - 1)
    if before < lines - 1 and low > 0:
        before = 0
        at = cut
        while before < lines - 1:
            at = region.rfind(b"\n", 0, at)
            if at < 0:
                break
            before += 1
    if before < lines - 1:
        # Not a screenful: show that no line before the cut wrapped.
        head = region[:cut]
        if b"\t" in head or _FAR_RIGHT.search(head):
            return None
        if max(map(len, head.split(b"\n"))) > columns:
            return None
    return before, region[cut:]


def place(screen: TrackedScreen, row: int) -> None:
    """After ``data`` of ``engage_replay`` was fed from the top row of a fresh
    ``screen``: move its rows down to where feeding it from ``row`` would
    have drawn them. The kept lines only move the cursor down (line feeds
    and wraps), so from ``row`` they would have ended ``cursor.y`` rows
    lower, at the bottom row at most."""
    y = screen.cursor.y
    screen.shift_down(min(row + y, screen.lines - 1) - y)


def close_stream(stream: pyte.ByteStream) -> None:
    """Done with a stream (and its screen): pyte's parser is a generator whose
    frame holds the stream, a reference cycle the collector would have to
    find; closing it lets both go as soon as they are dropped."""
    parser = getattr(stream, "_parser", None)
    if parser is not None:
        parser.close()


def between_sequences(stream: pyte.ByteStream) -> bool:
    """Whether the stream's parser is in its ground state (not inside an
    escape sequence or a UTF-8 character): fed nothing more, it is as new."""
    return (
        stream._taking_plain_text is True
        and stream.use_utf8
        and stream.utf8_decoder.getstate() == (b"", 0)
    )


_PLAIN = re.compile(rb"[\x20-\x7e\r\n]*")
_CR_OR_LF = re.compile(rb"[\r\n]")
# What ``feed`` hands the screen itself: text, CR, LF, BS, the modes and
# colours of a prompt (``CSI [?] Pn;... h/l/m``) and an ASCII title (OSC 0-2
# ended by BEL). Anything else goes through pyte's parser.
_SIMPLE = re.compile(
    rb"(?:[\x20-\x7e\r\n\x08]|\x1b\[\??[0-9;]*[hlm]|\x1b\][012];[\x20-\x7e]*\x07)*"
)
_TOKEN = re.compile(
    rb"[\x20-\x7e]+|[\r\n\x08]|\x1b\[(\??)([0-9;]*)([hlm])|\x1b\]([012]);([\x20-\x7e]*)\x07"
)

SGR_CACHE = 1024
"""(attributes, SGR parameters) -> attributes, shared by all screens."""

_sgr_cache: dict[tuple[object, ...], Char] = {}


def _sgr(screen: TrackedScreen, params: tuple[int, ...]) -> None:
    """``screen.select_graphic_rendition(*params)``, remembered: pyte's is a
    pure function of the cursor's attributes, the parameters and the blank
    cell, and builds a ``Char`` each time (a prompt's colours, per line)."""
    cursor = screen.cursor
    attrs = cursor.attrs
    key = (type(attrs), attrs, params, screen.default_char)
    got = _sgr_cache.get(key)
    if got is None:
        screen.select_graphic_rendition(*params)
        if len(_sgr_cache) >= SGR_CACHE:
            _sgr_cache.clear()
        _sgr_cache[key] = cursor.attrs
    else:
        cursor.attrs = got


def feed(screen: TrackedScreen, stream: pyte.ByteStream, data: bytes) -> None:
    """``stream.feed(data)``. Printable ASCII with CR and LF (a typist's echo,
    a plain prompt, a replayed line) goes straight to the screen when pyte's
    parser is between sequences: the calls its parser would make (``draw``
    per run of text, ``carriage_return``, ``linefeed``), without decoding
    and a generator step per control byte. So do backspace, the mode and
    colour sequences and the title of a prompt (``_SIMPLE``), with the same
    arguments pyte's parser would pass."""
    if len(data) == 1 and 0x20 <= data[0] < 0x7F and between_sequences(stream):
        screen.draw_char(chr(data[0]))  # a key's echo
        return
    if _PLAIN.fullmatch(data) is None:
        if _SIMPLE.fullmatch(data) is None or not between_sequences(stream):
            stream.feed(data)
        else:
            _feed_simple(screen, data)
        return
    if not between_sequences(stream):
        stream.feed(data)
        return
    pos = 0
    for m in _CR_OR_LF.finditer(data):
        at = m.start()
        if at > pos:
            screen.draw(data[pos:at].decode("ascii"))
        if data[at] == 0x0D:
            screen.carriage_return()
        else:
            screen.linefeed()
        pos = at + 1
    if pos < len(data):
        screen.draw(data[pos:].decode("ascii"))


def _feed_simple(screen: TrackedScreen, data: bytes) -> None:
    """``feed`` of bytes that ``_SIMPLE`` matches whole."""
    for m in _TOKEN.finditer(data):
        tok = m.group()
        b = tok[0]
        if b != 0x1B:
            if b == 0x0D and len(tok) == 1:
                screen.carriage_return()
            elif b == 0x0A and len(tok) == 1:
                screen.linefeed()
            elif b == 0x08 and len(tok) == 1:
                screen.backspace()
            else:
                screen.draw(tok.decode("ascii"))
            continue
        final = m.group(3)
        if final is None:  # OSC: pyte drops the ";"
            code = m.group(4)
            param = m.group(5).decode("ascii")
            if code in b"01":
                screen.set_icon_name(param)
            if code in b"02":
                screen.set_title(param)
            continue
        params = tuple(min(int(p or 0), 9999) for p in m.group(2).split(b";"))
        private = bool(m.group(1))
        if final == b"m":
            if private:
                screen.select_graphic_rendition(*params, private=True)
            else:
                _sgr(screen, params)
        elif final == b"h":
            if private:
                screen.set_mode(*params, private=True)
            else:
                screen.set_mode(*params)
        elif private:
            screen.reset_mode(*params, private=True)
        else:
            screen.reset_mode(*params)
