"""``make bench`` stopped by Ctrl-C: every process it started goes with it,
also when the user presses Ctrl-C again while it cleans up."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import procs
from harness.env import clean_env

ROOT = Path(__file__).resolve().parents[2]


def _gateway_started(pid: int) -> bool:
    for p in procs.descendants(pid):
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if b"gateway.cli" in cmdline:
            return True
    return False


def test_repeated_ctrl_c_still_cleans_up_every_process(tmp_path: Path) -> None:
    err = open(tmp_path / "stderr", "wb")  # noqa: SIM115 (closed below)
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "setup"],
        cwd=ROOT,
        env={**clean_env(), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
    )
    tracked = procs.register(bench.pid, "bench under test", bench)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 60
        while not _gateway_started(bench.pid):
            assert bench.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
            assert time.monotonic() < deadline, "the bench started no gateway in 60 s"
            time.sleep(0.1)
        time.sleep(1.0)  # the setup benchmark is under way: ssh clients, sshd sessions
        started = {p: procs.start_time(p) for p in procs.descendants(bench.pid)}
        assert len(started) >= 2  # at least sshd and the gateway
        # Ctrl-C, then more of them all through the clean-up.
        bench.send_signal(signal.SIGINT)
        until = time.monotonic() + 3.0
        while time.monotonic() < until and bench.poll() is None:
            bench.send_signal(signal.SIGINT)
            time.sleep(0.02)
        assert bench.wait(60) == 130
        left = [p for p, t in started.items() if procs.is_alive(p, t)]
        assert left == [], f"left behind: {left}"
    finally:
        procs.kill(tracked)
        err.close()
