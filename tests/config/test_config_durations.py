"""Durations as the config writes them, as a table: text in, seconds out."""

from __future__ import annotations

import pytest

from config import format_duration, parse_duration

GOOD = [
    ("90", 90.0),
    (90, 90.0),
    (90.5, 90.5),
    ("90s", 90.0),
    ("15m", 900.0),
    ("1h30m", 5400.0),
    ("1h30m15s", 5415.0),
    ("2d", 172800.0),
    ("1.5h", 5400.0),
    (" 15M ", 900.0),
    ("0", 0.0),
    (0, 0.0),
    ("0s", 0.0),
]

BAD = [
    "",
    "   ",
    "abc",
    "15x",
    "m",
    "h1",
    "1h 30m",
    "15m3",
    "-5",
    "-5m",
    -5,
    True,
    None,
    [15],
]


@pytest.mark.parametrize(("text", "seconds"), GOOD)
def test_parses(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", BAD, ids=repr)
def test_refuses(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(text)


def test_refusal_says_what_to_write() -> None:
    with pytest.raises(ValueError, match=r"not a duration: '15x' \(use seconds or units s m h d"):
        parse_duration("15x")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0"),
        (-1, "0"),
        (90, "1m30s"),
        (900, "15m"),
        (5400, "1h30m"),
        (86400, "1d"),
        (0.5, "0.5s"),
    ],
)
def test_formats(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [1, 59, 60, 61, 3599, 3600, 5415, 86400, 90061])
def test_format_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
