"""bench/cpu_account.py, the launcher behind ``bench.run --attribute``: what it
wraps still exists, and a wrapped call is counted in CPU time, not wall time."""

from __future__ import annotations

import importlib
import threading
import time

from bench.cpu_account import ACCOUNTED, Accounts, thread_cpu


def test_every_accounted_call_exists() -> None:
    # A rename in the gateway or the recorder must fail here, not in a bench run.
    for module, cls_name, name in ACCOUNTED:
        cls = getattr(importlib.import_module(module), cls_name)
        assert callable(getattr(cls, name)), (module, cls_name, name)


class _Work:
    def spin(self, seconds: float) -> int:
        end = time.thread_time() + seconds
        n = 0
        while time.thread_time() < end:
            n += 1
        return n

    def nap(self, seconds: float) -> str:
        time.sleep(seconds)
        return "rested"


def test_wrapped_calls_count_cpu_not_sleep() -> None:
    accounts = Accounts()
    accounts.wrap(_Work, "spin")
    accounts.wrap(_Work, "nap")
    accounts.reset()
    w = _Work()
    assert w.spin(0.05) > 0  # the wrapper passes results through
    assert w.nap(0.2) == "rested"
    assert w.nap(0.0) == "rested"
    window = accounts.window()
    calls = window["calls"]
    spin, nap = calls["_Work.spin"], calls["_Work.nap"]
    assert spin["us_per_call"] >= 45_000  # 50 ms of CPU, counted
    assert nap["us_per_call"] < 20_000  # 200 ms asleep, not counted
    assert spin["calls_per_s"] > 0 and nap["calls_per_s"] > spin["calls_per_s"]
    assert window["wall_s"] >= 0.25
    # A new window starts from zero.
    accounts.reset()
    assert accounts.window()["calls"]["_Work.spin"]["us_per_call"] is None


def test_thread_cpu_names_each_thread() -> None:
    done = threading.Event()
    t = threading.Thread(target=done.wait, name="acct-probe")
    t.start()
    try:
        threads = thread_cpu()
    finally:
        done.set()
        t.join()
    assert len(threads) >= 2
    assert all(v >= 0 for v in threads.values())
