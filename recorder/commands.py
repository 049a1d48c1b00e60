"""The command extractor: which lines did the shell accept, and which keys may
be recorded.

``CommandExtractor`` owns two decisions, sans-I/O (bytes and times in, small
frozen dataclasses out; it never reads a clock):

1. **Commands.** A command is the line the shell received when Enter was
   pressed, after line editing: not the raw keys. Rather than re-implement
   readline (history, completion, kill ring, reverse search all happen inside
   the shell, invisible to us), we read the result off the screen: a pyte
   emulator runs over the output; the prompt ends where the cursor was when the
   first key of a line was typed; when Enter is pressed we do *not* read the
   screen yet (the echo of the last keys may still be in flight) but wait for
   the shell's echo of the newline, and read the logical line (following soft
   wraps) from the prompt to the cursor just before that newline is drawn. Lines
   are then joined while shell syntax says they continue (trailing backslash,
   open quote) and split where a buffer holds several complete lines (a
   multi-line bracketed paste), so one record is one complete command line.
   OSC 133 ``B`` marks (prompt end) are honoured where a shell emits them.

2. **Echo (redaction).** SSH gives no view of the target's termios, so "echo is
   off" is inferred per input line (the keys up to an Enter):

   * the text left of the cursor when the line starts (or output arriving while
     it is undecided) looks like a password prompt (``password|passphrase|
     PIN ... :``) -> not echoed;
   * otherwise the line's printable bytes are matched, in order, against the
     output that follows them; output that contains them before Enter, or that
     completes them on the row where the Enter's echo lands, means echoed;
   * a line still undecided when output followed its Enter and the user starts
     another line (``read -s``: the next prompt came back, never our keys) is
     not echoed; so is anything undecided at ``finish``.

   Keys are held until their line is decided, then released in order as
   ``RecordableInput`` (original timestamps) or dropped. A line that was not
   echoed never becomes a ``Command``. Residual risk, documented on purpose: a
   secret all of whose characters appear in order on the one output row that
   follows it, with no password-like prompt, would be judged echoed.

Full-screen programs: while the alternate screen is active (vim, less, top,
man) keys form no lines at all: they are released as recordable immediately
and are never commands.

Speed (the relay's hot path): pyte runs at a few MB/s, so it must not see a
100 MB ``cat``. The emulator is *engaged* only around user input: from the
first key of a line until the line is resolved, plus ``SETTLE_BYTES`` of
output after that (to keep the next prompt in view). Otherwise output only
goes to a bounded raw tail (``OutputTail``) and an alternate-screen byte search;
when the next key arrives, a fresh emulator is replayed from that tail: its
last few lines, placed where a replay of the whole tail would have put them,
when the bytes show that this draws them the same (``engage_replay``; the
tail scans only what is new since the last engage), else
the whole tail from a line boundary or the last full clear (``resync_start``).
So bulk output costs an append and a ``bytes`` search per chunk, and a
keystroke after bulk output costs one replay of a few lines, at worst of
``TAIL_BYTES``. After a cheap replay the emulator is blanked again as soon as
output follows the resolved line (see ``SETTLE_BYTES``), so an idle shell
holds no screen content.

Plain lines skip even that (``fast_lines``): when the tail ends in a plain
prompt row, a line whose keys are all printable and echoed byte for byte,
ended by an Enter echoed as bash does, is read from its keys (what the
emulator would read off the row). The first key that is anything else, or
output that is not the awaited echo, re-engages from the tail as above.

API::

    ex = CommandExtractor(cols, rows)
    ex.output(t, data) -> Sequence[Command | RecordableInput]
    ex.input(t, data)  -> Sequence[Command | RecordableInput]
    ex.resize(cols, rows)
    ex.finish()        -> Sequence[Command | RecordableInput]   # at close
    exec_command(text) -> Command                            # exec requests

Commands come out in order; ``Command.time`` is when the (last) Enter of the
command was pressed. In ``redacted`` mode the gateway writes only
``RecordableInput`` to the cast; in ``on`` mode it may write raw input, but
commands are always redacted.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyte

from recorder.terminal import (
    OutputTail,
    PrivateModes,
    TrackedScreen,
    between_sequences,
    close_stream,
    feed,
    place,
)


@dataclass(frozen=True, slots=True)
class Command:
    """A command line the shell accepted; ``time`` is when Enter was pressed."""

    time: float
    text: str


@dataclass(frozen=True, slots=True)
class RecordableInput:
    """Input that was echoed (or typed in a full-screen program): safe to
    write as an ``i`` event at its original ``time``."""

    time: float
    data: bytes


ExtractorEvent = Command | RecordableInput
"""What ``CommandExtractor`` hands back."""

TAIL_BYTES = 16 * 1024
"""Raw output kept to re-synchronise the emulator when a key arrives."""

SETTLE_BYTES = 16 * 1024
"""Output fed to the emulator after the last line resolved, before it is
dropped in favour of the raw tail, when re-engaging would replay the whole
tail (an interactive shell then stays engaged). When the last engage could
replay just the tail's last lines (``engage_replay``), the emulator is let go
as soon as output follows a resolved line: re-engaging costs a few lines of
pyte, and an idle shell holds no screen content, only a blank emulator kept
for the next line (~10 KiB: making pyte's stream again would cost more than
the replay)."""

CHEAP_REPLAY_BYTES = 512
"""A whole-tail replay this short counts as cheap (a shell's first lines)."""

BUSY_BYTES = 256 * 1024
"""Output with no key typed after which pending lines are given up on, so a
line that is never resolved cannot keep the emulator on the hot path."""

PASSWORD_PROMPT = re.compile(r"(password|passphrase|\bpin\b|passcode|secret)[^\n]*:\s*$", re.I)

_UNKNOWN, _ECHO, _NOECHO = 0, 1, 2

_PASTE_START = b"\x1b[200~"
_PASTE_END = b"\x1b[201~"
_CURSOR_DOWN = re.compile(rb"\x1b\[[0-9]*B")
_PLAIN_ROW = re.compile(rb"(?:[\x20-\x7e]|\x1b\[[0-9;]*m|\x1b\[\?2004[hl])*")
"""A prompt row ``fast_lines`` can read without the emulator: printable ASCII,
colours (SGR) and bash's bracketed-paste switch, none of which moves the
cursor but the text."""
_ROW_CODES = re.compile(rb"\x1b\[[0-9;]*m|\x1b\[\?2004[hl]")
_ENTER_ECHO = re.compile(rb"(?:\x1b\[\?2004l)?\r*\n")
"""What a shell prints for Enter at the end of a plain line (bash 5: bracketed
paste off, CR, CR LF)."""
_OSC133 = re.compile(rb"\x1b\]133;([A-Za-z])[^\x07\x1b]*(?:\x07|\x1b\\)")


@dataclass(eq=False)
class _Line:
    """The keys from a line's first key to its Enter (or Ctrl-C)."""

    clean: bool  # started with nothing pending: the cursor marks the prompt end
    prompt: tuple[int, int] | None  # (absolute row, col) where the typed text starts
    prompt_text: str = ""  # the row's text left of ``prompt``
    echo: int = _UNKNOWN
    needed: bytearray = field(default_factory=bytearray)  # printable bytes typed
    matched: int = 0  # how many of ``needed`` the output has echoed so far
    match_start: tuple[int, int] | None = None  # cursor before the first echoed byte
    paste_newlines: int = 0
    entered: float | None = None  # time of Enter
    cancelled: bool = False  # ended by Ctrl-C
    output_after_enter: bool = False

    @property
    def echo_complete(self) -> bool:
        return self.matched >= len(self.needed)


@dataclass
class _Piece:
    """A slice of one input chunk, released or dropped with its line."""

    time: float
    data: bytes
    line: _Line | None  # None: not part of a shell line (full-screen program)


def exec_command(text: str, time: float = 0.0) -> Command:
    """An exec request is one command: exactly its command string."""
    return Command(time, text)


class CommandExtractor:
    """Commands and recordable input from one shell channel's two byte streams."""

    short_echo = True
    """Take ``output``'s short path for the echo of the key a line waits for
    (tests turn it off to compare with the general path)."""

    fast_lines = True
    """Read a plain typed line without the emulator (``_start_fast``; tests
    turn it off to compare with the emulator's reading)."""

    def __init__(self, cols: int, rows: int) -> None:
        self.cols = cols
        self.rows = rows
        self._screen: TrackedScreen | None = None
        self._stream: pyte.ByteStream | None = None
        self._parked: tuple[TrackedScreen, pyte.ByteStream] | None = None  # blank, for re-use
        self._tail = OutputTail(TAIL_BYTES)
        self._alt = PrivateModes()
        self._settle = 0  # output bytes fed since the last line resolved
        self._settle_limit = SETTLE_BYTES  # ... before disengaging (see _engage)
        self._lines: deque[_Line] = deque()  # unresolved, oldest first
        self._current: _Line | None = None  # the line being typed (no Enter yet)
        self._pieces: deque[_Piece] = deque()
        self._continuation: str | None = None  # lines of an incomplete command
        self._learned_prompt = ""  # last row text before a clean line's first key
        self._osc_prompt_end: tuple[int, int] | None = None
        # input parser state
        self._in_paste = False
        self._in_carry = b""
        self._last_was_cr = False
        self._last_input_t = 0.0
        self._out: list[ExtractorEvent] = []
        # >= 0 while the line being read is a fast one: its prompt's width.
        self._fast_x0 = -1

    # -- public API ------------------------------------------------------

    def resize(self, cols: int, rows: int) -> None:
        if self._fast_x0 >= 0:
            self._promote()
        self.cols, self.rows = cols, rows
        if self._screen is not None:
            self._screen.resize(rows, cols)

    def output(self, t: float, data: bytes) -> Sequence[ExtractorEvent]:
        """Target output at ``t``."""
        if not data:
            return ()
        if self._fast_x0 >= 0:
            done = self._fast_output(data)
            if done is not None:
                return done
            self._promote()  # something else than the plain line's echo
        self._tail.append(data)
        if self._screen is None:
            self._alt.feed(data)
            return ()  # disengaged: the cheap path, nothing can be pending
        line = self._current
        if (
            len(data) == 1
            and self.short_echo
            and line is not None
            and line.echo == _ECHO
            and line.match_start is not None
            and line.matched < len(line.needed)
            and line.needed[line.matched] == data[0]
            and 0x20 <= data[0] < 0x7F
            and self._lines[0] is line
            and self._settle < BUSY_BYTES
        ):
            # The echo of the key the line waits for (a typist): what the
            # general path below does with it, without its segment split,
            # matching loop and prompt check. The line is the only one (the
            # one being typed is the newest), echoing, its start known.
            if self._alt.carry:  # (a printable byte alone changes no mode)
                self._alt.feed(data)
            feed(self._screen, self._stream, data)  # type: ignore[arg-type]
            line.matched += 1
            self._settle += 1  # (still at most BUSY_BYTES: nothing to give up)
            return self._drain() if self._pieces or self._out else ()
        if not self._lines and self._settle + len(data) > self._settle_limit:
            # Nothing waits on the screen and this read would end the settle
            # anyway: disengage before pyte sees it (a `cat` after its command
            # line was read cost ~32 KiB of emulation, ~10 ms, for nothing).
            self._disengage()
            self._alt.feed(data)
            return self._drain()
        for line in self._lines:
            if line.entered is not None:
                line.output_after_enter = True
        self._feed(data)
        self._settle += len(data)
        if self._settle > self._settle_limit:
            if self._lines and self._settle > BUSY_BYTES:
                self._give_up()
            if not self._lines:
                self._disengage()
        return self._drain()

    def input(self, t: float, data: bytes) -> Sequence[ExtractorEvent]:
        """Client input at ``t``."""
        if not data:
            return ()
        line = self._current
        # One key on its own (-1: a longer read, or inside a paste or a
        # split escape sequence): what the fast and short paths take.
        key = data[0] if len(data) == 1 and not self._in_carry and not self._in_paste else -1
        printable = 0x20 <= key < 0x7F
        if self._fast_x0 >= 0:
            if line is None or not (printable or key == 0x0D):
                self._promote()  # a key a plain line is not made of
        elif line is None and printable and self._screen is None and self.fast_lines:
            line = self._start_fast()
        if line is not None and printable:
            # One printable key inside a line (a typist): the loop below in
            # short, and released at once when the line echoes.
            self._last_input_t = t
            self._last_was_cr = False
            line.needed.append(key)
            if line.echo == _ECHO and not self._pieces and not self._out:
                return (RecordableInput(t, data),)
            self._pieces.append(_Piece(t, data, line))
            return self._drain()
        data = self._in_carry + data
        self._last_input_t = t
        self._in_carry = b""
        i = 0
        n = len(data)
        piece_start = 0
        while i < n:
            b = data[i]
            if self._in_paste:
                if data.startswith(_PASTE_END, i):
                    self._in_paste = False
                    i += len(_PASTE_END)
                    continue
                if _PASTE_END.startswith(data[i:]) and n - i < len(_PASTE_END):
                    self._in_carry = data[i:]
                    break
                line = self._line_for_key(t)
                if line is not None:
                    if b in (0x0D, 0x0A):
                        line.needed.append(0x0A)
                        line.paste_newlines += 1
                    elif b >= 0x20 and b != 0x7F:
                        line.needed.append(b)
                i += 1
                continue
            if b == 0x1B:
                end = _escape_end(data, i)
                if end is None:  # incomplete: wait for the rest of the key
                    self._in_carry = data[i:]
                    break
                if data.startswith(_PASTE_START, i):
                    self._in_paste = True
                self._line_for_key(t)
                i = end
                self._last_was_cr = False
                continue
            if b in (0x0D, 0x0A):
                if b == 0x0A and self._last_was_cr:
                    i += 1  # a client sending CR LF means one Enter
                    self._last_was_cr = False
                    continue
                self._last_was_cr = b == 0x0D
                line = self._line_for_key(t)
                i += 1
                if line is not None:
                    self._add_piece(t, data[piece_start:i], line)
                    piece_start = i
                    self._end_line(t, cancelled=False)
                continue
            self._last_was_cr = False
            if b == 0x03:  # Ctrl-C: the line is abandoned, and any continuation
                line = self._current
                i += 1
                if line is not None:
                    self._add_piece(t, data[piece_start:i], line)
                    piece_start = i
                    self._end_line(t, cancelled=True)
                self._continuation = None
                continue
            line = self._line_for_key(t)
            if line is not None and b >= 0x20 and b != 0x7F:
                line.needed.append(b)
            i += 1
        consumed = n - len(self._in_carry)
        if piece_start < consumed:
            self._add_piece(t, data[piece_start:consumed], self._current)
        return self._drain()

    def finish(self) -> Sequence[ExtractorEvent]:
        """At close: undecided input is dropped (it may be a secret); lines whose
        echo completed but whose newline never came are read as they stand."""
        if self._fast_x0 >= 0:
            self._promote()
        if self._screen is not None:
            while self._lines:
                line = self._lines[0]
                if line.entered is not None and line.echo_complete and line.echo != _NOECHO:
                    self._read_line(line)
                else:
                    if line.echo == _UNKNOWN:
                        line.echo = _NOECHO
                    self._resolve(line)
        for line in list(self._lines):
            if line.echo == _UNKNOWN:
                line.echo = _NOECHO
            self._resolve(line)
        if self._in_carry:
            self._add_piece(self._last_input_t, self._in_carry, None)
            self._in_carry = b""
        if self._current is not None and self._current.echo == _UNKNOWN:
            self._current.echo = _NOECHO
        self._current = None
        self._disengage()
        if self._parked is not None:
            close_stream(self._parked[1])
            self._parked = None
        return self._drain(final=True)

    def _give_up(self) -> None:
        """Bulk output and no key for ``BUSY_BYTES``: whatever is pending will
        not be resolved by watching more of it, and the emulator must stop
        costing time. Echoed complete lines are read as they stand; undecided
        ones are treated as not echoed (never leak), partial ones are dropped
        from command tracking."""
        while self._lines:
            line = self._lines[0]
            if line.entered is not None and line.echo == _ECHO and line.echo_complete:
                self._read_line(line)
            else:
                if line.entered is None and line.echo == _ECHO:
                    self._current = None
                self._resolve(line)
        self._current = None

    # -- input side ------------------------------------------------------

    def _line_for_key(self, t: float) -> _Line | None:
        """The line this key belongs to, starting one if needed; None inside a
        full-screen program."""
        if self._current is not None:
            return self._current
        if self._alt.alt and not self._lines:
            return None
        screen = self._engage()
        if self._lines:
            head = self._lines[0]
            if head.echo == _UNKNOWN and head.output_after_enter:
                # The shell (or program) answered the previous line without
                # echoing it, and now the user types again: it was a secret.
                head.echo = _NOECHO
                self._resolve(head)
                self._advance()
        clean = not self._lines
        cursor = (screen.cursor.y + screen.scrolled, screen.cursor.x)
        line = _Line(clean=clean, prompt=cursor if clean else None)
        if clean:
            left = screen.row_text(screen.cursor.y)[: screen.cursor.x]
            line.prompt_text = left
            if PASSWORD_PROMPT.search(left):
                line.echo = _NOECHO
            elif left.strip():
                self._learned_prompt = left
        self._current = line
        self._lines.append(line)
        self._settle = 0
        return line

    def _add_piece(self, t: float, data: bytes, line: _Line | None) -> None:
        if data:
            self._pieces.append(_Piece(t, data, line))

    def _end_line(self, t: float, cancelled: bool) -> None:
        line = self._current
        self._current = None
        if line is None:
            return
        line.entered = t
        line.cancelled = cancelled
        if line.echo == _NOECHO:
            self._resolve(line)
        self._advance()

    # -- plain lines, without the emulator -------------------------------

    def _start_fast(self) -> _Line | None:
        """At a line's first key, with nothing pending and the emulator let go:
        if the tail ends in a plain prompt row (``_PLAIN_ROW``, after a CR LF,
        narrower than the screen, not a password prompt), start the line
        without re-engaging the emulator. While every key is a printable one
        echoed byte for byte and Enter's echo is ``_ENTER_ECHO``, the line's
        text is its keys: what the emulator would read off the row. Anything
        else re-engages (``_promote``) and the line goes on the usual way."""
        if self._lines or self._alt.alt or self._alt.carry:
            return None
        row, region = self._tail.replay(self.cols, self.rows)
        if not row:
            return None  # a replay from the top: the emulator is the judge
        nl = region.rfind(b"\n")
        if nl < 1 or region[nl - 1] != 0x0D:
            return None
        last = region[nl + 1 :]
        if len(last) > 4 * self.cols or _PLAIN_ROW.fullmatch(last) is None:
            return None
        prompt = _ROW_CODES.sub(b"", last).decode("ascii")
        if not 0 < len(prompt) < self.cols - 1 or PASSWORD_PROMPT.search(prompt):
            return None
        if b"\x1b]133;" in region:
            return None  # a marked prompt: the emulator notes where it ends
        line = _Line(clean=True, prompt=None, prompt_text=prompt)
        if prompt.strip():
            self._learned_prompt = prompt
        self._current = line
        self._lines.append(line)
        self._fast_x0 = len(prompt)
        return line

    def _fast_output(self, data: bytes) -> Sequence[ExtractorEvent] | None:
        """Output for a fast line: the echo of its next keys, or Enter's echo
        (the line is read). None: not that, re-engage."""
        if not self._lines:  # (cannot happen: a fast line is resolved only here)
            return None
        line = self._lines[0]
        needed = line.needed
        k = line.matched
        if line.entered is None:
            n = len(data)
            if (
                k + n > len(needed)
                or self._fast_x0 + k + n >= self.cols
                or data != needed[k : k + n]
                or self._alt.carry
            ):
                return None
            self._tail.append(data)
            line.matched = k + n
            line.echo = _ECHO  # echoed before Enter
            return self._drain() if self._pieces or self._out else ()
        m = _ENTER_ECHO.match(data)
        if m is None or line.cancelled or line.echo != _ECHO or not line.echo_complete:
            return None
        self._tail.append(data)
        self._alt.feed(data[: m.end()])
        self._fast_x0 = -1
        self._resolve(line)
        self._accept(line.entered, needed.decode("ascii").rstrip())
        self._advance()
        self._alt.feed(data[m.end() :])
        return self._drain()

    def _promote(self) -> None:
        """The fast line meets something else: re-engage the emulator from the
        tail (the prompt and the keys echoed so far) and note where the line
        starts, as its first key would have."""
        x0, self._fast_x0 = self._fast_x0, -1
        if not self._lines:
            return
        line = self._lines[0]
        screen = self._engage()
        y = screen.cursor.y + screen.scrolled
        if screen.cursor.x == x0 + line.matched:
            line.prompt = (y, x0)
            if line.matched:
                line.match_start = (y, x0)

    # -- output side -----------------------------------------------------

    def _engage(self) -> TrackedScreen:
        if self._screen is None:
            if self._parked is not None:
                screen, stream = self._parked
                self._parked = None
                if (screen.columns, screen.lines) != (self.cols, self.rows):
                    screen.resize(self.rows, self.cols)
                    screen.blank()  # (tab stops are set for the width)
            else:
                screen = TrackedScreen(self.cols, self.rows)
                stream = pyte.ByteStream(screen, strict=False)  # (a pyte Screen: every event)
            self._screen, self._stream = screen, stream
            row, data = self._tail.replay(self.cols, self.rows)
            # A cut replay is a few lines: letting the screen go as soon as
            # nothing waits on it costs little to undo. A whole one is up to
            # TAIL_BYTES through pyte: stay engaged for SETTLE_BYTES as before.
            self._settle_limit = 0 if row or len(data) <= CHEAP_REPLAY_BYTES else SETTLE_BYTES
            self._osc_prompt_end = None
            if b"\x1b]133;" in data:
                self._replay_marked(data)  # the prompt's end, as if engaged all along
            else:
                feed(screen, stream, data)
            if row:
                place(screen, row)
            self._settle = 0
        return self._screen

    def _replay_marked(self, data: bytes) -> None:
        s, stream = self._screen, self._stream
        assert s is not None and stream is not None
        last = 0
        for m in _OSC133.finditer(data):
            stream.feed(data[last : m.end()])
            last = m.end()
            if m.group(1) == b"B":
                self._osc_prompt_end = (s.cursor.y + s.scrolled, s.cursor.x)
        stream.feed(data[last:])

    def _disengage(self) -> None:
        screen, stream = self._screen, self._stream
        if screen is not None and stream is not None:
            if self._settle_limit == 0 and between_sequences(stream):
                screen.blank()
                self._parked = (screen, stream)
            else:
                close_stream(stream)  # the screen is freed now, not by the collector
        self._screen = None
        self._stream = None
        self._osc_prompt_end = None

    def _feed(self, data: bytes) -> None:
        """Feed the emulator, stopping at each line feed so that a line whose
        Enter is pending is read just before its newline is drawn, and at each
        OSC 133 mark to note where the prompt ended."""
        assert self._stream is not None
        pos = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            seg_end = n if nl < 0 else nl
            seg = data[pos:seg_end]
            # Mode switches are tracked segment by segment so that a line is
            # judged by the screen it was on when its newline came.
            self._alt.feed(seg if nl < 0 else data[pos : nl + 1])
            if seg:
                if self._lines and self._lines[0].entered is not None:
                    self._feed_entered(seg)
                else:
                    self._feed_text(seg)
            if nl < 0:
                break
            self._newline()
            assert self._screen is not None
            feed(self._screen, self._stream, b"\n")
            pos = nl + 1
            if not self._lines and self._settle_limit == 0 and pos < n:
                # The line resolved and a cheap re-engage follows the next
                # key: the rest of this read (the command's output, the next
                # prompt) is the tail's business, not pyte's. (``output``
                # would let the screen go at the next read anyway.)
                self._disengage()
                self._alt.feed(data[pos:])
                return

    def _feed_text(self, seg: bytes) -> None:
        if b"\x1b]133;" in seg:
            self._feed_marked(seg)
        else:
            self._feed_segment(seg)

    def _feed_entered(self, seg: bytes) -> None:
        """Feed output that follows an Enter, watching for the cursor to leave
        the entered line downwards without a line feed: zsh accepts a line
        whose display spans several rows (the ``bck-i-search:`` status row of
        Ctrl-R, say) by moving down with ``CSI B`` and ``CR``, then prints the
        command's output; no newline of its own. The line is read off the row
        the cursor left. Split after each ``CSI n B`` so that output printed
        after the move in the same read cannot overwrite the row first."""
        last = 0
        for m in _CURSOR_DOWN.finditer(seg):
            self._feed_watching(seg[last : m.end()])
            last = m.end()
        if last < len(seg):
            self._feed_watching(seg[last:])

    def _feed_watching(self, part: bytes) -> None:
        s = self._screen
        assert s is not None
        y0, scrolled = s.cursor.y, s.scrolled
        self._feed_text(part)
        if not self._lines or s.scrolled != scrolled or self._alt.alt:
            return
        head = self._lines[0]
        if (
            head.entered is None
            or head.cancelled
            or head.paste_newlines
            or head.echo != _ECHO
            or not head.needed
            or not head.echo_complete
        ):
            return
        end = y0
        while end + 1 < s.lines and s.is_continuation(end + 1):
            end += 1  # moving down within a wrapped line is not leaving it
        if s.cursor.y <= end:
            return
        self._read_line(head, end)
        self._advance()

    def _feed_marked(self, seg: bytes) -> None:
        assert self._screen is not None
        last = 0
        for m in _OSC133.finditer(seg):
            self._feed_segment(seg[last : m.end()])
            last = m.end()
            if m.group(1) == b"B":
                s = self._screen
                self._osc_prompt_end = (s.cursor.y + s.scrolled, s.cursor.x)
        if last < len(seg):
            self._feed_segment(seg[last:])

    def _feed_segment(self, seg: bytes) -> None:
        """Feed bytes without a line feed, advancing the head line's echo."""
        assert self._stream is not None and self._screen is not None
        head = self._lines[0] if self._lines else None
        if head is None or head.echo == _NOECHO or (head.echo_complete and head.needed):
            feed(self._screen, self._stream, seg)
            self._check_password_prompt(head)
            return
        # Match the head line's typed bytes against this output, in order. The
        # cursor before the first matched byte is where the typed text starts.
        needed = head.needed
        k = head.matched
        fed = 0
        for i, b in enumerate(seg):
            if k >= len(needed):
                break
            if b == needed[k]:
                if k == 0 and head.match_start is None:
                    feed(self._screen, self._stream, seg[fed:i])
                    fed = i
                    s = self._screen
                    head.match_start = (s.cursor.y + s.scrolled, s.cursor.x)
                k += 1
        feed(self._screen, self._stream, seg[fed:])
        if k > head.matched:
            head.matched = k
            if head.echo == _UNKNOWN and (head.entered is None or head.echo_complete):
                # Echo seen before Enter, or the whole line echoed: it echoes.
                head.echo = _ECHO
        self._check_password_prompt(head)

    def _check_password_prompt(self, head: _Line | None) -> None:
        if head is None or head.echo != _UNKNOWN:
            return
        s = self._screen
        assert s is not None
        if head.match_start is not None:
            # Only what is left of the line's own echo can be a prompt: typing
            # ``grep password: f`` must not look like a password prompt.
            y = head.match_start[0] - s.scrolled
            left = s.row_text(y)[: head.match_start[1]] if 0 <= y < s.lines else ""
        else:
            left = s.row_text(s.cursor.y)[: s.cursor.x]
        if PASSWORD_PROMPT.search(left):
            head.echo = _NOECHO
            if head.entered is not None:
                self._resolve(head)
                self._advance()

    def _newline(self) -> None:
        """A line feed is about to be drawn: if it is the echo of a pending
        Enter, read that line now."""
        if not self._lines:
            return
        head = self._lines[0]
        if head.entered is None:
            # Output moved on before the user finished typing: whatever matched
            # so far was not this line's echo (unless its text has newlines).
            if not head.echo_complete and head.needed[head.matched] != 0x0A:
                head.matched = 0
                head.match_start = None
            elif head.needed and not head.echo_complete:
                head.matched += 1
            return
        if head.cancelled:
            if head.echo == _UNKNOWN:
                head.echo = _ECHO if head.echo_complete and head.needed else _NOECHO
            self._resolve(head)
            self._advance()
            return
        if not head.echo_complete and not (head.clean and head.echo == _ECHO and head.matched):
            if head.needed[head.matched] == 0x0A:
                head.matched += 1  # a newline inside a pasted buffer
                return
            # A clean line that echoed before Enter is read at the first newline
            # even if some keys never showed (vi-mode commands, say). Otherwise
            # this newline is someone else's (output of an earlier command,
            # typed ahead): what matched so far was not this line's echo.
            head.matched = 0
            head.match_start = None
            return
        if head.echo == _UNKNOWN:
            head.echo = _ECHO
        if head.paste_newlines and not self._alt.alt:
            # Readline may redraw a multi-line buffer at Enter: the newlines of
            # that redraw come before the Enter's own. Read once the screen
            # shows as many lines as the buffer has.
            s = self._screen
            assert s is not None
            text = self._logical_text(self._start_of(head, s.cursor.y), s.cursor.y)
            if text.count("\n") < head.paste_newlines:
                return
        self._read_line(head)
        self._advance()

    def _read_line(self, line: _Line, cy: int | None = None) -> None:
        """Read the line's text off the screen (its last row is ``cy``, by
        default the cursor's)."""
        s = self._screen
        assert s is not None and line.entered is not None
        in_alt = self._alt.alt
        self._resolve(line)
        if in_alt or line.echo == _NOECHO:
            return
        if cy is None:
            cy = s.cursor.y
        start = self._start_of(line, cy)
        text = self._logical_text(start, cy)
        if start == self._fallback_start(line, cy):
            # No known position survived (typed ahead, or a completion listing
            # moved the line down): take the row and strip the prompt text.
            text = _strip_prompt(text, line.prompt_text or self._learned_prompt)
        self._accept(line.entered, text)

    def _start_of(self, line: _Line, cy: int) -> tuple[int, int]:
        """The (row, col) where the typed text of ``line`` starts on screen:
        the prompt end noted at its first key, else an OSC 133 ``B`` mark, else
        where its echo began, if that is on the logical line at the cursor."""
        s = self._screen
        assert s is not None
        first = self._fallback_start(line, cy)[0]
        for i, cand in enumerate((line.prompt, self._osc_prompt_end, line.match_start)):
            if cand is None:
                continue
            y = cand[0] - s.scrolled
            if first <= y <= cy:
                if i == 2:
                    return y, self._past_prompt(y, cand[1])
                return y, cand[1]
        return first, 0

    def _past_prompt(self, y: int, x: int) -> int:
        """``x``, or the end of the learned prompt if ``x`` lies inside it: the
        echo match is a subsequence, so a typed-ahead line's first letter can
        match inside the prompt drawn before its echo (``e`` of
        ``root@target:~# `` for ``echo two``)."""
        prompt = self._learned_prompt
        assert self._screen is not None
        if prompt.strip() and x < len(prompt) and self._screen.row_text(y).startswith(prompt):
            return len(prompt)
        return x

    def _fallback_start(self, line: _Line, cy: int) -> tuple[int, int]:
        """The first row of the logical line at the cursor, column 0."""
        s = self._screen
        assert s is not None
        first = cy
        breaks = line.paste_newlines
        while first > 0:
            if s.is_continuation(first):
                first -= 1
            elif breaks > 0:
                breaks -= 1
                first -= 1
            else:
                break
        return first, 0

    def _logical_text(self, start: tuple[int, int], last: int) -> str:
        s = self._screen
        assert s is not None
        y0, x0 = start
        while last + 1 < s.lines and s.is_continuation(last + 1):
            last += 1  # the cursor may sit on an earlier row of a wrapped line
        parts: list[str] = []
        for y in range(y0, last + 1):
            row = s.row_text(y, x0 if y == y0 else 0)
            if y < last and s.is_continuation(y + 1):
                parts.append(row)
            else:
                parts.append(row.rstrip())
                if y < last:
                    parts.append("\n")
        return "".join(parts).rstrip()

    def _accept(self, t: float, text: str) -> None:
        """A line the shell accepted: join continuations, split complete lines."""
        if self._continuation is not None:
            text = self._continuation + "\n" + text
            self._continuation = None
        commands, rest = split_command_lines(text)
        for cmd in commands:
            if cmd.strip():
                self._out.append(Command(t, cmd))
        if rest is not None:
            self._continuation = rest

    # -- bookkeeping -----------------------------------------------------

    def _resolve(self, line: _Line) -> None:
        if line.echo == _UNKNOWN:
            line.echo = _NOECHO
        try:
            self._lines.remove(line)
        except ValueError:
            pass
        if self._current is line:
            self._current = None
        self._settle = 0

    def _advance(self) -> None:
        """Resolve what can be resolved without more output."""
        while self._lines:
            head = self._lines[0]
            if head.entered is not None and head.echo == _NOECHO:
                self._resolve(head)
                continue
            break

    def _drain(self, final: bool = False) -> Sequence[ExtractorEvent]:
        pieces = self._pieces
        while pieces:
            p = pieces[0]
            line = p.line
            if line is None or line.echo == _ECHO:
                self._out.append(RecordableInput(p.time, p.data))
            elif line.echo == _UNKNOWN and not final:
                break
            pieces.popleft()
        out = self._out
        if not out:
            return ()
        self._out = []
        out.sort(key=_order)  # commands and input both in time order
        return out


def _order(e: ExtractorEvent) -> float:
    return e.time


def _escape_end(data: bytes, i: int) -> int | None:
    """End index of the escape sequence (one key) starting at ``data[i]``."""
    n = len(data)
    if i + 1 >= n:
        # Maybe the first byte of an arrow key split across reads; readline
        # reads ESC+key as one Meta key anyway, so waiting loses nothing.
        return None
    nxt = data[i + 1]
    if nxt in (0x5B, 0x4F):  # CSI or SS3
        j = i + 2
        if nxt == 0x4F:
            return j + 1 if j < n else None
        while j < n:
            if 0x40 <= data[j] <= 0x7E:
                return j + 1
            j += 1
        return None
    return i + 2  # Alt+key


def _strip_prompt(text: str, prompt: str) -> str:
    if prompt and text.startswith(prompt):
        return text[len(prompt) :]
    if prompt.strip() and text.startswith(prompt.rstrip()):
        return text[len(prompt.rstrip()) :].lstrip()
    m = re.match(r"^[^\n]{0,80}?[$#%>] ", text)
    return text[m.end() :] if m else text


def split_command_lines(text: str) -> tuple[list[str], str | None]:
    """Split a buffer the shell received into complete command lines.

    Returns ``(complete, rest)``: ``rest`` is the incomplete tail (open quote,
    trailing backslash) to be continued by the next accepted line, or None.
    A newline ends a command unless it is escaped or inside quotes; ``#``
    starts a comment (so ``don't`` in a comment opens nothing)."""
    complete: list[str] = []
    start = 0
    i = 0
    n = len(text)
    quote = ""  # "'", '"', or "$'"
    word_start = True
    while i < n:
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = ""
            i += 1
            continue
        if quote in ('"', "$'"):
            if c == "\\":
                i += 2
                continue
            if (quote == '"' and c == '"') or (quote == "$'" and c == "'"):
                quote = ""
            i += 1
            continue
        if c == "\\":
            if i + 1 >= n:
                return complete, text[start:]  # trailing backslash: continues
            i += 2
            word_start = False
            continue
        if c == "'":
            quote = "'"
        elif c == '"':
            quote = '"'
        elif c == "$" and text.startswith("$'", i):
            quote = "$'"
            i += 2
            continue
        elif c == "#" and word_start:
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        elif c == "\n":
            complete.append(text[start:i])
            start = i + 1
            word_start = True
            i += 1
            continue
        word_start = c in " \t;&|()<>"
        i += 1
    if quote:
        return complete, text[start:]
    complete.append(text[start:])
    return complete, None
