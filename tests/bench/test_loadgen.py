"""#5's tools on a small scale, for real: bench/loadgen.py's two fleets taking
turns against a real sshd, the "gateway" fleet through bench/tcp_relay.py.

A broken load generator or relay otherwise shows only in a 17-minute
``make bench``; here four sessions per fleet and one-second holds take ~10 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import procs
from harness.env import clean_env
from harness.net import free_port
from harness.sshd import TargetSshd

ROOT = Path(__file__).resolve().parents[2]


def _child(args: list[str], what: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**clean_env(), "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    procs.register(p.pid, what, p)  # type: ignore[arg-type]
    return p


def test_fleets_take_turns_through_the_relay(target_sshd: TargetSshd) -> None:
    port = free_port()
    relay = _child(
        [sys.executable, "-m", "bench.tcp_relay", str(port), str(target_sshd.port)], "tcp relay"
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
        key = str(target_sshd.client_key.private)
        # A session types every second, so a 1 s hold after 1.5 s of
        # settling sees keystrokes; two sessions per fleet stream.
        lg = _child(
            [
                *(sys.executable, "-m", "bench.loadgen", "--port", str(port), "--login", "root"),
                *("--key", key, "--direct-port", str(target_sshd.port), "--direct-key", key),
                *("--sessions", "4", "--per-conn", "2", "--stream-frac", "0.5", "--pairs", "2"),
                *("--hold", "1", "--settle", "1.5", "--type-every", "1", "--deadline", "120"),
            ],
            "load generator",
        )
        out, err = lg.communicate(timeout=150)
    finally:
        relay.terminate()
        relay.wait(10)
    assert lg.returncode == 0, err[-2000:]
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [(e["event"], e.get("arm")) for e in events if e["event"] != "progress"]
    holds = [("hold_start", arm) for arm in ("direct", "gateway", "direct", "gateway")]
    assert [k for k in kinds if k[0] == "hold_start"] == holds
    assert kinds[0] == ("ramped", "direct") and kinds[1] == ("ramped", "gateway")
    result = events[-1]
    assert result["event"] == "result"
    assert result["keystroke_timeouts"] == 0, result["command_errors"]
    for arm in ("direct", "gateway"):
        a = result["arms"][arm]
        assert a["opened"] == 4 and a["failed"] == 0, a["errors"]
        assert a["holds"] == 2
        assert a["echo_load"]["n"] > 0  # the typists' keystrokes were timed
    # Each hold had its fleet's streams running.
    for phase in result["phases"]:
        assert phase["stream_KBps_total"] > 0, phase
    assert result["closed_by_exit"] == 8  # every shell left with `exit`
