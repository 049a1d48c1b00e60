"""Durations as the config writes them: ``90``, ``"90s"``, ``"15m"``, ``"1h30m"``; 0 disables."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value: object) -> float:
    """Seconds for a config duration. Raises ValueError with a reason a user can act on."""
    if isinstance(value, bool):
        raise ValueError('expected a duration like 90, "90s", "15m" or "1h30m"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError('expected a duration like 90, "90s", "15m" or "1h30m"')
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f'not a duration: {value!r} (use seconds or units s m h d, e.g. "1h30m")')
    return total


def format_duration(seconds: float) -> str:
    """The shortest config-style text for a number of seconds (``0`` for disabled)."""
    if seconds <= 0:
        return "0"
    out, rest = [], int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or f"{seconds}s"
