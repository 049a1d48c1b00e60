"""The recorder as the gateway wires it: every corpus session through the cast
writer (redacted input from the extractor's decisions), the extractor and the
screen model. The cast is strictly valid, the real player reads it, and no
secret typed at a no-echo prompt is anywhere in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recorder.cast import CastWriter
from recorder.commands import Command, CommandExtractor, RecordableInput
from recorder.screen import ScreenModel
from tests.cast_validator import validate_cast

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES = sorted(CORPUS.glob("*.json"))
ASCIINEMA = Path(sys.executable).with_name("asciinema")


def record(case: dict) -> tuple[bytes, list[Command], ScreenModel]:
    cols, rows = case["cols"], case["rows"]
    cast = CastWriter(
        cols,
        rows,
        1_700_000_000,
        env={"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        title="alice -> root@web1",
        input_mode="redacted",
    )
    ex = CommandExtractor(cols, rows)
    screen = ScreenModel(cols, rows)
    out = cast.header()
    commands: list[Command] = []
    last_take = 0.0
    t = 0.0
    for t, direction, text in case["events"]:
        data = text.encode("latin-1")
        if direction == "o":
            cast.output(t, data)
            screen.feed(data)
            events = ex.output(t, data)
        else:
            events = ex.input(t, data)
        for e in events:
            if isinstance(e, RecordableInput):
                cast.input(e.time, e.data)
            else:
                commands.append(e)
        if t - last_take >= 1.0:  # the gateway's once-a-second flush
            out += cast.take()
            last_take = t
    for e in ex.finish():
        if isinstance(e, RecordableInput):
            cast.input(e.time, e.data)
        else:
            commands.append(e)
    cast.marker(t, "closed: client_exit")
    out += cast.finish(t)
    return out, commands, screen


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_cast_is_valid_and_redacted(path: Path) -> None:
    case = json.loads(path.read_text())
    raw, commands, _ = record(case)
    header, events = validate_cast(raw)
    assert header["title"] == "alice -> root@web1"
    assert [c.text for c in commands] == case["expected"]
    output = "".join(d for _, code, d in events if code == "o")
    typed_out = b"".join(t.encode("latin-1") for _, k, t in case["events"] if k == "o")
    assert output == typed_out.decode("utf-8", errors="replace")
    for secret in case["secrets"]:
        assert secret.encode() not in raw
    if not case["secrets"]:
        # Everything typed was echoed (or typed in a full-screen program).
        typed = "".join(t for _, k, t in case["events"] if k == "i")
        recorded = "".join(d for _, code, d in events if code == "i")
        assert recorded.encode("utf-8") == typed.encode("latin-1")


def test_asciinema_cat_plays_a_vim_session(tmp_path: Path) -> None:
    raw, _, screen = record(json.loads((CORPUS / "vim.json").read_text()))
    path = tmp_path / "vim.cast"
    path.write_bytes(raw)
    res = subprocess.run(
        [str(ASCIINEMA), "cat", str(path)], capture_output=True, timeout=30, check=True
    )
    assert b"hello from vim" in res.stdout
    assert "hello from vim" in "\n".join(screen.text())
