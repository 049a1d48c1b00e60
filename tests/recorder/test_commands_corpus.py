"""Replay every captured session in tests/corpus through CommandExtractor.

Two kinds of capture (``tests/corpus/capture.py``): ``"via": "sshd"`` cases
(``sshd-<shell>-<behaviour>.json``) are real sessions through a real OpenSSH
sshd, typed into the real ``ssh -tt`` client's pty; ``"via": "pty"`` cases are
the shell directly in a pty. Both are replayed here.

The extractor must find exactly the commands each case expects (100% precision
and recall), and no secret typed at a no-echo prompt may appear in a command or
in the input it releases as recordable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from recorder.commands import Command, CommandExtractor, ExtractorEvent, RecordableInput

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES = sorted(CORPUS.glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def chunks(case: dict, byte_at_a_time: bool = False) -> Iterator[tuple[float, str, bytes]]:
    for t, direction, text in case["events"]:
        data = text.encode("latin-1")
        if byte_at_a_time:
            for i in range(len(data)):
                yield t, direction, data[i : i + 1]
        else:
            yield t, direction, data


def replay(case: dict, byte_at_a_time: bool = False) -> list[ExtractorEvent]:
    ex = CommandExtractor(case["cols"], case["rows"])
    events: list[ExtractorEvent] = []
    for t, direction, data in chunks(case, byte_at_a_time):
        if direction == "o":
            events += ex.output(t, data)
        else:
            events += ex.input(t, data)
    events += ex.finish()
    return events


def commands(events: list[ExtractorEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Command)]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_corpus_case(path: Path) -> None:
    case = load(path)
    events = replay(case)
    assert commands(events) == case["expected"]
    recorded = b"".join(e.data for e in events if isinstance(e, RecordableInput))
    for secret in case["secrets"]:
        assert secret not in "\n".join(commands(events))
        assert secret.encode() not in recorded
        # and no fragment long enough to matter either
        assert secret.encode()[:4] not in recorded


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_corpus_byte_at_a_time(path: Path) -> None:
    case = load(path)
    assert commands(replay(case, byte_at_a_time=True)) == case["expected"]


# One sshd capture per editing behaviour the issue names, for bash at least.
SSHD_BASH_BEHAVIOURS = [
    "backspace_del",
    "backspace_ctrl_h",
    "ctrl_u",
    "ctrl_w",
    "ctrl_k",
    "ctrl_a_ctrl_e",
    "arrows_insert",
    "home_end",
    "history",
    "reverse_search",
    "tab_completion",
    "bracketed_paste",
    "bracketed_paste_multiline",
    "backslash_continuation",
    "open_quote",
    "long_line_wrap",
    "ctrl_c",
    "type_ahead",
    "chains",
    "password_read_s",
    "vim",
    "less",
]


def test_corpus_files_are_well_formed() -> None:
    for path in CASES:
        case = load(path)
        assert case["name"] == path.stem
        assert case["via"] in ("pty", "sshd"), path.name
        assert path.stem.startswith("sshd-") == (case["via"] == "sshd"), path.name
        assert {d for _, d, _ in case["events"]} <= {"i", "o"}


@pytest.mark.parametrize("behaviour", SSHD_BASH_BEHAVIOURS)
def test_sshd_capture_exists(behaviour: str) -> None:
    """The corpus the issue asks for: real sessions through a real sshd."""
    path = CORPUS / f"sshd-bash-{behaviour}.json"
    assert path.exists(), f"missing {path.name}: run tests/corpus/capture.py --via sshd"
    case = load(path)
    assert case["via"] == "sshd" and case["shell"] == "bash"
    assert any(d == "i" for _, d, _ in case["events"])


def test_corpus_score() -> None:
    """Precision and recall over the whole corpus, for the record."""
    found = expected = correct = 0
    for path in CASES:
        case = load(path)
        got = commands(replay(case))
        found += len(got)
        expected += len(case["expected"])
        remaining = list(case["expected"])
        for cmd in got:
            if cmd in remaining:
                remaining.remove(cmd)
                correct += 1
    assert CASES, "the corpus is empty"
    assert (correct / found if found else 1.0, correct / expected) == (1.0, 1.0)


def test_echoed_input_is_released_in_order() -> None:
    case = load(CORPUS / "simple.json")
    events = replay(case)
    recorded = b"".join(e.data for e in events if isinstance(e, RecordableInput))
    typed = b"".join(d for _, direction, d in chunks(case) if direction == "i")
    assert recorded == typed


SCROLLBACK = "".join(f"earlier output {i}\r\n" for i in range(30))
"""Output before a session, as in a long-lived shell: the extractor then
re-engages from the tail's last lines (``engage_replay``), not all of it."""


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_corpus_after_scrollback(path: Path) -> None:
    case = load(path)
    case["events"] = [[0.0, "o", SCROLLBACK], *case["events"]]
    events = replay(case)
    assert commands(events) == case["expected"]
    recorded = b"".join(e.data for e in events if isinstance(e, RecordableInput))
    for secret in case["secrets"]:
        assert secret.encode()[:4] not in recorded


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_short_echo_path_changes_nothing(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``output``'s short path for a typed key's echo gives exactly the
    events (commands, recordable input, their times) of the general path,
    in whole reads and byte at a time."""
    case = load(path)
    short = [replay(case), replay(case, byte_at_a_time=True)]
    monkeypatch.setattr(CommandExtractor, "short_echo", False)
    assert [replay(case), replay(case, byte_at_a_time=True)] == short


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_fast_lines_change_nothing(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain lines read without the emulator (``fast_lines``) give exactly
    the events (commands, recordable input, their times) of the emulator's
    reading: whole reads, byte at a time, and after scrollback (where the
    tail's replay is cut and the fast path starts)."""
    case = load(path)
    scrolled = {**case, "events": [[0.0, "o", SCROLLBACK], *case["events"]]}
    runs = lambda: [  # noqa: E731
        replay(case),
        replay(case, byte_at_a_time=True),
        replay(scrolled),
        replay(scrolled, byte_at_a_time=True),
    ]
    fast = runs()
    monkeypatch.setattr(CommandExtractor, "fast_lines", False)
    assert runs() == fast
