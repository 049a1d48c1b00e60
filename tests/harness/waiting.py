"""Polling and scratch filesystems shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def poll(what: Callable[[], Any], timeout: float = 10.0, message: str = "") -> Any:
    """Call ``what`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message or what}")
        time.sleep(0.1)
    return value


async def poll_async(
    what: Callable[[], Any], timeout: float = 15.0, message: str = "", interval: float = 0.2
) -> Any:
    """``poll`` for tests whose own event loop must keep running meanwhile."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message or what}")
        await asyncio.sleep(interval)
    return value


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """``path`` on a tmpfs of ``size`` (to fill it: disk-full drills); skips the
    test where mounting is not allowed; always unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
