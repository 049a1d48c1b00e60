"""The benchmark's own arithmetic: how #6's verdict is read from the runs.

``make bench`` is not part of ``make test``; these tables check that the
verdict it prints follows the figures (a verdict that could not say NO would
be a defect of the benchmark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.run import FULL, Rig, _throughput_summary, per_second, recording_overhead, rotated


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
            "pty_throughput": {"default": _throughput(default, [97.0] * 5, [100.0] * 5)},
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
    assert spread["pty throughput"] == pytest.approx(100 / default[0] - 1)
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
    rig = _rig({"pty_throughput": {"default": {"default": {"ratio": 1.0}}}})
    recording_overhead(rig)
    assert rig.rows == []


def test_each_arm_goes_first_once_per_cycle() -> None:
    names = ["direct", "default", "rec_off"]
    firsts = [rotated(names, i)[0] for i in range(6)]
    assert firsts == names * 2
    assert all(sorted(rotated(names, i)) == sorted(names) for i in range(6))


def test_per_second_leaves_out_counters_missing_from_either_sample() -> None:
    before = {"user_s": 10.0, "runnable_wait_s": 1.0}
    after = {"user_s": 12.0, "sys_s": 5.0}
    assert per_second(before, after, 4.0) == {"user_s": 0.5}
