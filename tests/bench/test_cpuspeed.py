"""bench/cpuspeed.py, the fixed task whose CPU time tells a busy host from a
slower gateway in #5's report, and how ``bench.run`` words it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.cpuspeed import speed_ms
from bench.run import _speed_text

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_prints_the_figure() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bench.cpuspeed"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cpu_speed_ms"] > 0


def test_the_figure_is_thread_cpu_time_of_the_task() -> None:
    # the task does real work: at least a few hundred microseconds of CPU
    assert speed_ms(reps=3) > 0.1


def test_the_report_gives_each_arm_against_the_idle_machine() -> None:
    res = {"cpu_speed_idle_ms": 2.0, "cpu_speed_ms": {"direct": [2.0, 2.4], "gateway": [3.0, 4.0]}}
    text = _speed_text(res)
    assert "direct holds 1.00-1.20x" in text
    assert "gateway holds 1.50-2.00x" in text
    assert _speed_text({"cpu_speed_ms": {"gateway": [3.0]}}) == ""  # no idle figure: nothing
