"""A strict asciicast validator shared by every test that produces a cast.

``validate_cast`` asserts what DESIGN.md promises about a recording: valid
UTF-8, JSON Lines with no blank lines, a header with the required fields, and
events that are ``[float, code, str]`` with known codes and times that never
decrease. It returns the header and the events with *absolute* times (v3
intervals are summed), so tests can assert on content.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

EVENT_CODES = frozenset("oirm")
V3_EVENT_CODES = frozenset("oirmx")


def validate_cast(
    cast: bytes | str | os.PathLike[str],
) -> tuple[dict[str, Any], list[tuple[float, str, str]]]:
    """Validate a whole cast (a path, or the file's bytes); return
    ``(header, [(time, code, data), ...])``. Fails with AssertionError."""
    raw = cast if isinstance(cast, bytes) else Path(cast).read_bytes()
    text = raw.decode("utf-8")  # strict: a cast is always valid UTF-8
    assert text, "empty cast"
    assert text.endswith("\n"), "last line not terminated"
    lines = text[:-1].split("\n")
    for n, line in enumerate(lines, 1):
        assert line.strip(), f"blank line {n}"
    header = json.loads(lines[0])
    assert isinstance(header, dict), "header is not an object"
    version = header.get("version")
    assert version in (2, 3), f"bad version {version!r}"
    assert isinstance(header.get("timestamp"), int), "timestamp missing or not an int"
    if version == 2:
        for key in ("width", "height"):
            assert isinstance(header.get(key), int) and header[key] > 0, f"bad {key}"
        codes = EVENT_CODES
    else:
        term = header.get("term")
        assert isinstance(term, dict), "v3 header without term"
        for key in ("cols", "rows"):
            assert isinstance(term.get(key), int) and term[key] > 0, f"bad term.{key}"
        codes = V3_EVENT_CODES
    if "env" in header:
        assert isinstance(header["env"], dict), "env is not an object"
        assert all(isinstance(v, str) for v in header["env"].values()), "env value not str"
    events: list[tuple[float, str, str]] = []
    clock = 0.0
    for n, line in enumerate(lines[1:], 2):
        event = json.loads(line)
        assert isinstance(event, list) and len(event) == 3, f"line {n}: not [t, code, data]"
        t, code, data = event
        assert isinstance(t, float), f"line {n}: time {t!r} is not a float"
        assert code in codes, f"line {n}: unknown code {code!r}"
        assert isinstance(data, str), f"line {n}: data is not a string"
        if version == 2:
            assert t >= clock, f"line {n}: time {t} < previous {clock}"
            clock = t
        else:
            assert t >= 0, f"line {n}: negative interval {t}"
            clock += t
        if code == "r":
            cols, _, rows = data.partition("x")
            assert cols.isdigit() and rows.isdigit(), f"line {n}: bad resize {data!r}"
        events.append((clock, code, data))
    return header, events
