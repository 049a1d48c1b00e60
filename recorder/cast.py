"""The asciicast writer: terminal bytes and timestamps in, cast lines out.

``CastWriter`` owns the *format* of a recording (asciicast v2, or v3 on
request): the header, the ``o``/``i``/``r``/``m`` events, incremental UTF-8
decoding and monotonic times. It is sans-I/O: it never opens the file and never
reads a clock. The gateway hands it times (float seconds since the connection
started) and appends whatever ``header()``, ``take()`` and ``finish()`` return
to ``recordings/<id>.cast``.

Why the work is split the way it is: ``output()`` sits on the relay's hot path
(a ``cat`` of 100 MB goes through it), so it only appends ``(t, bytes)`` to a
list. Decoding, coalescing and JSON encoding happen in ``take()``, which the
gateway calls about once a second off the per-chunk path. Consecutive output
chunks closer than ``COALESCE_GAP`` seconds become one event (up to
``MAX_EVENT_BYTES``), so bulk output costs one ``bytes.join``, one UTF-8 check
and a few memchr-driven ``bytes.replace`` passes per ~128 KiB instead of per
read (see ``_escape_json``); the player cannot show the difference of a few
milliseconds anyway. ``python -m bench.recording_micro`` measures it.

Input arrives late in ``redacted`` mode (the command extractor holds keys until
it knows whether the target echoed them), with its original timestamps. So
``take()`` stably sorts its batch by time before writing; anything older than
the last line already handed out is clamped to that time, so times in the file
never decrease.
"""

from __future__ import annotations

import codecs
import json
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

InputMode = Literal["off", "on", "redacted"]
"""``[recording] input``: ``off`` drops input; ``on`` and ``redacted`` record
what the caller passes (in ``redacted`` mode the caller passes only what the
command extractor released as recordable)."""

CastFormat = Literal["v2", "v3"]
"""asciicast v2 (absolute times) or v3 (intervals since the previous event)."""

COALESCE_GAP = 0.005
"""Output chunks closer than this (seconds) are written as one event."""

MAX_EVENT_BYTES = 128 * 1024
"""Upper bound on the raw bytes coalesced into one ``o`` event: keeps lines a
player can load in one piece and bounds the memory of one ``json.dumps``."""

_OUT = 0
_IN = 1
_RESIZE = 2
_MARKER = 3

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


class CastWriter:
    """One recording's asciicast stream. Not thread-safe; one per connection."""

    def __init__(
        self,
        width: int,
        height: int,
        timestamp: int,
        *,
        env: Mapping[str, str | None] | None = None,
        title: str | None = None,
        command: str | None = None,
        input_mode: InputMode = "redacted",
        format: CastFormat = "v2",
    ) -> None:
        if format not in ("v2", "v3"):
            raise ValueError(f"unknown cast format {format!r}")
        if input_mode not in ("off", "on", "redacted"):
            raise ValueError(f"unknown input mode {input_mode!r}")
        self.width = int(width)
        self.height = int(height)
        self.timestamp = int(timestamp)
        self.env = {k: v for k, v in (env or {}).items() if v}
        self.title = title
        self.command = command
        self.input_mode: InputMode = input_mode
        self.format: CastFormat = format
        # (time, kind, payload): bytes for output/input, str for resize/marker.
        # The payload is Any because kind says which; a union would cost an
        # isinstance per event on the bulk path just to please the checker.
        self._pending: list[tuple[float, int, Any]] = []
        self._out_carry = b""  # an incomplete UTF-8 sequence from the last read
        self._in_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._last_t = 0.0  # last time written (rounded), for clamping
        # v2 times as text (see ``_stamp``): the latest time seen and its text.
        self._v2 = format == "v2"
        self._max_t = 0.0
        self._max_text = b"0.0"
        self._finished = False

    # -- hot path --------------------------------------------------------

    def output(self, t: float, data: bytes) -> None:
        """Target output at ``t``. Cheap: decoding happens in ``take()``."""
        if data:
            self._pending.append((t, _OUT, data))

    def input(self, t: float, data: bytes) -> None:
        """Client input at ``t`` that may be recorded (the caller decides
        redaction); dropped when the input mode is ``off``."""
        if data and self.input_mode != "off":
            self._pending.append((t, _IN, data))

    def resize(self, t: float, cols: int, rows: int) -> None:
        """The window changed: an ``r`` event ``"COLSxROWS"``."""
        self._pending.append((t, _RESIZE, f"{int(cols)}x{int(rows)}"))

    def marker(self, t: float, text: str) -> None:
        """A marker (``detached``, ``attached by USER``, ``closed: REASON``)."""
        self._pending.append((t, _MARKER, text))

    @property
    def pending_events(self) -> int:
        """Events given and not yet taken (what ``take_parts`` would encode)."""
        return len(self._pending)

    # -- encoding --------------------------------------------------------

    def header(self) -> bytes:
        """The first line of the file."""
        head: dict[str, object]
        if self.format == "v2":
            head = {
                "version": 2,
                "width": self.width,
                "height": self.height,
                "timestamp": self.timestamp,
            }
            if self.env:
                head["env"] = dict(self.env)
        else:
            term: dict[str, object] = {"cols": self.width, "rows": self.height}
            if self.env.get("TERM"):
                term["type"] = self.env["TERM"]
            head = {"version": 3, "term": term, "timestamp": self.timestamp}
            rest = {k: v for k, v in self.env.items() if k != "TERM"}
            if rest:
                head["env"] = rest
        if self.command is not None:
            head["command"] = self.command
        if self.title is not None:
            head["title"] = self.title
        return (_dumps(head) + "\n").encode("utf-8")

    def take(self) -> bytes:
        """Every complete line pending, encoded, to append to the file. Empties
        the buffer; returns ``b""`` when there is nothing to write."""
        return b"".join(self.take_parts())

    def take_parts(self) -> list[bytes]:
        """What ``take()`` returns, as the pieces to write in order (for
        ``os.writev``: a second of bulk output is tens of MB, and joining it
        first cost a copy and the page faults of a fresh buffer)."""
        pending = self._pending
        if not pending:
            return []
        self._pending = []
        # Usually already ordered; timsort makes that O(n). Stable, so events at
        # the same time keep their call order.
        pending.sort(key=_time_of)  # C itemgetter: no Python call per read
        parts: list[bytes] = []
        n = len(pending)
        i = 0
        while i < n:
            t, kind, payload = pending[i]
            i += 1
            if kind == _OUT:
                chunks = [payload]
                size = len(payload)
                last = t
                while i < n and size < MAX_EVENT_BYTES:
                    t2, kind2, payload2 = pending[i]
                    if kind2 != _OUT or t2 - last > COALESCE_GAP:
                        break
                    chunks.append(payload2)
                    size += len(payload2)
                    last = t2
                    i += 1
                body = self._output_body(chunks)
                if body:
                    # The line in three pieces, joined once per take(): the
                    # body (up to MAX_EVENT_BYTES) is copied only by that join.
                    parts.append(b'[%s, "o", "' % self._stamp(t))
                    parts.append(body)
                    parts.append(b'"]\n')
            elif kind == _IN:
                # A key is ASCII: as its own JSON string body, escaped as
                # output is (what json.dumps writes, without building a str).
                if not payload.isascii() or self._in_decoder.buffer:
                    payload = self._in_decoder.decode(payload).encode("utf-8")
                if payload:
                    parts.append(b'[%s, "i", "%s"]\n' % (self._stamp(t), _escape_json(payload)))
            elif kind == _RESIZE:
                parts.append(self._line(t, "r", payload))
            else:
                parts.append(self._line(t, "m", payload))
        return parts

    def finish(self, t: float) -> bytes:
        """The last lines: everything pending plus what the incremental
        decoders still hold (an incomplete trailing character becomes U+FFFD).
        Later calls return ``b""``."""
        return b"".join(self.finish_parts(t))

    def finish_parts(self, t: float) -> list[bytes]:
        """What ``finish()`` returns, as pieces (see ``take_parts``)."""
        if self._finished:
            return []
        tail = self.take_parts()
        if self._out_carry:
            text = self._out_carry.decode("utf-8", errors="replace")
            self._out_carry = b""
            tail.append(self._line(t, "o", text))
        rest = self._in_decoder.decode(b"", final=True)
        if rest and self.input_mode != "off":
            tail.append(self._line(t, "i", rest))
        self._finished = True
        return tail

    def _output_body(self, chunks: list[bytes]) -> bytes:
        """The JSON string body (without quotes) for output read in ``chunks``,
        keeping an incomplete trailing UTF-8 sequence for the next call.

        Why not ``json.dumps``: its C string encoder runs at ~80 MB/s on
        terminal text here, and it needs a ``str`` (a decode, and an encode
        back). Valid UTF-8 (the common case) is used as is, and only ASCII
        needs escaping in JSON; UTF-8 continuation and lead bytes are never
        ASCII, so ``bytes.replace`` of the ASCII bytes that need it escapes it
        safely. ``_escape_json`` says why that is the cheap way.
        """
        if self._out_carry:
            chunks.insert(0, self._out_carry)
            self._out_carry = b""
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if raw.isascii():  # word-at-a-time: text is mostly ASCII
            return _escape_json(raw)
        cut = _incomplete_tail(raw)
        if cut:
            self._out_carry = raw[-cut:]
            raw = raw[:-cut]
            if not raw:
                return b""
        if not _valid_utf8(raw):
            # Binary or broken text: the slow path, every bad byte a U+FFFD.
            raw = raw.decode("utf-8", errors="replace").encode("utf-8")
        return _escape_json(raw)

    def _line(self, t: float, code: str, data: str) -> bytes:
        if self._v2:
            # '["m", "text"]' after the time: what json.dumps writes for the list.
            return b"[%s, %s\n" % (self._stamp(t), _dumps([code, data])[1:].encode("utf-8"))
        return (_dumps([self._clock(t), code, data]) + "\n").encode("utf-8")

    def _stamp(self, t: float) -> bytes:
        """``repr(self._clock(t))`` as bytes, the same text at a third of the
        cost in v2 (two events per typed key; ``round(t, 6)`` and ``repr`` of
        a float each convert through decimal digits).

        ``"%.6f" % t`` asks for the digits ``round(t, 6)`` computes (both are
        ``_Py_dg_dtoa`` mode 3 with 6 digits, correctly rounded), and with
        its trailing zeros stripped that is ``repr`` of the rounded float:
        below 1e9 s it has at most 15 significant digits, so no shorter
        decimal reads back as the same float. ``repr`` writes an exponent
        below 1e-4, so those times (and anything past 1e9 s, or not finite)
        take the old way. Rounding never decreases, so clamping the raw time
        to the latest one seen clamps the rounded one just the same."""
        if not self._v2:
            return repr(self._clock(t)).encode()
        if t <= self._max_t:
            return self._max_text
        self._max_t = t
        if t < 1e9:
            text = (b"%.6f" % t).rstrip(b"0")
            if text[-1] == 0x2E:  # "."
                text += b"0"
            if text[:6] != b"0.0000" or text == b"0.0":
                self._max_text = text
                return text
        self._max_text = text = repr(round(float(t), 6)).encode()
        return text

    def _clock(self, t: float) -> float:
        """The time to write for an event at ``t``: rounded to microseconds,
        clamped so it never goes back; in v3 the interval since the last one."""
        t = round(float(t), 6)
        if t < self._last_t:
            t = self._last_t
        if self.format == "v2":
            self._last_t = t
            return t
        interval = round(t - self._last_t, 6)
        self._last_t = t
        return interval


_SHORT_ESCAPES = {0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0C: b"\\f", 0x0D: b"\\r"}
_ESCAPES = (
    (b"\\", b"\\\\"),  # first: the other escapes add backslashes
    (b'"', b'\\"'),
    *((bytes((c,)), _SHORT_ESCAPES.get(c, b"\\u%04x" % c)) for c in range(0x20)),
)
"""Every byte that JSON requires escaped inside a string, with its escape."""

_ESCAPE_OF = dict(_ESCAPES)

SHORT_ESCAPE = 64
"""Up to this many bytes (a key, a key's echo), ``_escape_json`` finds and
replaces with one regular expression: two ctypes calls cost more."""

_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\]')


_ONE_BYTE = {bytes((c,)): _ESCAPE_OF.get(bytes((c,)), bytes((c,))) for c in range(0x80)}
"""Each ASCII byte alone, escaped."""


def _escape_match(m: re.Match[bytes]) -> bytes:
    return _ESCAPE_OF[m.group()]


# What strcspn looks for: every control byte but NUL (strcspn stops at a NUL
# anyway), in two sets of at most 16, the most glibc's SSE4.2 strcspn compares
# at once; the common ones in the first. Not backslash and quote: their
# escapes hold them.
_FIRST = b"\r\n\x1b\t\x08\x07"
_CONTROLS = _FIRST + bytes(c for c in range(1, 0x20) if bytes((c,)) not in _FIRST)
_SETS = (_CONTROLS[:16], _CONTROLS[16:])


def _load_strcspn() -> Callable[[bytes, bytes], int] | None:
    """libc's ``strcspn`` through ctypes, or None where there is none."""
    try:
        import ctypes

        fn = ctypes.CDLL(None).strcspn
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    fn.restype = ctypes.c_size_t
    return fn  # type: ignore[no-any-return]


_strcspn = _load_strcspn()


def _load_native_escape() -> Callable[[bytes], bytes] | None:
    """recorder._escape's ``escape_json`` (recorder/_escape.c, built by
    setup.py), or None where it was not built: then the Python path below."""
    try:
        from recorder._escape import escape_json
    except ImportError:
        return None
    return escape_json


_native_escape = _load_native_escape()


def _escape_json(raw: bytes) -> bytes:
    """Escape valid UTF-8 for the inside of a JSON string.

    In C when recorder._escape is built: two SIMD passes, ~1.7x the speed of
    the Python path on a pty ``cat``'s text, whose CR LF every few dozen
    bytes makes each ``bytes.replace`` below a memchr per line.

    Without it, each byte that needs escaping and is present is replaced in one
    ``bytes.replace`` (memchr-driven for a one-byte pattern). Measured per
    byte of terminal text that beats every one-pass way in the standard
    library: ``json``'s C string encoder (~80 MB/s), ``bytes.translate``
    (deleting or mapping), ``re``, ``sqlite3``'s ``json_quote``; and a
    two-byte pattern such as CR LF is slower than two one-byte ones.

    Which bytes are present: backslash and quote by one ``in`` (memchr) each;
    the 32 control bytes by libc's ``strcspn`` through ctypes (a C string
    function, fine on a ``bytes`` object: it always ends in a NUL), which
    returns where the first of a set is: that byte is replaced everywhere and
    the search repeats, so a present byte costs a search that stops early and
    the absent ones two SIMD passes in all (32 memchr scans were a fifth of
    the cost). A NUL in the data stops strcspn too: it is then the byte
    found, and is replaced likewise. Without ctypes, one ``in`` per byte."""
    if len(raw) == 1:  # a key or its echo: from a table
        one = _ONE_BYTE.get(raw)
        if one is not None:
            return one
    if _native_escape is not None:
        return _native_escape(raw)
    if len(raw) <= SHORT_ESCAPE:
        if _NEEDS_ESCAPE.search(raw) is None:
            return raw
        return _NEEDS_ESCAPE.sub(_escape_match, raw)
    # (An int needle: a bytes one costs a buffer export per test.)
    if 0x5C in raw:
        raw = raw.replace(b"\\", b"\\\\")  # first: the other escapes add backslashes
    if 0x22 in raw:
        raw = raw.replace(b'"', b'\\"')
    strcspn = _strcspn
    if strcspn is None:
        return _escape_json_slow(raw)
    for chars in _SETS:
        while True:
            at = strcspn(raw, chars)
            if at >= len(raw):
                break
            byte = raw[at : at + 1]
            if byte >= b" ":  # not a control byte: a broken strcspn; never loop on it
                return _escape_json_slow(raw)
            raw = raw.replace(byte, _ESCAPE_OF[byte])
    return raw


def _escape_json_slow(raw: bytes) -> bytes:
    """``_escape_json`` without strcspn, backslash and quote already done."""
    for byte, escape in _ESCAPES[2:]:
        if byte in raw:
            raw = raw.replace(byte, escape)
    return raw


VALIDATE_STEP = 16 * 1024
"""Bytes of output checked for valid UTF-8 per decode (see ``_valid_utf8``)."""

_utf8_decode = codecs.utf_8_decode


def _valid_utf8(raw: bytes) -> bool:
    """Whether ``raw`` (cut after its last complete character) is valid UTF-8.

    The standard library's only UTF-8 validator is the decoder, which builds a
    ``str``: for a 128 KiB event with one character above U+FFFF that is a
    fresh 512 KiB buffer (4 bytes per character), and in the relay's working
    set it ran at ~0.35 GB/s. Decoding ``VALIDATE_STEP`` at a time from a
    memoryview (no copies; each ``str`` at most 64 KiB, reused by the
    allocator and cache-resident) ran ~5x faster. A character cut by a step
    boundary is not consumed (``final=False``) and starts the next step."""
    view = memoryview(raw)
    n = len(raw)
    pos = 0
    try:
        while pos < n:
            _, used = _utf8_decode(view[pos : pos + VALIDATE_STEP], "strict", False)
            if not used:
                return False  # an incomplete character where none can be
            pos += used
    except UnicodeDecodeError:
        return False
    return True


def _incomplete_tail(raw: bytes) -> int:
    """How many trailing bytes of ``raw`` start a UTF-8 sequence that the next
    read may complete (0 to 3)."""
    for k in range(1, min(3, len(raw)) + 1):
        b = raw[-k]
        if b < 0x80:
            return 0
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4 if b < 0xF8 else 1
            return k if need > k else 0
    return 0


_time_of = operator.itemgetter(0)
