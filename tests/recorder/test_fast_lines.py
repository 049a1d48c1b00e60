"""Plain lines read without the emulator (``CommandExtractor.fast_lines``)
against the emulator's reading, over seeded random sessions.

The corpus (test_commands_corpus.py) holds real shells; these sessions mix
what a plain line is (printable keys echoed byte for byte, Enter echoed as
bash 5 does) with everything that must take it off the fast path at any
point: a late, merged, missing or different echo, editing and arrow keys,
Ctrl-C, pastes, a key typed ahead of the prompt, a resize, Enter's echo split
across reads, a prompt with colours, a title, a password prompt, no prompt,
a prompt near the right margin, narrow screens where the line wraps. Each
session's events (commands, recordable input, their times) must be the same
both ways, in whole reads and with the output a byte at a time."""

from __future__ import annotations

import random

import pytest

from recorder.commands import CommandExtractor, ExtractorEvent

PROMPTS = [
    b"\x1b[?2004hroot@target:~# ",
    b"root@target:~# ",
    b"\x1b[01;32malice@web1\x1b[00m:\x1b[01;34m~\x1b[00m$ ",
    b"\x1b]0;alice@web1: ~\x07alice@web1:~$ ",  # a title: not a plain row
    b"$ ",
    b"> ",
    b"Password: ",
    b"",
    b"x" * 70 + b"$ ",
    b"odd\n$ ",  # a bare line feed keeps the column
    b"\x1b[2Aup\r\n$ ",  # a cursor movement
    b"\x1b]133;A\x07[two lines]\r\n\x1b]133;B\x07$ ",  # marked prompts
    b"\x1b]133;A\x07[two lines]\r\n$ \x1b]133;B\x07",
]
ENTER_ECHOES = [b"\r\n\x1b[?2004l\r", b"\x1b[?2004l\r\r\n", b"\r\n"]
KEYS = b"abcdefghijklmnopqrstuvwxyz0123456789 -_./'\"\\$|&;=*"
ODD_KEYS = [b"\x7f", b"\x08", b"\x1b[D", b"\x1b[A", b"\t", b"\x03", b"\x01", b"\x15"]


def _session(rnd: random.Random) -> tuple[int, list[tuple[float, str, bytes]]]:
    cols = rnd.choice([80, 80, 120, 24, 40])
    t = 0.0
    steps: list[tuple[float, str, bytes]] = []

    def out(data: bytes) -> None:
        steps.append((t, "o", data))

    def key(data: bytes) -> None:
        steps.append((t, "i", data))

    calm = rnd.random() < 0.5  # a session of plain typing, but for its Enters
    prompt = rnd.choice(PROMPTS)
    out(b"".join(b"earlier output %d\r\n" % i for i in range(rnd.choice([0, 2, 30]))) + prompt)
    for _ in range(rnd.randint(1, 6)):
        word = bytes(rnd.choice(KEYS) for _ in range(rnd.randint(1, 30)))
        secret = prompt.startswith(b"Password")
        pending = b""
        for b in word:
            t += 0.1
            key(bytes([b]))
            roll = 0.2 if calm else rnd.random()
            if secret:
                continue
            if roll < 0.06:
                pending += bytes([b])  # the echo comes later, merged
                continue
            if roll < 0.09:
                out(bytes([b]) + b"\x1b[K")  # a different echo
                continue
            if roll < 0.12:
                odd = rnd.choice(ODD_KEYS)
                key(odd)
                out(pending + bytes([b]) + b"\x08\x1b[K")
                pending = b""
                continue
            if roll < 0.14:
                key(b"\x1b[200~" + word[:5] + b"\x1b[201~")  # a paste
                out(pending + bytes([b]) + word[:5])
                pending = b""
                continue
            if roll < 0.16:
                steps.append((t, "r", b"%d" % rnd.choice([20, 60, 100])))
            out(pending + bytes([b]))
            pending = b""
        if pending:
            out(pending)
        if not calm and steps[-1][1] == "o" and rnd.random() < 0.15:
            steps.pop()  # the last key's echo never came (vi-mode commands, say)
        t += 0.1
        roll = rnd.random()
        if roll < 0.1:
            key(b"\x03")
            out(b"^C\r\n" + prompt)
            continue
        key(b"\r")
        if roll < 0.15:
            key(b"l")  # typed ahead of the prompt
        echo = rnd.choice(ENTER_ECHOES)
        if roll < 0.25:
            out(echo[:1])
            out(echo[1:])
        elif roll < 0.3:
            pass  # no echo at all
        else:
            out(echo + b"some output\r\n" * rnd.randint(0, 3) + prompt)
            if rnd.random() < 0.3:
                prompt = rnd.choice(PROMPTS)
                out(b"\r\n" + prompt)
            continue
        out(b"more\r\n" + prompt)
    return cols, steps


def _replay(cols: int, steps: list[tuple[float, str, bytes]], bytewise: bool) -> list:
    ex = CommandExtractor(cols, 24)
    events: list[ExtractorEvent] = []
    for t, direction, data in steps:
        if direction == "r":
            ex.resize(int(data), 24)
        elif direction == "i":
            events += ex.input(t, data)
        elif bytewise:
            for i in range(len(data)):
                events += ex.output(t, data[i : i + 1])
        else:
            events += ex.output(t, data)
    events += ex.finish()
    return events


@pytest.mark.parametrize("block", range(8))
def test_fast_lines_match_the_emulator(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = [_session(random.Random(block * 1000 + i)) for i in range(50)]
    taken = {"fast": 0, "promoted": 0}
    start, promote = CommandExtractor._start_fast, CommandExtractor._promote

    def counted_start(self: CommandExtractor) -> object:
        line = start(self)
        taken["fast"] += line is not None
        return line

    def counted_promote(self: CommandExtractor) -> None:
        taken["promoted"] += 1
        promote(self)

    monkeypatch.setattr(CommandExtractor, "_start_fast", counted_start)
    monkeypatch.setattr(CommandExtractor, "_promote", counted_promote)
    fast = [_replay(c, s, b) for c, s in sessions for b in (False, True)]
    monkeypatch.setattr(CommandExtractor, "fast_lines", False)
    slow = [_replay(c, s, b) for c, s in sessions for b in (False, True)]
    for i, (f, s) in enumerate(zip(fast, slow, strict=True)):
        assert f == s, f"session {block * 1000 + i // 2} (bytewise={bool(i % 2)})"
    # Both ways through the fast path were taken, many times (a fast line is
    # either read fast or promoted once).
    assert taken["fast"] - taken["promoted"] >= 5 and taken["promoted"] >= 20, taken


def test_plain_typing_takes_the_fast_path() -> None:
    # The differential test above would pass with the fast path never taken.
    ex = CommandExtractor(80, 24)
    prompt = b"\x1b[?2004hroot@target:~# "
    out = list(ex.output(0.0, b"motd\r\n" * 5 + prompt))  # (a cut replay: 3 lines and more)
    for k in range(3):
        for b in b"echo hi-%d" % k:
            out += ex.input(1.0, bytes([b]))
            assert ex._fast_x0 == len("root@target:~# ")
            out += ex.output(1.0, bytes([b]))
        out += ex.input(2.0, b"\r")
        out += ex.output(2.0, b"\r\n\x1b[?2004l\rhi-%d\r\n" % k + prompt)
        assert ex._fast_x0 == -1
    assert ex._screen is None and ex._parked is None  # no emulator was made
    assert [e.text for e in out if hasattr(e, "text")] == ["echo hi-0", "echo hi-1", "echo hi-2"]
