"""bench/wakeup.py, the machine's wake-up cost that ``bench.run`` prints: the
echo child really runs on the other CPU, answers every byte, is reaped, and the
caller's CPU mask is given back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.run import wakeup_cost
from bench.wakeup import round_trips

CPUS = sorted(os.sched_getaffinity(0))

needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")


def _children() -> set[int]:
    me = os.getpid()
    found = set()
    for task in os.listdir(f"/proc/{me}/task"):
        try:
            found |= {int(p) for p in Path(f"/proc/{me}/task/{task}/children").read_text().split()}
        except OSError:
            pass
    return found


@needs_two
@pytest.mark.parametrize("poll", [False, True])
def test_every_round_trip_is_answered_and_the_child_reaped(poll: bool) -> None:
    before = os.sched_getaffinity(0)
    children = _children()
    times = round_trips(CPUS[0], CPUS[1], poll=poll, rounds=20, pause=0.0005 if not poll else 0.0)
    assert len(times) == 20 and all(t > 0 for t in times)
    assert os.sched_getaffinity(0) == before
    assert _children() == children  # no echo child left behind, not even a zombie


@needs_two
def test_the_command_prints_its_figures() -> None:
    figures = wakeup_cost()  # bench.run's call: ``python -m bench.wakeup``
    assert figures is not None
    assert figures["cpus"] == CPUS[:2]
    for key in ("blocking_p50_us", "same_cpu_blocking_p50_us", "polling_p50_us"):
        assert figures[key] > 0
