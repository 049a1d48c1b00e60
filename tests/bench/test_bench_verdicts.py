"""The benchmark's own arithmetic: how #6's verdict is read from the runs.

``make bench`` is not part of ``make test``; these tables check that the
verdict it prints follows the figures (a verdict that could not say NO would
be a defect of the benchmark)."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import procs

from bench.run import (
    FULL,
    ONE_CPU,
    Rig,
    _conc_report,
    _throughput_summary,
    balanced,
    one_cpu,
    per_second,
    recording_overhead,
    rotated,
)


def _rig(results: dict[str, object]) -> Rig:
    rig = Rig(Path("/nonexistent"), FULL, None, {}, Path("t"), Path("b"))  # type: ignore[arg-type]
    rig.results.update(results)
    return rig


def _throughput(default: list[float], output_only: list[float], rec_off: list[float]) -> dict:
    arms = {
        "direct": [100.0] * len(rec_off),
        "default": default,
        "output_only": output_only,
        "rec_off": rec_off,
    }
    cpu = {v: [1.0] * len(rec_off) for v in ("default", "output_only", "rec_off")}
    return _throughput_summary(arms, cpu, 1e9, 10**9)


def test_round_ratios_cancel_drift_that_moves_all_arms() -> None:
    # The machine halves its speed half-way: every arm of a round moves alike.
    res = _throughput([50, 50, 25, 25, 25], [49, 50, 24, 25, 25], [50, 51, 25, 25, 24])
    assert res["rec_off"]["vs_rec_off"] == 1.0
    assert res["default"]["vs_rec_off"] == 1.0
    assert res["output_only"]["vs_rec_off"] == pytest.approx(0.98, abs=0.005)


@pytest.mark.parametrize(
    ("default", "ok"),
    [([95.0] * 5, True), ([85.0] * 5, False)],
)
def test_recording_overhead_verdict(default: list[float], ok: bool) -> None:
    rig = _rig(
        {
            "pty_throughput": {ONE_CPU: _throughput(default, [97.0] * 5, [100.0] * 5)},
            "echo_latency": {
                "rec_off": {"p50_us": 400.0, "p99_us": 600.0},
                "output_only": {"p50_us": 410.0, "p99_us": 610.0},
                "default": {"p50_us": 420.0, "p99_us": 620.0},
            },
        }
    )
    recording_overhead(rig)
    (row,) = rig.rows
    assert row["n"] == "6" and row["ok"] is ok
    spread = rig.results["recording_overhead"]["spread"]
    assert spread["pty (one CPU) throughput"] == pytest.approx(100 / default[0] - 1)
    assert spread["echo p50"] == pytest.approx(0.05)


def test_echo_alone_can_fail_the_verdict() -> None:
    rig = _rig(
        {
            "echo_latency": {
                "rec_off": {"p50_us": 400.0, "p99_us": 600.0},
                "output_only": {"p50_us": 410.0, "p99_us": 900.0},
                "default": {"p50_us": 420.0, "p99_us": 620.0},
            }
        }
    )
    recording_overhead(rig)
    assert rig.rows[0]["ok"] is False


def test_no_variants_measured_no_row() -> None:
    rig = _rig({"pty_throughput": {ONE_CPU: {"default": {"ratio": 1.0}}}})
    recording_overhead(rig)
    assert rig.rows == []


def test_each_arm_goes_first_once_per_cycle() -> None:
    names = ["direct", "default", "rec_off"]
    firsts = [rotated(names, i)[0] for i in range(6)]
    assert firsts == names * 2
    assert all(sorted(rotated(names, i)) == sorted(names) for i in range(6))


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_balanced_order_puts_every_arm_after_every_other_equally(n: int) -> None:
    """#3's keys go to the arms in this order: over a cycle every arm takes
    every place, and every arm comes right after every other one, equally
    often (with ``rotated``, one gateway always came right after direct)."""
    names = [f"arm{k}" for k in range(n)]
    cycle = n if n % 2 == 0 else 2 * n
    places: dict[tuple[str, int], int] = {}
    after: dict[tuple[str, str], int] = {}
    for i in range(cycle):
        order = balanced(names, i)
        assert sorted(order) == names
        assert order == balanced(names, i + cycle)
        for k, a in enumerate(order):
            places[a, k] = places.get((a, k), 0) + 1
        for a, b in itertools.pairwise(order):
            after[a, b] = after.get((a, b), 0) + 1
    assert len(places) == n * n and len(set(places.values())) == 1
    assert len(after) == n * (n - 1) and len(set(after.values())) == 1


def test_per_second_leaves_out_counters_missing_from_either_sample() -> None:
    before = {"user_s": 10.0, "runnable_wait_s": 1.0}
    after = {"user_s": 12.0, "sys_s": 5.0}
    assert per_second(before, after, 4.0) == {"user_s": 0.5}


def _echo(p50: float, p99: float, n: int = 1000) -> dict:
    return {"n": n, "p50_ms": p50, "p90_ms": p99, "p99_ms": p99, "max_ms": p99}


def _concurrency(
    tmp_path: Path, gw_p99: float, hold_p99s: list[float], *, opened: int = 1000
) -> Rig:
    holds = {
        "direct": [{"pair": i, "echo": _echo(1.0, 4.0)} for i in range(len(hold_p99s))],
        "gateway": [{"pair": i, "echo": _echo(2.0, p)} for i, p in enumerate(hold_p99s)],
    }
    res = {
        "sessions": 1000,
        "pairs": 5,
        "hold_s": 20.0,
        "holds": holds,
        "rss_per_session_kib": 40.0,
        "casts_expected": opened + 1,
        "target_connections_at_load": 101,
        "gw_cpu_share_of_one_core": 0.5,
        "cast_check": {"casts": opened + 1, "complete": opened + 1, "bad": []},
        "loadgen": {
            "sessions": 1000,
            "streamers": 100,
            "client_connections": 100,
            "opened": opened,
            "keystroke_timeouts": 0,
            "echo_load": _echo(2.0, gw_p99),
            "arms": {"direct": {"opened": 1000, "echo_load": _echo(1.0, 4.0)}},
        },
    }
    rig = _rig({})
    rig.results_dir = tmp_path
    _conc_report(rig, res)
    return rig


@pytest.mark.parametrize(
    ("gw_p99", "hold_p99s", "ok"),
    [
        (15.0, [12.0, 14.0, 15.0, 16.0, 13.0], True),
        # One bad hold: its tail is in the pooled p99, which decides.
        (26.0, [12.0, 14.0, 15.0, 90.0, 13.0], False),
    ],
)
def test_concurrency_verdict_is_the_pooled_p99(
    tmp_path: Path, gw_p99: float, hold_p99s: list[float], ok: bool
) -> None:
    rig = _concurrency(tmp_path, gw_p99, hold_p99s)
    (row,) = rig.rows
    assert row["ok"] is ok
    assert rig.results["concurrency"]["echo_p99_added_ms"] == pytest.approx(gw_p99 - 4.0)
    assert rig.results["concurrency"]["hold_p99_ms"]["gateway"] == hold_p99s
    assert (tmp_path / "concurrency.json").exists()


def test_concurrency_fails_when_a_hold_or_a_session_is_missing(tmp_path: Path) -> None:
    rig = _concurrency(tmp_path, 10.0, [10.0, 10.0, 10.0, 10.0])  # 4 of 5 holds ran
    assert rig.rows[0]["ok"] is False
    assert rig.results["concurrency"]["goals"]["all_succeed"] is False
    rig = _concurrency(tmp_path, 10.0, [10.0] * 5, opened=999)
    assert rig.results["concurrency"]["goals"]["all_succeed"] is False


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_one_cpu_pins_the_whole_pipeline_and_puts_it_back() -> None:
    """#6's pty rows rely on every process of the pipeline sharing one CPU:
    this process, each gateway, sshd and what sshd forks later."""
    before = os.sched_getaffinity(0)
    started = []
    try:
        for args in (["sleep", "30"], ["sh", "-c", "sleep 30 & wait"]):
            p = subprocess.Popen(args, start_new_session=True)
            started.append(procs.register(p.pid, "one_cpu test", p))  # type: ignore[arg-type]
        gw, sshd = (t.pid for t in started)
        time.sleep(0.2)  # sh has forked its sleep
        rig = _rig({})
        rig.gateways = {"default": SimpleNamespace(popen=SimpleNamespace(pid=gw))}  # type: ignore[dict-item]
        rig.sshd = SimpleNamespace(pid=sshd)  # type: ignore[assignment]
        with one_cpu(rig) as cpu:
            pids = [os.getpid(), gw, sshd, *procs.descendants(sshd)]
            assert len(pids) == 4
            assert all(os.sched_getaffinity(p) == {cpu} for p in pids)
            later = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True)
            allowed = [ln for ln in later.stdout.splitlines() if ln.startswith("Cpus_allowed_list")]
            assert allowed == [f"Cpus_allowed_list:\t{cpu}"]
        assert [os.sched_getaffinity(p) for p in pids] == [before] * 4
    finally:
        for t in started:
            procs.kill(t)
