"""Record factories shared by the store tests (a plain module: tests/ is not a package)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A fixed time: T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def who(user: str = "alice", target: str = "web1", **extra: Any) -> dict[str, Any]:
    """The fields every connection event carries."""
    return {
        "user": user,
        "target": target,
        "target_user": "deploy",
        "client_addr": "192.0.2.7:50522",
        **extra,
    }
