"""bench/tcp_relay.py, #5's floor: it relays bytes faithfully both ways, and
with BURN_US each read really costs the relay that much CPU time (what
``bench.run --floor-burn-us`` relies on to put a relay of a given cost under
#5's load)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import procs
from harness.net import free_port

from bench.run import _burn_levels, cpu_seconds
from bench.tcp_relay import burn

ROOT = Path(__file__).resolve().parents[2]


def test_burn_spends_cpu_time_not_wall_time() -> None:
    t0 = time.thread_time_ns()
    burn(3_000_000)
    assert time.thread_time_ns() - t0 >= 3_000_000


def test_burn_levels() -> None:
    assert _burn_levels("0,15,30") == [0, 15, 30]
    for bad in ("x", "5,-1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            _burn_levels(bad)


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server on loopback: what the relay's target end sees."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join(5)
    srv.close()


def _relay(listen: int, target: int, *extra: str) -> subprocess.Popen[str]:
    """The relay, tracked by pid from its start (the harness kills it if a
    test fails before stopping it)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "bench.tcp_relay", str(listen), str(target), *extra],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    procs.register(p.pid, "bench tcp relay")
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    return p


def _round_trips(port: int, n: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as c:
        for i in range(n):
            msg = b"key %d \x00\xff" % i
            c.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += c.recv(65536)
            assert got == msg


@pytest.mark.parametrize("burn_us", [0, 2000])
def test_relays_faithfully_and_burns_per_read(echo_server: int, burn_us: int) -> None:
    port = free_port()
    relay = _relay(port, echo_server, str(burn_us))
    try:
        before = cpu_seconds(relay.pid)
        _round_trips(port, 40)
        used = cpu_seconds(relay.pid) - before
        # 40 round trips: at least 80 reads (one each way per key). /proc
        # counts CPU time in ticks, sampled: the margin is for that.
        assert used >= 0.6 * 80 * burn_us / 1e6
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(10)
        procs.unregister(relay.pid)
    assert relay.returncode == 0


@pytest.mark.parametrize("args", [["1"], ["1", "2", "x"], ["1", "2", "-5"], ["a", "2"]])
def test_usage_error_is_one_line(args: list[str]) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "bench.tcp_relay", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=30,
    )
    assert p.returncode == 2
    assert p.stderr.strip().startswith("usage:") and "\n" not in p.stderr.strip()
