"""How fast this machine runs a fixed piece of Python right now.

The two cores of these machines are shared with other VMs on the host, and
in a busy hour the same work takes a third more CPU time: benchmark #5's
gateway went from 31-36% of a core to 43-47% with the same code and load,
and the direct arm's machine from 0.75 to 1.05 busy cores. Steal time does
not show it (it stays under 1%), so a reader of #5's figures could not tell
a slower gateway from a slower machine.

``speed_ms()`` times a fixed task (attribute and dict work over 20,000
objects spread over a few MB, like a relay's per-session state, plus a
SHA-256 of 256 KiB) in the calling thread's CPU time, not wall time: time
spent waiting for a CPU does not count, only how fast the CPU ran the task.
The median of a few short repetitions. What slows it: the host's
neighbours, and the caches the machine's own load keeps evicting (the task
is sized past the L2 cache on purpose, as the gateway's 1,000 sessions are).
``bench.run`` takes it with the machine idle before #5 and at the end of
every hold. Alone: ``python -m bench.cpuspeed``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
import time


class _Session:
    __slots__ = ("key", "n")

    def __init__(self, key: int) -> None:
        self.key = key
        self.n = 0


@functools.cache
def _state() -> tuple[list[_Session], dict[int, int], bytes]:
    sessions = [_Session((i * 7919) % 20_000) for i in range(20_000)]
    # interleave with other allocations so the objects are not contiguous
    spread: list[object] = []
    for s in sessions:
        spread.append(bytearray(96))
        spread.append(s)
    table = {i: i * 3 for i in range(20_000)}
    _state.spread = spread  # type: ignore[attr-defined]  # kept alive
    return sessions, table, bytes(range(256)) * 1024


def _task(sessions: list[_Session], table: dict[int, int], blob: bytes) -> int:
    total = 0
    for s in sessions:
        total += table[s.key] + s.n
        s.n = total & 0xFFFF
    return total + hashlib.sha256(blob).digest()[0]


def speed_ms(reps: int = 7) -> float:
    """Median thread CPU milliseconds of the fixed task over ``reps`` runs."""
    sessions, table, blob = _state()
    _task(sessions, table, blob)  # warm
    times = []
    for _ in range(reps):
        t0 = time.thread_time_ns()
        _task(sessions, table, blob)
        times.append((time.thread_time_ns() - t0) / 1e6)
    return statistics.median(times)


def main() -> None:
    print(json.dumps({"cpu_speed_ms": round(speed_ms(), 3)}))


if __name__ == "__main__":
    main()
