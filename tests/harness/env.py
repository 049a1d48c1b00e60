"""A clean environment for every process the harness runs.

This machine's root dotfiles run ``pyenv init``, which is slow and once left a
lock that hung every bash for a minute; an agent socket would let ``ssh`` offer
keys a test never chose. So harness processes get a small explicit environment
and a throwaway HOME, never the caller's.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_home: Path | None = None

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_home() -> Path:
    """One empty HOME per test process, removed at exit."""
    global _home
    if _home is None:
        _home = Path(tempfile.mkdtemp(prefix="shellgate-home-"))
        atexit.register(shutil.rmtree, _home, True)
    return _home


def clean_env(**overrides: str) -> dict[str, str]:
    """PATH, HOME, LANG and nothing else (no SSH_AUTH_SOCK, no TERM), plus ``overrides``."""
    env = {
        "PATH": os.environ.get("PATH", DEFAULT_PATH),
        "HOME": str(clean_home()),
        "LANG": "C.UTF-8",
        "SHELL": "/bin/sh",
    }
    env.update(overrides)
    return env
