"""Recordings on disk: one cast per connection, fed from the relay.

PLACEHOLDER until the recorder package lands (see docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SessionRecording:
    cast_path: str | None = None

    @classmethod
    def start(cls, gateway: Any, live: Any) -> SessionRecording | None:
        return None

    def input(self, t: float, data: bytes) -> None: ...
    def output(self, t: float, data: bytes) -> None: ...
    def resize(self, t: float, cols: int, rows: int) -> None: ...
    def marker(self, t: float, text: str) -> None: ...
    def close(self, t: float, reason: Any) -> None: ...
    def redraw(self) -> bytes:
        return b""


def repair_casts(directory: Path) -> None:
    return None


def close_all_recordings() -> None:
    return None
