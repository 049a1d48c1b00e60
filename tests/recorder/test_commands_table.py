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
