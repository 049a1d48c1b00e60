"""The screen model for reattach: what the terminal shows now, as bytes that
repaint a fresh terminal.

``ScreenModel`` owns "what would a client see if it attached right now". The
gateway feeds it every output byte of a shell (attached or not: a client may
detach at any moment) and calls ``redraw()`` when a client (re)attaches.

Why it is lazy: pyte emulates at a few MB/s, far below the relay's rate. So
``feed()`` only appends to a list of pending chunks and runs a byte search for
DEC private modes (alternate screen, bracketed paste, cursor keys, mouse;
``PrivateModes``). pyte sees the pending bytes only when ``redraw()`` is
called; until then not even the emulator exists (a ``pyte`` screen and stream
cost ~12 KiB per shell, and most shells are never reattached). A redraw costs
at most one replay of ``BOUND`` bytes, and on the main screen (a shell) only
of the last ``rows`` lines: a scrolling shell's screen is its last screenful,
whatever came before.

Memory (benchmark #5: 1,000 shells in one gateway): the pending bytes are
kept small and in few objects. A shell on the main screen is trimmed to its
last ``rows`` lines whenever its pending output passes ``COMPACT_BYTES`` (or
twice what the last trim kept), the same cut a redraw makes, so a long-lived
shell holds a few KiB however much it printed; a full-screen program keeps at
most ``2 * BOUND`` (the replay bound). Chunks are joined every ``MAX_CHUNKS``
appends, so a typist's one-keystroke echoes do not cost an object each.

Where a replay of a tail starts (``resync_start``): at the last full clear or
alternate-screen switch inside it if there is one (full-screen programs such
as vim and top repaint after those, and nothing before them is visible),
otherwise just after a line feed, so the replay never starts inside an
escape sequence, and for a shell the last screenful is complete. When a tail
without such a boundary is replayed, it is drawn over the previous screen
state rather than a blank one, so a full-screen program that only repaints
what changed keeps the cells it did not touch.

The alternate screen is emulated here (pyte does not): entering it saves the
main screen, leaving restores it, so the redraw after ``vim`` exits shows the
shell as it was. ``redraw()`` re-enters the alternate screen on the client when
a program has it, so the program's own exit restores the client's main screen.
"""

from __future__ import annotations

import re

import pyte
from pyte.graphics import BG_AIXTERM, BG_ANSI, FG_AIXTERM, FG_ANSI

from recorder.terminal import ALT_MODES, PrivateModes, TrackedScreen, resync_start

BOUND = 64 * 1024
"""Unreplayed output kept; beyond it the oldest bytes are dropped. Bounds the
replay a redraw inside a full-screen program can cost (~0.1 s of pyte)."""

SHORTCUT_BYTES = 8 * 1024
"""Pending main-screen output above this is replayed from its last ``rows``
lines only."""

COMPACT_BYTES = 32 * 1024
"""Pending output above this (and above twice what was kept last time) is
compacted in ``feed``: a shell's trimmed to its last ``rows`` lines."""

MAX_CHUNKS = 64
"""Pending chunks are joined into one when there are more than this."""

_FG = {name: code for code, name in {**FG_ANSI, **FG_AIXTERM}.items()}
_BG = {name: code for code, name in {**BG_ANSI, **BG_AIXTERM}.items()}
_ALT_SWITCH = re.compile(rb"\x1b\[\?(?:1049|1047|47)[hl]")
_SANE_START = (b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b[2J", b"\x1bc")


class ScreenModel:
    """The visible screen of one shell, for redraw on reattach."""

    __slots__ = (
        "_blank",
        "_compact_at",
        "_dropped",
        "_emulator",
        "_in_alt",
        "_modes",
        "_pending",
        "_pending_size",
        "_saved_main",
        "cols",
        "rows",
    )

    def __init__(self, cols: int, rows: int) -> None:
        self.cols = cols
        self.rows = rows
        # pyte's screen and stream, made at the first catch-up (see the module doc).
        self._emulator: tuple[TrackedScreen, pyte.ByteStream] | None = None
        self._pending: list[bytes] = []  # output pyte has not seen yet
        self._pending_size = 0
        self._compact_at = COMPACT_BYTES
        self._dropped = False  # bytes were dropped from the front of _pending
        self._blank = False  # _pending is a shell's last lines: replay it on a blank screen
        self._modes = PrivateModes()
        self._in_alt = False  # as far as pyte has been fed
        self._saved_main: tuple[list[list[pyte.screens.Char]], int, int] | None = None

    @property
    def _screen(self) -> TrackedScreen:
        """The emulated screen (made on first use; tests look at it)."""
        return self._ensure_emulator()[0]

    def _ensure_emulator(self) -> tuple[TrackedScreen, pyte.ByteStream]:
        if self._emulator is None:
            screen = TrackedScreen(self.cols, self.rows)
            self._emulator = (screen, pyte.ByteStream(screen))
        return self._emulator

    def feed(self, data: bytes) -> None:
        """Output from the target. Cheap: emulation is deferred."""
        if not data:
            return
        pending = self._pending
        pending.append(data)
        self._pending_size += len(data)
        modes = self._modes
        if modes.carry or 0x1B in data:  # (else feed would change nothing)
            modes.feed(data)
        if self._pending_size > self._compact_at or len(pending) > MAX_CHUNKS:
            self._compact()

    def _compact(self) -> None:
        """Join the pending chunks; cut a scrolling shell's output to its last
        ``rows`` lines (what ``_catch_up`` would replay of it), and anything
        to its last ``BOUND`` bytes once it passes ``2 * BOUND``."""
        pending = self._pending
        if self._pending_size > self._compact_at:
            tail = self._shell_tail(pending)
            if tail is not None:
                data = tail
                self._blank = True
                self._dropped = False  # whatever was dropped before is cut off too
            else:
                data = b"".join(pending)
            if len(data) > 2 * BOUND:  # no cut, or a few very long lines
                data = data[-BOUND:]
                self._dropped = True
            # Amortised: the next attempt only after as many bytes again.
            self._compact_at = min(max(COMPACT_BYTES, 2 * len(data)), 2 * BOUND)
        else:
            data = b"".join(pending)
        self._pending = [data] if data else []
        self._pending_size = len(data)

    def _shell_tail(self, pending: list[bytes]) -> bytes | None:
        """The last ``rows`` lines of ``pending`` (from a full clear among them
        if there is one) when the main screen is shown and no alternate-screen
        switch is among them; None when there is no such cut. Looks only at
        the end of ``pending``, so a cut costs what it keeps."""
        if self._modes.alt:
            return None
        need = self.rows
        i = len(pending)
        while i > 0:
            i -= 1
            chunk = pending[i]
            end = len(chunk)
            while need:
                end = chunk.rfind(b"\n", 0, end)
                if end < 0:
                    break
                need -= 1
            if not need:
                break
        else:
            return None  # fewer than ``rows`` lines
        tail = b"".join([chunk[end + 1 :], *pending[i + 1 :]])
        if _ALT_SWITCH.search(tail):
            return None
        clear = max(tail.rfind(b"\x1b[2J"), tail.rfind(b"\x1bc"))
        return tail[clear:] if clear > 0 else tail

    def resize(self, cols: int, rows: int) -> None:
        if self._emulator is None and not self._pending_size and not self._blank:
            self.cols, self.rows = cols, rows  # nothing drawn yet: made at the new size
            return
        self._catch_up()  # what was drawn at the old size stays as it was drawn
        self.cols, self.rows = cols, rows
        self._ensure_emulator()[0].resize(rows, cols)

    @property
    def alternate_screen(self) -> bool:
        """Whether a full-screen program has the alternate screen now."""
        return self._modes.alt

    def redraw(self) -> bytes:
        """Bytes that repaint a fresh terminal of this size to the current
        screen: modes, every non-blank cell with its colours and attributes,
        the cursor position, attributes and visibility."""
        self._catch_up()
        s = self._screen
        out: list[str] = []
        modes = self._modes.modes
        if self._modes.alt:
            out.append("\x1b[?1049h")
        for mode, on in sorted(modes.items()):
            if mode not in ALT_MODES and mode != 25:
                out.append(f"\x1b[?{mode}{'h' if on else 'l'}")
        out.append("\x1b[0m\x1b[H\x1b[2J")
        default = s.default_char
        for y in range(s.lines):
            row = s.buffer[y]
            last = -1
            for x in range(s.columns - 1, -1, -1):
                ch = row[x]
                if ch.data not in (" ", "") or _sgr(ch) != _sgr(default):
                    last = x
                    break
            if last < 0:
                continue
            out.append(f"\x1b[{y + 1};1H")
            attrs = _sgr(default)
            for x in range(last + 1):
                ch = row[x]
                if ch.data == "":
                    continue  # the stub cell after a wide character
                sgr = _sgr(ch)
                if sgr != attrs:
                    out.append(f"\x1b[0;{sgr}m" if sgr else "\x1b[0m")
                    attrs = sgr
                out.append(ch.data)
            if attrs:
                out.append("\x1b[0m")
        cursor = s.cursor
        out.append(f"\x1b[{min(cursor.y, s.lines - 1) + 1};{min(cursor.x, s.columns - 1) + 1}H")
        sgr = _sgr(cursor.attrs)
        if sgr:
            out.append(f"\x1b[0;{sgr}m")
        hidden = cursor.hidden or modes.get(25) is False
        out.append("\x1b[?25l" if hidden else "\x1b[?25h")
        return "".join(out).encode("utf-8")

    def text(self) -> list[str]:
        """The visible rows as text (for tests and the CLI)."""
        self._catch_up()
        return [line.rstrip() for line in self._screen.display]

    # -- emulation -------------------------------------------------------

    def _catch_up(self) -> None:
        if not self._pending_size and not self._blank and self._emulator is not None:
            return
        screen, _ = self._ensure_emulator()
        data = b"".join(self._pending)
        overflowed = self._dropped or len(data) > BOUND
        data = data[-BOUND:]
        blank = self._blank
        self._pending = []
        self._pending_size = 0
        self._compact_at = COMPACT_BYTES
        self._dropped = self._blank = False
        if (
            (blank or len(data) > SHORTCUT_BYTES)
            and not self._modes.alt
            and not _ALT_SWITCH.search(data)
        ):
            # A scrolling shell: the screen is the last ``rows`` lines, so only
            # they are replayed, on a blank screen (pyte runs at ~1 MB/s; a
            # reattach must not wait for a 64 KiB replay). A full clear after
            # their start is an even later start. (``blank``: already cut so,
            # and whatever came since is replayed on blank just the same.)
            start = _last_lines_start(data, self.rows)
            if start > 0:
                clear = max(data.rfind(b"\x1b[2J"), data.rfind(b"\x1bc"))
                self._reset_to_blank(screen)
                self._feed_pyte(data[max(start, clear) :])
                return
        if blank:
            # ``feed`` already cut a scrolling shell to its last lines.
            self._reset_to_blank(screen)
        if overflowed:
            # Bytes were dropped: replay from a boundary (a clear or an
            # alternate-screen switch, which repaint from blank by themselves,
            # or a line start), drawn over what the screen showed before.
            data = resync_start(data)
            if not blank and not data.startswith(_SANE_START) and self._in_alt != self._modes.alt:
                # The dropped bytes switched screens; the tail has no switch.
                self._switch(self._modes.alt)
        self._feed_pyte(data)

    def _reset_to_blank(self, screen: TrackedScreen) -> None:
        screen.reset()
        if not self._modes.alt:
            # The main screen is being replayed from blank: any alternate
            # screen pyte was on was left in the cut-off bytes.
            self._in_alt = False
            self._saved_main = None

    def _feed_pyte(self, data: bytes) -> None:
        _, stream = self._ensure_emulator()
        pos = 0
        for m in _ALT_SWITCH.finditer(data):
            stream.feed(data[pos : m.start()])
            pos = m.end()
            self._switch(m.group().endswith(b"h"))
        stream.feed(data[pos:])

    def _switch(self, to_alt: bool) -> None:
        s = self._screen
        if to_alt and not self._in_alt:
            rows = [[s.buffer[y][x] for x in range(s.columns)] for y in range(s.lines)]
            self._saved_main = (rows, s.cursor.x, s.cursor.y)
            s.erase_in_display(2)
        elif not to_alt and self._in_alt:
            s.erase_in_display(2)
            if self._saved_main is not None:
                rows, x, y = self._saved_main
                for yy, row in enumerate(rows[: s.lines]):
                    line = s.buffer[yy]
                    for xx, ch in enumerate(row[: s.columns]):
                        line[xx] = ch
                s.cursor_position(y + 1, x + 1)
            self._saved_main = None
        self._in_alt = to_alt


def _last_lines_start(data: bytes, rows: int) -> int:
    """Offset just after the ``rows``-th line feed from the end (0 if fewer)."""
    end = len(data)
    for _ in range(rows):
        end = data.rfind(b"\n", 0, end)
        if end < 0:
            return 0
    return end + 1


def _sgr(ch: pyte.screens.Char) -> str:
    """The SGR parameters (without CSI/m) for a cell's attributes."""
    parts: list[str] = []
    if ch.bold:
        parts.append("1")
    if ch.italics:
        parts.append("3")
    if ch.underscore:
        parts.append("4")
    if ch.blink:
        parts.append("5")
    if ch.reverse:
        parts.append("7")
    if ch.strikethrough:
        parts.append("9")
    for color, names, extended in ((ch.fg, _FG, "38"), (ch.bg, _BG, "48")):
        if color == "default":
            continue
        code = names.get(color)
        if code is not None:
            parts.append(str(code))
        elif len(color) == 6:
            try:
                r, g, b = (int(color[i : i + 2], 16) for i in (0, 2, 4))
            except ValueError:
                continue
            parts.append(f"{extended};2;{r};{g};{b}")
    return ";".join(parts)
