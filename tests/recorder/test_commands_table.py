"""Table tests of the command extractor on hand-written traces, and of the
shell-syntax splitter. Each trace is (direction, bytes) steps, 10 ms apart."""

from __future__ import annotations

import pytest

from recorder.commands import (
    BUSY_BYTES,
    Command,
    CommandExtractor,
    ExtractorEvent,
    RecordableInput,
    exec_command,
    split_command_lines,
)

PROMPT = b"$ "


def play(steps: list[tuple[str, bytes]], cols: int = 80) -> list[ExtractorEvent]:
    ex = CommandExtractor(cols, 24)
    out: list[ExtractorEvent] = []
    for n, (direction, data) in enumerate(steps):
        t = n * 0.01
        out += ex.output(t, data) if direction == "o" else ex.input(t, data)
    out += ex.finish()
    return out


def typed(text: bytes) -> list[tuple[str, bytes]]:
    """Keys typed one at a time, each echoed."""
    steps: list[tuple[str, bytes]] = []
    for b in text:
        steps += [("i", bytes([b])), ("o", bytes([b]))]
    return steps


def commands(events: list[ExtractorEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Command)]


def recorded(events: list[ExtractorEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, RecordableInput))


TRACES = [
    (
        "typed and echoed",
        [("o", PROMPT), *typed(b"ls -l"), ("i", b"\r"), ("o", b"\r\ntotal 0\r\n$ ")],
        ["ls -l"],
    ),
    (
        "Enter before the echo arrived",
        [("o", PROMPT), ("i", b"uname\r"), ("o", b"una"), ("o", b"me\r\nLinux\r\n$ ")],
        ["uname"],
    ),
    (
        "password prompt: nothing",
        [
            ("o", b"[sudo] password for alice: "),
            ("i", b"hunter2"),
            ("i", b"\r"),
            ("o", b"\r\n"),
            ("o", PROMPT),
        ],
        [],
    ),
    (
        "password prompt printed after the keys were typed",
        [
            ("o", PROMPT),
            *typed(b"sudo true"),
            ("i", b"\r"),
            ("i", b"pw1234\r"),
            ("o", b"\r\n[sudo] password for alice: "),
            ("o", b"\r\n$ "),
        ],
        ["sudo true"],
    ),
    (
        "a command that mentions password: is still a command",
        [("o", PROMPT), ("i", b"grep password: f\r"), ("o", b"grep password: f\r\n$ ")],
        ["grep password: f"],
    ),
    (
        "full-screen program keys are not commands",
        [
            ("o", PROMPT),
            *typed(b"vi"),
            ("i", b"\r"),
            ("o", b"\r\n\x1b[?1049h\x1b[H\x1b[2J~"),
            ("i", b":q\r"),
            ("o", b"\x1b[?1049l$ "),
        ],
        ["vi"],
    ),
    (
        "OSC 133 prompt marks",
        [
            ("o", b"\x1b]133;A\x07user ~ % \x1b]133;B\x07"),
            ("i", b"pwd\r"),
            ("o", b"pwd\r\n/root\r\n"),
        ],
        ["pwd"],
    ),
    (
        "long line wrapped at 20 columns",
        [("o", PROMPT), ("i", b"echo " + b"a" * 40 + b"\r"), ("o", b"echo " + b"a" * 40 + b"\r\n")],
        ["echo " + "a" * 40],
    ),
    (
        "typed ahead behind a prompt holding the command's first letter",
        [
            ("o", b"root@target:~# "),
            ("i", b"sleep 1\r"),
            ("i", b"echo two\r"),
            ("o", b"sleep 1\r\n"),
            ("o", b"root@target:~# echo two\r\ntwo\r\nroot@target:~# "),
        ],
        ["sleep 1", "echo two"],
    ),
    (
        "zsh accepts a Ctrl-R match by moving down (CSI B), no newline of its own",
        [
            ("o", b"root@target ~ # "),
            ("i", b"\x12"),
            ("o", b"\r\r\nbck-i-search: _\x1b[K\x1b[A\x1b[1C"),
            ("i", b"need"),
            ("o", b"echo \x1b[4mneed\x1b[24mle\x1b[1B\x1b[13Dneed_\x1b[A\x1b[2C"),
            ("i", b"\r"),
            ("o", b"\x1b[1B\r\x1b[K\x1b[A\x1b[27C\x1b[1B\rneedle\r\nroot@target ~ # "),
        ],
        ["echo needle"],
    ),
]


@pytest.mark.parametrize(("steps", "expected"), [t[1:] for t in TRACES], ids=[t[0] for t in TRACES])
def test_trace(steps: list[tuple[str, bytes]], expected: list[str]) -> None:
    cols = 20 if any(b"a" * 40 in d for _, d in steps) else 80
    assert commands(play(steps, cols)) == expected


def test_secret_never_recorded() -> None:
    events = play(TRACES[2][1])  # type: ignore[arg-type]
    assert b"hunter2" not in recorded(events)
    events = play(TRACES[3][1])  # type: ignore[arg-type]
    assert b"pw1234" not in recorded(events)
    assert recorded(events).startswith(b"sudo true\r")


def test_full_screen_keys_are_recordable() -> None:
    events = play(TRACES[5][1])  # type: ignore[arg-type]
    assert recorded(events) == b"vi\r:q\r"


def test_unresolved_line_is_given_up_under_bulk_output() -> None:
    ex = CommandExtractor(80, 24)
    ex.output(0.0, PROMPT)
    ex.input(0.1, b"cat big\r")  # never echoed: maybe a secret
    out: list[ExtractorEvent] = []
    for i in range(BUSY_BYTES // 4096 + 2):
        out += ex.output(0.2 + i * 1e-3, b"x" * 4095 + b"\n")
    assert ex._screen is None, "still emulating bulk output"
    out += ex.finish()
    assert commands(out) == []
    assert recorded(out) == b""


def test_exec_command() -> None:
    assert exec_command("uptime", 1.5) == Command(1.5, "uptime")


SPLITS = [
    ("ls", (["ls"], None)),
    ("a; b && c", (["a; b && c"], None)),
    ("echo one\necho two", (["echo one", "echo two"], None)),
    ("echo a \\", ([], "echo a \\")),
    ("echo a \\\nb", (["echo a \\\nb"], None)),
    ("echo 'x", ([], "echo 'x")),
    ("echo 'x\ny'", (["echo 'x\ny'"], None)),
    ('echo "a\\"b', ([], 'echo "a\\"b')),
    ("echo $'it\\'s'", (["echo $'it\\'s'"], None)),
    ("echo hi # don't", (["echo hi # don't"], None)),
    ("echo a#b 'c", ([], "echo a#b 'c")),
    ("ok\necho 'open", (["ok"], "echo 'open")),
]


@pytest.mark.parametrize(("text", "expected"), SPLITS, ids=[s[0] for s in SPLITS])
def test_split_command_lines(text: str, expected: tuple[list[str], str | None]) -> None:
    assert split_command_lines(text) == expected


SCROLL = b"".join(b"output line %d\r\n" % i for i in range(30))
VIM = (
    b"\x1b[?1049h\x1b[22;0;0t\x1b[1;24r\x1b[?12h\x1b[?25l\x1b[H\x1b[2J"
    b'~\r\n~\r\n~\x1b[24;1H"f" 0L, 0B\x1b[1;1H\x1b[?25h'
    b"\x1b[24;1H\x1b[?1049l\x1b[23;0;0t\r\x1b[?1l\x1b>"
)

# Re-engaging at a line's first key after the extractor dropped its screen:
# (name, output after the first command's prompt, keys, output while typing, expected).
# The first command (``true``) resolves and the screen is dropped before the
# second line's first key, so the second line is read off a replayed tail.
REENGAGE = [
    ("plain, after scrollback", b"", b"ls -l", None, ["true", "ls -l"]),
    (
        "prompt wrapped over more rows than the lines kept",
        b"\r\n" + b"p" * 400 + PROMPT,
        b"ls -l",
        None,
        ["true", "ls -l"],
    ),
    (
        "clear screen just before the prompt",
        b"\x1b[H\x1b[2J" + PROMPT,
        b"pwd",
        None,
        ["true", "pwd"],
    ),
    (
        "clear screen a few lines up",
        b"\x1b[H\x1b[2Ja\r\nb\r\n" + PROMPT,
        b"pwd",
        None,
        ["true", "pwd"],
    ),
    ("prompt with no newline before it", b"\r\nno newline" + PROMPT, b"id", None, ["true", "id"]),
    # (staying engaged read "echo okB": pyte has no alternate screen, so the
    # prompt was drawn over vim's status line; the replay starts at the exit)
    ("after vim exited", b"\r\n" + VIM + PROMPT, b"echo ok", None, ["true", "echo ok"]),
    # (a prompt drawn over old text without erasing it reads as drawn: both
    # the whole and the cut replay see the remnant, so the program erases)
    (
        "cursor addressing in the tail",
        b"\x1b[3;1H\x1b[2Kmoved\r\n\x1b[2K" + PROMPT,
        b"who",
        None,
        ["true", "who"],
    ),
    ("cursor up in the tail", b"\r\nbar\x1b[A\r\n\r\n" + PROMPT, b"who", None, ["true", "who"]),
    (
        "an escape sequence open when the key comes",
        b"\r\n" + PROMPT + b"\x1b[0",
        b"df",
        b"1;32m",
        ["true", "df"],
    ),
    ("OSC 133 marks", b"\x1b]133;A\x07" + PROMPT + b"\x1b]133;B\x07", b"ls", None, ["true", "ls"]),
    (
        "colour prompt",
        b"\x1b[01;32mu@h\x1b[00m:\x1b[01;34m~\x1b[00m$ ",
        b"ls",
        None,
        ["true", "ls"],
    ),
    ("password prompt", b"\r\n[sudo] password for al: ", b"hunter2", None, ["true"]),
]


def reengage(
    first_output: bytes, after: bytes, keys: bytes, mid: bytes | None
) -> tuple[CommandExtractor, list[ExtractorEvent]]:
    ex = CommandExtractor(80, 24)
    out: list[ExtractorEvent] = []
    t = 0.0
    steps = [("o", first_output + PROMPT), *typed(b"true"), ("i", b"\r"), ("o", b"\r\n" + PROMPT)]
    for direction, data in steps:
        t += 0.01
        out += ex.output(t, data) if direction == "o" else ex.input(t, data)
    if after:
        out += ex.output(t, after)
    assert ex._screen is None  # dropped: the next key re-engages
    for i, b in enumerate(keys):
        t += 0.01
        out += ex.input(t, bytes([b]))
        if i == 0 and mid:
            out += ex.output(t, mid)
        if not after.endswith(b"password for al: "):
            out += ex.output(t, bytes([b]))
    out += ex.input(t + 0.01, b"\r")
    out += ex.output(t + 0.02, b"\r\n" + PROMPT)
    out += ex.finish()
    return ex, out


@pytest.mark.parametrize("first", [b"", SCROLL], ids=["fresh", "scrollback"])
@pytest.mark.parametrize(
    ("after", "keys", "mid", "expected"), [r[1:] for r in REENGAGE], ids=[r[0] for r in REENGAGE]
)
def test_reengage(
    first: bytes, after: bytes, keys: bytes, mid: bytes | None, expected: list[str]
) -> None:
    _, events = reengage(first, after, keys, mid)
    assert commands(events) == expected
    if expected[-1] == "true":  # the password
        assert keys[:4] not in recorded(events)


def test_reengage_after_resize() -> None:
    ex = CommandExtractor(80, 24)
    out: list[ExtractorEvent] = []
    for direction, data in [
        ("o", SCROLL + PROMPT),
        *typed(b"true"),
        ("i", b"\r"),
        ("o", b"\r\n" + PROMPT),
    ]:
        out += ex.output(0, data) if direction == "o" else ex.input(0, data)
    ex.resize(20, 10)
    for direction, data in [
        *typed(b"echo a-rather-long-line"),
        ("i", b"\r"),
        ("o", b"\r\na\r\n" + PROMPT),
    ]:
        out += ex.output(1, data) if direction == "o" else ex.input(1, data)
    assert commands(out) == ["true", "echo a-rather-long-line"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast_lines", "emulator"])
def test_interactive_shell_holds_no_screen_between_lines(
    fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plain lines after a prompt read without the emulator never make one;
    # read with it, the screen is blanked and parked between lines.
    monkeypatch.setattr(CommandExtractor, "fast_lines", fast)
    ex = CommandExtractor(80, 24)
    steps = [("o", SCROLL + PROMPT)]
    for k in range(5):
        steps += [*typed(b"echo %d" % k), ("i", b"\r"), ("o", b"\r\n%d\r\n" % k + PROMPT)]
    out: list[ExtractorEvent] = []
    for direction, data in steps:
        out += ex.output(0, data) if direction == "o" else ex.input(0, data)
        if direction == "o" and data.endswith(PROMPT):
            assert ex._screen is None
            if data == SCROLL + PROMPT:
                continue  # (never engaged yet)
            parked = ex._parked
            if fast:
                assert parked is None  # no emulator was ever needed
            else:
                assert parked is not None and not parked[0].buffer  # blank, kept for the next line
    assert commands(out) == [f"echo {k}" for k in range(5)]
    ex.finish()
    assert ex._screen is None and ex._parked is None
