"""The percentile every benchmark reports, in one place: the load generator,
the wake-up measurement and ``bench.run`` all rank samples the same way."""

from __future__ import annotations


def pct(xs: list[float], p: float) -> float | None:
    """The ``p``-th percentile of ``xs`` (nearest rank), or None for no samples."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]
