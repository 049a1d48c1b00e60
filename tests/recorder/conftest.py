"""Make ``tests.cast_validator`` and ``tests.corpus`` importable however pytest
is started (the editable install maps only the product packages)."""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
