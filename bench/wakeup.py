"""What waking a task on another CPU costs here: ``python -m bench.wakeup``.

Two processes on two different CPUs pass one byte back and forth over pipes
and the round trip is timed three ways: blocking in ``read`` with a pause
between rounds (each side's CPU has gone idle, so every hop wakes an idle
CPU, as a relay hop at a keystroke's pace does); the same with both
processes on one CPU (two context switches, no CPU to wake); and polling
(``O_NONBLOCK`` reads in a loop: no CPU ever sleeps). Blocking across CPUs
minus the same on one CPU is the price of waking an idle CPU twice.

Where an idle CPU wakes quickly, the blocking round trip across CPUs is
close to the one-CPU figure. On a VM whose idle vCPUs halt without polling
first (``haltpoll.guest_halt_poll_ns=0`` on this project's machines), each
wake-up of a halted vCPU is a trip through the hypervisor: there the
blocking round trip measured 70-90 us against 14-20 us on one CPU and 3 us
polling. Every process on a keystroke's path pays it, and the gateway adds
two hops (four wake-ups) to the direct path's. ``bench.run`` prints the figures with the machine.

Prints one JSON object: medians (and a 90th percentile) in microseconds,
the two CPUs used, and the idle driver (``/sys/devices/system/cpu/cpuidle``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from bench.stats import pct


def _read1(fd: int, poll: bool) -> bytes:
    if not poll:
        return os.read(fd, 1)
    while True:
        try:
            return os.read(fd, 1)
        except BlockingIOError:
            pass


def _echo(fd_in: int, fd_out: int, cpu: int, poll: bool) -> None:
    """The child: send back every byte until the parent's end closes."""
    os.sched_setaffinity(0, {cpu})
    while True:
        b = _read1(fd_in, poll)
        if not b or b == b"q":
            return
        os.write(fd_out, b)


def round_trips(a: int, b: int, *, poll: bool, rounds: int, pause: float) -> list[float]:
    """Microseconds per round trip between CPU ``a`` (here) and ``b`` (a child)."""
    r1, w1 = os.pipe()  # parent -> child
    r2, w2 = os.pipe()  # child -> parent
    for fd in (r1, r2):
        os.set_blocking(fd, not poll)
    pid = os.fork()
    if pid == 0:  # the child: if the parent dies, its read sees the end of file
        try:
            os.close(w1)
            os.close(r2)
            _echo(r1, w2, b, poll)
        finally:
            os._exit(0)
    os.close(r1)
    os.close(w2)
    mask = os.sched_getaffinity(0)
    times: list[float] = []
    try:
        os.sched_setaffinity(0, {a})
        for i in range(rounds + 10):  # the first ten warm up
            if pause:
                time.sleep(pause)
            t = time.perf_counter()
            os.write(w1, b"x")
            _read1(r2, poll)
            if i >= 10:
                times.append((time.perf_counter() - t) * 1e6)
        os.write(w1, b"q")
    finally:
        os.sched_setaffinity(0, mask)
        os.close(w1)
        os.close(r2)
        os.waitpid(pid, 0)
    return times


def _pct(xs: list[float], p: float) -> float:
    v = pct(xs, p)
    assert v is not None  # every measurement has its rounds
    return round(v, 1)


def _idle_driver() -> str | None:
    try:
        return Path("/sys/devices/system/cpu/cpuidle/current_driver").read_text().strip()
    except OSError:
        return None


def measure(rounds: int = 300) -> dict[str, object]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"error": "one CPU: nothing to wake across"}
    a, b = cpus[0], cpus[1]
    blocking = round_trips(a, b, poll=False, rounds=rounds, pause=0.001)
    same_cpu = round_trips(a, a, poll=False, rounds=rounds, pause=0.001)
    polling = round_trips(a, b, poll=True, rounds=rounds, pause=0.0)
    return {
        "cpus": [a, b],
        "blocking_p50_us": _pct(blocking, 50),
        "blocking_p90_us": _pct(blocking, 90),
        "same_cpu_blocking_p50_us": _pct(same_cpu, 50),
        "polling_p50_us": _pct(polling, 50),
        "polling_p90_us": _pct(polling, 90),
        "cpuidle_driver": _idle_driver(),
    }


if __name__ == "__main__":
    json.dump(measure(), sys.stdout)
    sys.stdout.write("\n")
