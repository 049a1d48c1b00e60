"""shellgate against direct OpenSSH: ``python -m bench.run`` (``make bench``).

One process run starts a real OpenSSH sshd on loopback and shellgate daemons in
front of it (the shipped default config, plus two recording variants for the
recording-overhead figures), alternates direct and gateway runs (A B A B ...),
and prints one table of gateway/direct ratios (medians of per-pair ratios) with
the gateway's own CPU seconds (utime+stime from /proc/PID/stat) per GB and per
1,000 keystrokes. #6's pty rounds compare the recording variants with each
other, with the whole pipeline on one CPU (``one_cpu`` says why). The same
figures go to ``bench/results/latest.json``
(``latest-quick.json`` for ``--quick`` or ``--only`` runs); #5 concurrency
also writes ``bench/results/concurrency.json``.

    python -m bench.run                 # all seven and #5's floor, ~17 min on 2 cores
    python -m bench.run --quick         # 3 pairs, smaller sizes, #5 at 200: ~4 minutes
    python -m bench.run --only echo     # pty | bulk | echo | setup | store | concurrency | floor
    python -m bench.run --only concurrency                  # #5 alone: ~5 min
    python -m bench.run --only concurrency --sessions 200   # #5, ~3 min
    python -m bench.run --only floor    # #5's load through a plain TCP relay: ~5 min
    python -m bench.run --profile       # py-spy on the gateway during #1 and #3
    python -m bench.run --only concurrency --attribute   # #5 with the gateway's CPU per call
    python -m bench.run --only concurrency --conc-py-crypto  # #5, gateway/_wire.c off
    python -m bench.run --only concurrency --conc-recording rec_off  # #5, recording off

Every process started here is tracked by pid (tests/harness/procs) and killed
at exit, also on Ctrl-C, SIGTERM or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the e2e harness: sshd, gateway, procs
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncssh  # noqa: E402
from harness import procs  # noqa: E402
from harness.env import clean_env  # noqa: E402
from harness.gateway import GatewayProcess  # noqa: E402
from harness.net import free_port  # noqa: E402
from harness.ssh_client import SshClient  # noqa: E402
from harness.sshd import TargetSshd  # noqa: E402

from bench.stats import pct  # noqa: E402
from gateway import sshtune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
AES = "aes128-gcm@openssh.com"
NAMES = ("pty", "bulk", "echo", "setup", "store", "concurrency", "floor")

# Recording variants (#6). "default" is the shipped config; it serves #1-#4.
VARIANTS: dict[str, str] = {
    "default": "",  # enabled, input = "redacted", commands on
    "output_only": 'input = "off"',
    "rec_off": "enabled = false",
}
# #3 also runs the shipped config with the relay's AES-GCM packets in Python
# (gateway/_wire.c off): what the C path saves, measured in the same run.
PY_CRYPTO = "py_crypto"


@dataclass
class Sizes:
    pairs: int
    pty_mb: int
    bulk_mb: int
    echo_samples: int
    setup_runs: int
    cold_runs: int
    store_events: int
    store_rows: int
    conc_sessions: int = 1000
    # #5's holds: each arm runs the load conc_pairs times, alternating, and
    # conc_hold seconds of each count, after conc_settle seconds of load.
    conc_pairs: int = 5
    conc_hold: float = 20.0
    conc_settle: float = 5.0
    conc_type_every: float = 5.0
    # #1, #2 and #6's throughput: single runs move by +-20% on this shared box,
    # more than #6's 10%; 15 rounds (~3 minutes for #1, ~2 for #2) put the
    # medians within a few %.
    throughput_pairs: int = 15


# The sizes the issue asks for: 100 MB of text under a pty, 200 MB of binary
# each way over exec. Echo takes 10,000 keys per arm, not the 2,000:
# #6 compares the variants' p99, and the p99 of 2,000 keys (the 20th worst)
# moved by up to 18% between arms of one run; of 10,000, 3-5% (~20 s).
FULL = Sizes(5, 100, 200, 10_000, 50, 8, 100_000, 1_000_000)
QUICK = Sizes(3, 8, 20, 600, 12, 3, 20_000, 200_000, 200, 3, 10.0, throughput_pairs=3)


# -- small helpers ----------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """utime and stime of ``pid`` in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        rest = f.read().rpartition(")")[2].split()
    return int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    return sum(cpu_times(pid))


def sched_sample(pid: int) -> dict[str, float]:
    """Cumulative counters of ``pid`` for #5's hold: user and system CPU
    seconds (all threads), the main thread's seconds on a CPU and waiting on
    a run queue (``/proc/PID/task/PID/schedstat``: the loop's thread), and its
    context switches (``/proc/PID/status``)."""
    user, system = cpu_times(pid)
    out = {"user_s": user, "sys_s": system}
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat", encoding="ascii") as f:
            on_cpu, waiting, _ = f.read().split()
        out["on_cpu_s"] = int(on_cpu) / 1e9
        out["runnable_wait_s"] = int(waiting) / 1e9
    except (OSError, ValueError):
        pass  # a kernel without schedstat
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                out[key] = float(value)
    return out


def machine_cpu() -> dict[str, float]:
    """Cumulative CPU seconds of the whole machine (the ``cpu`` line of
    /proc/stat): busy (user, nice, system, irq, softirq), idle (with iowait)
    and steal (time the hypervisor gave our vCPUs to someone else)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) / CLK_TCK for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return {
        "busy_s": user + nice + system + irq + softirq,
        "idle_s": idle + iowait,
        "steal_s": steal,
    }


def per_second(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """What each cumulative counter of ``sched_sample`` or ``machine_cpu`` did
    per second between two samples ``seconds`` apart."""
    return {k: (after[k] - before[k]) / seconds for k in after if k in before}


def rotated(names: list[str], i: int) -> list[str]:
    """Round ``i``'s order of the arms: each arm goes first in turn, so none
    always runs on the machine the one before it left."""
    k = i % len(names)
    return names[k:] + names[:k]


def balanced(names: list[str], i: int) -> list[str]:
    """Key ``i``'s order of the arms, from a balanced Latin square (Williams):
    over a cycle (``len(names)`` keys, twice that for an odd count) each arm
    takes each place and comes right after each other arm equally often.

    Why not ``rotated``: rotation keeps one cyclic order, so the same arm
    always came right after direct OpenSSH. That place cost ~30 us at the
    p50 (session 17: two gateways of one config, 246 against 220 us, the
    slow one the one after direct), which #3 and #6 had read as the cost
    of recording input."""
    n = len(names)
    first = [0]
    for k in range(1, n):
        first.append((k + 1) // 2 if k % 2 else n - k // 2)
    rows = [[(x + r) % n for x in first] for r in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return [names[x] for x in rows[i % len(rows)]]


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def wakeup_cost() -> dict[str, Any] | None:
    """``bench.wakeup``'s round trips across two CPUs (~1 s), or None."""
    try:
        r = subprocess.run(
            [sys.executable, "-m", "bench.wakeup"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            env={**clean_env(), "PYTHONPATH": str(ROOT)},
        )
        return cast(dict[str, Any], json.loads(r.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


@functools.cache
def machine() -> dict[str, Any]:
    """The machine's facts, measured once per run."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ssh_v = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = None
    try:
        import cryptography

        crypto = cryptography.__version__
    except ImportError:
        crypto = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "uvloop": uv,
        "cryptography": crypto,
        "native_packet_crypto": sshtune.native(),  # gateway/_wire.c built and on
        "openssh": ssh_v,
        "kernel": platform.release(),
        "wakeup_round_trip": wakeup_cost(),
    }


def make_text_file(path: Path, mb: int) -> None:
    """``mb`` MB of printable lines (what a pty `cat` of a log looks like)."""
    import random

    rnd = random.Random(42)
    words = [
        "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 10)))
        for _ in range(500)
    ]
    lines = []
    size = 0
    while size < 4 << 20:
        body = " ".join(rnd.choice(words) for _ in range(rnd.randint(3, 14)))
        line = f"{size:>10} {body}\n"
        lines.append(line)
        size += len(line)
    block = "".join(lines).encode()
    total = mb * 1_000_000
    with open(path, "wb") as f:
        while total > 0:
            f.write(block[:total])
            total -= len(block)


def make_binary_file(path: Path, mb: int) -> None:
    block = os.urandom(16 << 20)
    total = mb * 1_000_000
    with open(path, "wb") as f:
        while total > 0:
            f.write(block[:total])
            total -= len(block)


@dataclass
class StreamResult:
    nbytes: int
    seconds: float


def run_stream(
    args: list[str],
    *,
    stdin_path: Path | None = None,
    payload: int | None = None,
    timeout: float = 300.0,
) -> StreamResult:
    """Run an OpenSSH client, read its stdout here, and time first byte -> EOF
    (so connection setup is left out). ``payload`` overrides the byte count
    (uploads, where stdout carries only start/end markers)."""
    stdin: Any = open(stdin_path, "rb") if stdin_path else subprocess.PIPE  # noqa: SIM115
    err = tempfile.TemporaryFile()  # noqa: SIM115 (closed below)
    p = subprocess.Popen(
        args,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=err,
        env=clean_env(),
        start_new_session=True,
    )
    tracked = procs.register(p.pid, "bench ssh client", p)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        assert p.stdout is not None
        fd = p.stdout.fileno()
        n = 0
        t_first: float | None = None
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            if t_first is None:
                t_first = time.perf_counter()
            n += len(chunk)
        t_end = time.perf_counter()
        code = p.wait(timeout)
    finally:
        timer.cancel()
        if p.poll() is None:
            procs.kill(tracked)
        procs.unregister(p.pid)
        if stdin_path:
            stdin.close()
        elif p.stdin:
            p.stdin.close()
        if p.stdout:
            p.stdout.close()
    err.seek(0)
    errtext = err.read().decode(errors="replace")
    err.close()
    if code != 0 or t_first is None:
        raise RuntimeError(f"{' '.join(args)} exited {code}: {errtext[-2000:]}")
    return StreamResult(payload if payload is not None else n, t_end - t_first)


def run_wall(args: list[str], timeout: float = 30.0) -> float:
    started = time.perf_counter()
    p = subprocess.run(
        args, stdin=subprocess.DEVNULL, capture_output=True, env=clean_env(), timeout=timeout
    )
    elapsed = time.perf_counter() - started
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {p.returncode}: {p.stderr[-2000:]!r}")
    return elapsed


# -- the rig ------------------------------------------------------------------------


@dataclass
class Rig:
    directory: Path
    sizes: Sizes
    sshd: TargetSshd
    gateways: dict[str, GatewayProcess]
    text_file: Path
    bin_file: Path
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    # --profile-hold: py-spy the gateway through #5's hold.
    profile_hold: bool = False
    # --attribute: count the CPU time of the gateway's hot calls through the
    # hold (bench/cpu_account.py).
    attribute: bool = False
    # --floor-burn-us: the floor's runs, each with its relay spinning this many
    # microseconds of CPU per read.
    floor_burn_us: list[int] = field(default_factory=lambda: [0])
    # --conc-py-crypto: #5's gateway with its AES-GCM packets in Python.
    conc_py_crypto: bool = False
    # --conc-recording: #5's gateway with one of #6's recording variants.
    conc_recording: str = "default"
    # Where #5's concurrency.json goes: next to the results file.
    results_dir: Path = RESULTS

    def direct(self) -> SshClient:
        return self.sshd.client(strict=False)

    def via(self, variant: str = "default", target: str = "t0") -> SshClient:
        return self.gateways[variant].to(target)

    def gw_pid(self, variant: str = "default") -> int:
        popen = self.gateways[variant].popen
        assert popen is not None
        return popen.pid

    def clean_recordings(self) -> None:
        """Casts of finished benchmark connections are not kept (GBs otherwise)."""
        for gw in self.gateways.values():
            rec = gw.data_dir / "recordings"
            if rec.is_dir():
                for p in rec.iterdir():
                    with contextlib.suppress(OSError):
                        p.unlink()

    def row(self, **kw: Any) -> None:
        self.rows.append(kw)


def start_rig(
    directory: Path, sizes: Sizes, variants: list[str], cold: int, py_crypto: bool = False
) -> Rig:
    sshd = TargetSshd(directory / "sshd")
    sshd.start()
    # The gateway needs to open as many channels as we run at once; targets
    # c1..cN point at the same sshd and are used once each: a cold pool.
    targets = {"t0": sshd, **{f"c{i}": sshd for i in range(1, cold + 1)}}
    gateways: dict[str, GatewayProcess] = {}
    for v in [*variants, PY_CRYPTO] if py_crypto else variants:
        gw = GatewayProcess.create(
            directory / f"gw-{v}",
            targets,
            users=(("alice", ("admin",)),),
            recording_toml=VARIANTS.get(v, ""),
        )
        if v == PY_CRYPTO:
            gw.env["SHELLGATE_NATIVE"] = "0"
        # GatewayProcess.write_config writes one [[targets]] per dict entry
        # via sshd.target_toml(name).
        gw.start()
        gateways[v] = gw
    text_file = directory / "text.txt"
    bin_file = directory / "binary.bin"
    return Rig(directory, sizes, sshd, gateways, text_file, bin_file)


def stop_rig(rig: Rig | None) -> None:
    if rig is None:
        return
    for gw in rig.gateways.values():
        with contextlib.suppress(Exception):
            gw.stop(timeout=10)
        gw.cleanup()
    rig.sshd.cleanup()


def _recording_variants(rig: Rig) -> list[str]:
    """The rig's gateways that #1, #2 and #6 compare (not #3's py_crypto)."""
    return [v for v in rig.gateways if v in VARIANTS]


# -- #1 pty output throughput and #6 recording overhead ----------------------------


def bench_pty(rig: Rig) -> None:
    """#1: the shipped gateway against direct OpenSSH, with the client's
    default cipher and with AES-GCM, on the machine as the scheduler runs it;
    then #6's pty rows, the recording variants with each other, pinned."""
    s = rig.sizes
    if not rig.text_file.exists():
        make_text_file(rig.text_file, s.pty_mb)
    cmd = f"cat {rig.text_file}"
    out: dict[str, Any] = {}
    for cipher in ("default", AES):
        opts = () if cipher == "default" else (f"Ciphers={cipher}",)
        client_of = {
            "direct": rig.direct().with_options(*opts),
            "default": rig.via("default").with_options(*opts),
        }
        arms, cpu, nbytes = _stream_rounds(rig, client_of, cmd)
        res = _throughput_summary(arms, cpu, s.pty_mb * 1e6, nbytes)
        out[cipher] = res
        _throughput_rows(rig, "1", f"pty cat {s.pty_mb} MB", cipher, res, ["default"], 0.8)
    variants = _recording_variants(rig)
    if len(variants) > 1:
        with one_cpu(rig) as cpu_no:
            arms, cpu, nbytes = _stream_rounds(rig, {v: rig.via(v) for v in variants}, cmd)
        res = _throughput_summary(arms, cpu, s.pty_mb * 1e6, nbytes)
        res["cpu"] = cpu_no
        out[ONE_CPU] = res
        for v in variants:
            rig.row(
                n="6",
                bench=f"pty cat {s.pty_mb} MB [{v}], whole pipeline on CPU {cpu_no}",
                cipher="client default",
                direct="",
                gateway=f"{res[v]['MBps']:.1f} MB/s",
                ratio=None,
                goal="",
                cpu=f"{res[v]['cpu_s_per_GB']:.2f} s/GB",
                extra=f"{res[v]['vs_rec_off']:.3f} of recording off",
            )
    rig.results["pty_throughput"] = out


ONE_CPU = "recording_one_cpu"
"""#6's pty rounds in ``results["pty_throughput"]``: measured with every
process of the pipeline on one CPU (see ``one_cpu``)."""


def _stream_rounds(
    rig: Rig, client_of: dict[str, SshClient], cmd: str
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """``throughput_pairs`` rounds of ``cmd`` under a pty, each arm of
    ``client_of`` once a round in rotated order: MB/s per arm and round, the
    gateway's CPU seconds per gateway arm and round, and the bytes read."""
    arms: dict[str, list[float]] = {a: [] for a in client_of}
    cpu: dict[str, list[float]] = {a: [] for a in client_of if a != "direct"}
    nbytes = 0
    for i in range(rig.sizes.throughput_pairs):
        for arm in rotated(list(client_of), i):
            args = client_of[arm].ssh_args(cmd, tty=True)
            c0 = cpu_seconds(rig.gw_pid(arm)) if arm != "direct" else 0.0
            r = run_stream(args)
            if arm != "direct":
                cpu[arm].append(cpu_seconds(rig.gw_pid(arm)) - c0)
                rig.clean_recordings()
            arms[arm].append(r.nbytes / r.seconds / 1e6)
            nbytes = r.nbytes
    return arms, cpu, nbytes


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []  # gone


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (``sched_setaffinity`` on a pid
    moves only its main thread)."""
    for tid in _threads(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def one_cpu(rig: Rig) -> Iterator[int]:
    """Run the block with every process of a pty ``cat`` on one CPU: this
    process (which reads the client's stdout and starts the clients), the
    gateways and sshd (whose sessions and ``cat`` inherit it at fork), every
    thread of each. Yields the CPU; puts each process back on the CPUs it had.

    Why, for #6's pty rows only: with two CPUs every pty round landed near
    one of two speeds (~90 or ~135 MB/s here, whatever was recorded), as the
    scheduler happened to place the client, the gateway, sshd and ``cat``,
    so a median of 15 rounds said recording on was 30% *faster* or not,
    depending on which arm drew more fast rounds. Pinned, rounds agree to a
    few %. One CPU for all is the placement where the recording cannot hide
    in an idle CPU: each cycle it adds is taken from the relay's throughput.
    (Pinning the gateway apart from the client, or apart from both ends,
    moved the sign of the difference with the placement: the gateway's
    packet sizes change how hard the ssh client works.)"""
    cpu = min(os.sched_getaffinity(0))
    roots = [os.getpid(), *(rig.gw_pid(v) for v in rig.gateways)]
    if rig.sshd.pid is not None:
        roots.append(rig.sshd.pid)

    def pipeline() -> set[int]:
        return {p for root in roots for p in (root, *procs.descendants(root))}

    saved: dict[int, set[int]] = {}
    for pid in pipeline():
        with contextlib.suppress(OSError):
            saved[pid] = os.sched_getaffinity(pid)
        _set_affinity(pid, {cpu})
    try:
        yield cpu
    finally:
        ours = saved[os.getpid()]
        for pid in pipeline():
            _set_affinity(pid, saved.get(pid, ours))  # one born pinned: where we ran


def _throughput_rows(
    rig: Rig,
    n: str,
    bench: str,
    cipher: str,
    res: dict[str, Any],
    variants: list[str],
    goal: float,
) -> None:
    """Table rows for a throughput benchmark: the shipped config against
    ``goal`` (benchmark ``n``), the recording variants as #6 rows."""
    for v in variants:
        shipped = v == "default"
        rig.row(
            n=n if shipped else "6",
            bench=bench + ("" if shipped else f" [{v}]"),
            cipher="client default" if cipher == "default" else cipher,
            direct=f"{res['direct_MBps']:.0f} MB/s",
            gateway=f"{res[v]['MBps']:.0f} MB/s",
            ratio=res[v]["ratio"],
            goal=f">= {goal}x" if shipped else "",
            cpu=f"{res[v]['cpu_s_per_GB']:.2f} s/GB",
            ok=(res[v]["ratio"] >= goal) if shipped else None,
        )


def _throughput_summary(
    arms: dict[str, list[float]], cpu: dict[str, list[float]], payload: float, nbytes: int
) -> dict[str, Any]:
    res: dict[str, Any] = {"bytes_received": nbytes}
    direct = arms.get("direct")
    if direct is not None:
        res["direct_MBps"] = median(direct)
        res["direct_runs_MBps"] = [round(x, 1) for x in direct]
    for v, xs in arms.items():
        if v == "direct":
            continue
        res[v] = {
            "MBps": median(xs),
            "runs_MBps": [round(x, 1) for x in xs],
            "cpu_s_per_GB": median([c / (payload / 1e9) for c in cpu[v]]),
        }
        if direct is not None:
            ratios = [g / d for g, d in zip(xs, direct, strict=False)]
            res[v]["ratio"] = median(ratios)
            res[v]["pair_ratios"] = [round(r, 3) for r in ratios]
    if "rec_off" in arms:
        # #6 compares the variants with each other: each round ran them one
        # after another, so a round's ratio to recording off cancels most of
        # the machine's drift (which moves all arms of a round alike).
        off = arms["rec_off"]
        for v, xs in arms.items():
            if v != "direct":
                res[v]["vs_rec_off"] = median([g / o for g, o in zip(xs, off, strict=False)])
    return res


# -- #2 bulk exec throughput, both directions ------------------------------------------


def bench_bulk(rig: Rig) -> None:
    s = rig.sizes
    if not rig.bin_file.exists():
        make_binary_file(rig.bin_file, s.bulk_mb)
    payload = s.bulk_mb * 1_000_000
    out: dict[str, Any] = {}
    for direction in ("download", "upload"):
        for cipher in ("default", AES):
            opts = () if cipher == "default" else (f"Ciphers={cipher}",)
            # Recording variants (#6) with the client's default cipher only.
            variants = _recording_variants(rig) if cipher == "default" else ["default"]
            arms: dict[str, list[float]] = {v: [] for v in ("direct", *variants)}
            cpu: dict[str, list[float]] = {v: [] for v in variants}
            for i in range(s.throughput_pairs):
                for arm in rotated(["direct", *variants], i):
                    client = (rig.direct() if arm == "direct" else rig.via(arm)).with_options(*opts)
                    c0 = cpu_seconds(rig.gw_pid(arm)) if arm != "direct" else 0.0
                    if direction == "download":
                        r = run_stream(client.ssh_args(f"cat {rig.bin_file}", tty=False))
                    else:
                        r = run_stream(
                            client.ssh_args("echo go; cat > /dev/null; echo end", tty=False),
                            stdin_path=rig.bin_file,
                            payload=payload,
                        )
                    if arm != "direct":
                        cpu[arm].append(cpu_seconds(rig.gw_pid(arm)) - c0)
                        rig.clean_recordings()
                    arms[arm].append(r.nbytes / r.seconds / 1e6)
            res = _throughput_summary(arms, cpu, payload, payload)
            out[f"{direction}/{cipher}"] = res
            bench = f"exec {direction} {s.bulk_mb} MB binary"
            _throughput_rows(rig, "2", bench, cipher, res, variants, 0.6)
    rig.results["bulk_throughput"] = out


# -- #3 keystroke echo latency (and #6 for it) ----------------------------------------


class _Echo(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.fut: asyncio.Future[None] | None = None

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.buf += data
        f = self.fut
        if f is not None and not f.done():
            f.set_result(None)


async def _echo_session(
    port: int, username: str, key: Path
) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientChannel[bytes], _Echo]:
    conn = await asyncssh.connect(
        "127.0.0.1",
        port,
        username=username,
        client_keys=[str(key)],
        known_hosts=None,
        config=None,
        agent_path=None,
        preferred_auth="publickey",
    )
    chan, session = await conn.create_session(
        _Echo, term_type="xterm", term_size=(80, 24), encoding=None
    )
    sess = cast(_Echo, session)
    deadline = time.monotonic() + 15
    while b"# " not in sess.buf and b"$ " not in sess.buf:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no prompt from {username}: {bytes(sess.buf)!r}")
        await asyncio.sleep(0.02)
    chan.write(b"stty raw -echo; exec cat\r")
    await asyncio.sleep(0.5)
    return conn, chan, sess


async def _one_key(chan: asyncssh.SSHClientChannel[bytes], sess: _Echo, byte: bytes) -> float:
    loop = asyncio.get_running_loop()
    while True:
        sess.buf.clear()
        fut = loop.create_future()
        sess.fut = fut
        t0 = time.perf_counter_ns()
        chan.write(byte)
        await asyncio.wait_for(fut, 5)
        dt = (time.perf_counter_ns() - t0) / 1000
        sess.fut = None
        if bytes(sess.buf) == byte:
            return dt
        await asyncio.sleep(0.05)  # a stray byte (e.g. late shell echo): measure again


async def _echo_async(rig: Rig) -> dict[str, Any]:
    # The echo client stands in for an OpenSSH client, which does not send an
    # SSH_MSG_IGNORE before every packet as stock asyncssh does: tuned like the
    # load generator, it sends what ssh sends, to sshd and to the gateway alike.
    sshtune.install()
    arms: dict[str, tuple[Any, Any, Any]] = {}
    arms["direct"] = await _echo_session(rig.sshd.port, "root", rig.sshd.client_key.private)
    for v, gw in rig.gateways.items():
        arms[v] = await _echo_session(gw.port, "root@t0", gw.user("alice").key.private)
    names = list(arms)
    for _ in range(30):  # warm-up, and settle the tty modes
        for a in names:
            await _one_key(arms[a][1], arms[a][2], b"w")
    samples: dict[str, list[float]] = {a: [] for a in names}
    cpu0 = {v: cpu_seconds(rig.gw_pid(v)) for v in rig.gateways}
    n = rig.sizes.echo_samples
    letters = b"abcdefghijklmnopqrstuvwxyz"
    for i in range(n):
        byte = letters[i % 26 : i % 26 + 1]
        for a in balanced(names, i):
            samples[a].append(await _one_key(arms[a][1], arms[a][2], byte))
    cpu1 = {v: cpu_seconds(rig.gw_pid(v)) for v in rig.gateways}
    for conn, chan, _sess in arms.values():
        chan.close()
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), 5)
    d = samples["direct"]
    out: dict[str, Any] = {
        "samples": n,
        "direct_p50_us": median(d),
        "direct_p99_us": pct(d, 99),
    }
    block = max(1, n // rig.sizes.pairs)
    for v in rig.gateways:
        g = samples[v]
        # Added latency per pair of blocks (A B A B ...: the samples interleave).
        pair_added = [
            statistics.median(g[k : k + block]) - statistics.median(d[k : k + block])
            for k in range(0, n - block + 1, block)
        ]
        out[v] = {
            "p50_us": median(g),
            "p99_us": pct(g, 99),
            "added_p50_us": median(g) - median(d),  # type: ignore[operator]
            "added_p99_us": pct(g, 99) - pct(d, 99),  # type: ignore[operator]
            "block_added_p50_us": [round(x, 1) for x in pair_added],
            "cpu_s_per_1000_keys": (cpu1[v] - cpu0[v]) / (n / 1000),
        }
    return out


def bench_echo(rig: Rig) -> None:
    res = _run_async(_echo_async(rig))
    rig.results["echo_latency"] = res
    for v in rig.gateways:
        r = res[v]
        extra = f"added p50 {r['added_p50_us']:.0f} us, p99 {r['added_p99_us']:.0f} us"
        if v == "default":
            n, label, goal = "3", "", "added p50 <= 250, p99 <= 1000 us"
        elif v == PY_CRYPTO:
            n, label, goal = "3", " [AES-GCM packets in Python]", "(reference: gateway/_wire.c off)"
            native = res["default"]["cpu_s_per_1000_keys"]
            extra += f"; the C path uses {native / r['cpu_s_per_1000_keys']:.2f}x its CPU per key"
        else:
            n, label, goal = "6", f" [{v}]", ""
        rig.row(
            n=n,
            bench=f"echo latency, {res['samples']} keys{label}",
            cipher="asyncssh default",
            direct=f"p50 {res['direct_p50_us']:.0f} / p99 {res['direct_p99_us']:.0f} us",
            gateway=f"p50 {r['p50_us']:.0f} / p99 {r['p99_us']:.0f} us",
            ratio=r["p50_us"] / res["direct_p50_us"],
            goal=goal,
            cpu=f"{r['cpu_s_per_1000_keys']:.3f} s/1k keys",
            extra=extra,
            ok=(r["added_p50_us"] <= 250 and r["added_p99_us"] <= 1000) if v == "default" else None,
        )


def _run_async(coro: Any) -> Any:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:
        return asyncio.run(coro)


# -- #4 connection setup -------------------------------------------------------------


def bench_setup(rig: Rig) -> None:
    s = rig.sizes
    run_wall(rig.via().ssh_args("true"))  # the pool holds a warm t0 connection from here on
    direct: list[float] = []
    pooled: list[float] = []
    cpu: list[float] = []
    for i in range(s.setup_runs):
        for arm in ("direct", "gw") if i % 2 == 0 else ("gw", "direct"):
            if arm == "direct":
                direct.append(run_wall(rig.direct().ssh_args("true")))
            else:
                c0 = cpu_seconds(rig.gw_pid())
                pooled.append(run_wall(rig.via().ssh_args("true")))
                cpu.append(cpu_seconds(rig.gw_pid()) - c0)
    cold: list[float] = []
    cold_direct: list[float] = []
    for i in range(1, s.cold_runs + 1):
        cold_direct.append(run_wall(rig.direct().ssh_args("true")))
        cold.append(run_wall(rig.via(target=f"c{i}").ssh_args("true")))
    rig.clean_recordings()
    res = {
        "runs": s.setup_runs,
        "direct_ms": median(direct) * 1000,  # type: ignore[operator]
        "pooled_ms": median(pooled) * 1000,  # type: ignore[operator]
        "pooled_ratio": median([g / d for g, d in zip(pooled, direct, strict=False)]),
        "first_runs": s.cold_runs,
        "first_direct_ms": median(cold_direct) * 1000,  # type: ignore[operator]
        "first_ms": median(cold) * 1000,  # type: ignore[operator]
        "first_ratio": median([g / d for g, d in zip(cold, cold_direct, strict=False)]),
        "gw_cpu_ms_per_connection": median(cpu) * 1000,  # type: ignore[operator]
    }
    rig.results["connection_setup"] = res
    for kind in ("first", "pooled"):
        rig.row(
            n="4",
            bench=f"connect + exec true, {kind}"
            + (" (cold pool)" if kind == "first" else " (warm pool)"),
            cipher="client default",
            direct=f"{res['first_direct_ms' if kind == 'first' else 'direct_ms']:.0f} ms",
            gateway=f"{res[f'{kind}_ms']:.0f} ms",
            ratio=res[f"{kind}_ratio"],
            goal="<= 1.2x",
            cpu=f"{res['gw_cpu_ms_per_connection']:.0f} ms/conn" if kind == "pooled" else "",
            ok=(ratio := res[f"{kind}_ratio"]) is not None and ratio <= 1.2,
        )


# -- #5 concurrency --------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (/proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _cpu_or_none(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except OSError:
        return None


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _check_casts(rec_dir: Path) -> dict[str, Any]:
    """Every cast valid (tests/cast_validator.py) and complete: its last
    event is the gateway's ``closed: REASON`` marker."""
    from cast_validator import validate_cast

    out: dict[str, Any] = {"casts": 0, "valid": 0, "complete": 0, "reasons": {}, "bad": []}
    streamed = typed = 0
    for path in sorted(rec_dir.glob("*.cast")):
        out["casts"] += 1
        try:
            _header, events = validate_cast(path)
        except (AssertionError, ValueError) as e:
            out["bad"].append(f"{path.name}: invalid: {e}")
            continue
        out["valid"] += 1
        last = events[-1] if events else None
        if last is not None and last[1] == "m" and last[2].startswith("closed: "):
            out["complete"] += 1
            reason = last[2].removeprefix("closed: ")
            out["reasons"][reason] = out["reasons"].get(reason, 0) + 1
        else:
            out["bad"].append(f"{path.name}: no closed marker last (last event {last!r})"[:300])
        text = "".join(d for _t, c, d in events if c == "o")
        streamed += "stream " in text
        typed += "echo hi-" in text
    out["bad"] = out["bad"][:20]
    out["with_stream_output"] = streamed
    out["with_typed_output"] = typed
    return out


def _casts_closed(rec_dir: Path) -> int:
    n = 0
    for path in rec_dir.glob("*.cast"):
        with contextlib.suppress(OSError), open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 300))
            if b'"closed: ' in f.read():
                n += 1
    return n


def bench_concurrency(rig: Rig) -> None:
    """#5: ``sessions`` concurrent pty sessions from one asyncssh load generator
    process (bench/loadgen.py), one fleet straight to an sshd and one through a
    gateway to the same sshd, taking turns (``conc_pairs`` A B pairs)."""
    s = rig.sizes
    n = s.conc_sessions
    d = rig.directory / "concurrency"
    d.mkdir(exist_ok=True)
    # The harness's sshd_config already has MaxSessions 20 (the pool opens 10
    # channels per connection) and MaxStartups 200 (the pool dials one target
    # connection at a time); sshd keeps the first value of a keyword, so
    # extra_config could not lower or raise them anyway.
    sshd = TargetSshd(d / "sshd")
    gw: GatewayProcess | None = None
    lg: subprocess.Popen[str] | None = None
    tracked: procs.Tracked | None = None
    res: dict[str, Any] = {
        "sessions": n,
        "pairs": s.conc_pairs,
        "hold_s": s.conc_hold,
        "settle_s": s.conc_settle,
    }
    holds: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    try:
        sshd.start()
        gw = GatewayProcess.create(
            d / "gw",
            {"t0": sshd},
            users=(("alice", ("admin",)),),
            recording_toml=VARIANTS[rig.conc_recording],
        )
        res["gateway_recording"] = rig.conc_recording
        account_file = d / "cpu-account.json"
        if rig.attribute:
            gw.command = (sys.executable, "-m", "bench.cpu_account")
            gw.env = {"SHELLGATE_CPU_ACCOUNT": str(account_file), "PYTHONPATH": str(ROOT)}
        if rig.conc_py_crypto:
            gw.env["SHELLGATE_NATIVE"] = "0"
        in_c = sshtune.native() and not rig.conc_py_crypto
        res["gateway_packet_crypto"] = "c" if in_c else "python"
        gw.start()
        gpid = gw.popen.pid  # type: ignore[union-attr]
        deadline = time.monotonic() + _conc_deadline(s) + 30  # the benchmark stops by itself
        lg, tracked = _bench_child(
            _loadgen_args(s, sshd, gw.port, "root@t0", gw.user("alice").key.private, "--warmup"),
            "bench load generator",
            stdin=subprocess.PIPE,
            stderr=open(d / "loadgen.stderr", "w"),  # noqa: SIM115
        )
        lines: list[dict[str, Any]] = []
        import queue

        q: queue.Queue[dict[str, Any] | None] = queue.Queue()

        def reader() -> None:
            assert lg is not None and lg.stdout is not None
            for line in lg.stdout:
                with contextlib.suppress(ValueError):
                    q.put(json.loads(line))
            q.put(None)

        threading.Thread(target=reader, daemon=True).start()

        def next_event(until: float) -> dict[str, Any] | None:
            try:
                ev = q.get(timeout=max(0.1, until - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("load generator silent") from None
            if ev is not None:
                lines.append(ev)
            return ev

        samples: list[int] = []  # the gateway's RSS, once a second through its holds
        fds_load = 0
        target_conns = direct_conns = pool_after_warmup = 0
        result: dict[str, Any] | None = None

        def measure_hold(arm: str, pair: int) -> dict[str, Any]:
            """From a hold_start to its hold_end: what the machine, the
            targets, the load generator and (in the gateway's holds) the
            gateway did per second of it."""
            nonlocal fds_load, target_conns
            first_gw = arm == "gateway" and not holds["gateway"]
            if first_gw:
                # The gateway's pooled target connections: what sshd holds
                # beyond the direct fleet's own connections.
                target_conns = len(sshd.connection_pids()) - direct_conns
                if rig.attribute:
                    os.kill(gpid, signal.SIGUSR1)  # the accounting window starts
            spying = contextlib.ExitStack()
            raw = rig.results_dir / "profile-concurrency.collapsed"
            spy = find_py_spy() if rig.profile_hold and first_gw else None
            if spy is not None:
                rig.results_dir.mkdir(parents=True, exist_ok=True)
                spying.enter_context(py_spy(spy, gpid, raw))
            # Who else burns the 2 cores: sshd + shells, the load generator.
            tree0 = {p: _cpu_or_none(p) for p in sshd.session_pids()}
            lg0 = cpu_seconds(lg.pid)  # type: ignore[union-attr]
            sched0 = sched_sample(gpid) if arm == "gateway" else {}
            machine0 = machine_cpu()
            t_load = time.monotonic()
            while True:
                if arm == "gateway":
                    samples.append(rss_kib(gpid))
                try:
                    ev = q.get(timeout=1.0)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise TimeoutError("no hold_end") from None
                    continue
                if ev is None:
                    raise RuntimeError("load generator exited during a hold")
                lines.append(ev)
                if ev["event"] == "hold_end":
                    break
            if first_gw and rig.attribute:
                os.kill(gpid, signal.SIGUSR2)  # ... and ends: the file is written
            wall = time.monotonic() - t_load
            rec: dict[str, Any] = {"pair": pair, "echo": ev["echo"]}
            if arm == "gateway":
                per_s = per_second(sched0, sched_sample(gpid), wall)
                rec["gw_hold_per_s"] = per_s
                rec["gw_cpu_share_of_one_core"] = per_s["user_s"] + per_s["sys_s"]
                rec["gw_cpu_s"] = rec["gw_cpu_share_of_one_core"] * wall
            # The host's share: how busy both cores were, and what the
            # hypervisor took (a noisy neighbour shows up here, not in ours).
            rec["machine_hold_per_s"] = per_second(machine0, machine_cpu(), wall)
            tree_cpu = 0.0
            for p, c in tree0.items():
                c1 = _cpu_or_none(p)
                if c is not None and c1 is not None:
                    tree_cpu += c1 - c
            rec["target_cpu_share_of_one_core"] = tree_cpu / wall
            rec["loadgen_cpu_share_of_one_core"] = (cpu_seconds(lg.pid) - lg0) / wall  # type: ignore[union-attr]
            rec["loadgen_loop_lag_ms"] = ev["loop_lag_ms"]
            rec["commands"] = ev["commands"]
            spying.close()
            if first_gw:
                if spy is not None and raw.exists():
                    res["profile"] = summarize_collapsed(raw)
                    print(f"\nprofile of #5's first gateway hold: {raw}")
                    print_profile(res["profile"])
                if rig.attribute:
                    res["cpu_account"] = _read_account(account_file)
                    print_account(res["cpu_account"])
                fds_load = _fds(gpid)
                samples.append(rss_kib(gpid))
            echo = ev["echo"]
            print(
                f"[bench]   pair {pair} {arm}: echo p50 {_ms(echo['p50_ms'])} / p99"
                f" {_ms(echo['p99_ms'])} ms"
                + (
                    f", gateway {rec['gw_cpu_share_of_one_core'] * 100:.0f}% of a core"
                    if arm == "gateway"
                    else ""
                )
                + _machine_text(rec["machine_hold_per_s"]),
                file=sys.stderr,
                flush=True,
            )
            return rec

        while time.monotonic() < deadline:
            ev = next_event(deadline)
            if ev is None:
                break
            kind = ev["event"]
            if kind == "warm":
                time.sleep(2.0)  # let the warm-up's close settle
                res["gw_rss_base_kib"] = rss_kib(gpid)
                res["gw_fds_base"] = _fds(gpid)
                pool_after_warmup = len(sshd.connection_pids())
                assert lg.stdin is not None
                lg.stdin.write("go\n")
                lg.stdin.flush()
            elif kind == "progress":
                print(
                    f"[bench]   {ev['arm']}: {ev['open']} open, {ev['failed']} failed,"
                    f" {ev['elapsed']} s; gateway RSS {rss_kib(gpid) / 1024:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
            elif kind == "ramped":
                res.setdefault("ramp_s", {})[ev["arm"]] = ev["ramp_s"]
                if ev["arm"] == "direct":  # sshd also holds the gateway's warm-up pool
                    direct_conns = len(sshd.connection_pids()) - pool_after_warmup
            elif kind == "hold_start":
                holds[ev["arm"]].append(measure_hold(ev["arm"], ev["pair"]))
            elif kind == "result":
                result = ev
                break
        if result is None:
            raise RuntimeError(f"no result from the load generator; last events {lines[-3:]}")
        res["loadgen"] = result
        res["holds"] = holds
        # Means over the gateway's holds, under the names earlier runs used.
        for key in (
            "gw_hold_per_s",
            "machine_hold_per_s",
            "gw_cpu_share_of_one_core",
            "target_cpu_share_of_one_core",
            "loadgen_cpu_share_of_one_core",
        ):
            res[key] = _mean_of([h[key] for h in holds["gateway"]])
        res["direct_machine_hold_per_s"] = _mean_of(
            [h["machine_hold_per_s"] for h in holds["direct"]]
        )
        res["gw_cpu_s_hold"] = sum(h["gw_cpu_s"] for h in holds["gateway"])
        res["target_connections_at_load"] = target_conns
        res["gw_fds_load"] = fds_load
        if samples:
            res["gw_rss_load_kib"] = max(samples)
            res["gw_rss_samples_kib"] = samples
        opened = result.get("opened", 0)
        if samples and opened:
            res["rss_per_session_kib"] = (max(samples) - res["gw_rss_base_kib"]) / opened
        # Every shell was told to exit: wait for the gateway to close every cast.
        rec_dir = gw.data_dir / "recordings"
        expect = opened + 1  # the warm-up session has its cast too
        t0 = time.monotonic()
        while _casts_closed(rec_dir) < expect and time.monotonic() - t0 < 30:
            time.sleep(0.5)
        res["casts_closed_wait_s"] = time.monotonic() - t0
        res["gw_rss_after_close_kib"] = rss_kib(gpid)
        res["gw_fds_after_close"] = _fds(gpid)
        res["gw_alive"] = gw.popen is not None and gw.popen.poll() is None  # type: ignore[union-attr]
        res["casts_expected"] = expect
        res["cast_check"] = _check_casts(rec_dir)
    finally:
        if tracked is not None:
            procs.kill(tracked)
        if gw is not None:
            with contextlib.suppress(Exception):
                gw.stop(timeout=15)
            gw.cleanup()
        sshd.cleanup()
    _conc_report(rig, res)


def _burn_levels(text: str) -> list[int]:
    """``--floor-burn-us``: comma-separated microseconds, each >= 0."""
    try:
        levels = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or min(levels) < 0:
        raise argparse.ArgumentTypeError(f"levels must be >= 0: {text!r}")
    return levels


def bench_relay_floor(rig: Rig) -> None:
    """#5's reference: the same paired load with a plain TCP relay
    (bench/tcp_relay.py: uvloop, no SSH, no recording) where the gateway was.
    What any relay costs on this machine in this hour; not a goal. With
    ``--floor-burn-us`` once per level, the relay spinning that much CPU per
    read: how the p99 grows with a relay's CPU alone, in one hour."""
    for burn_us in rig.floor_burn_us:
        _relay_floor(rig, burn_us)


def _relay_floor(rig: Rig, burn_us: int) -> None:
    s = rig.sizes
    d = rig.directory / f"floor-{burn_us}"
    d.mkdir(exist_ok=True)
    sshd = TargetSshd(d / "sshd")
    tracked: list[procs.Tracked] = []
    holds: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
    result: dict[str, Any] = {}
    try:
        sshd.start()
        port = free_port()
        relay, t = _bench_child(
            [sys.executable, "-m", "bench.tcp_relay", str(port), str(sshd.port), str(burn_us)],
            "bench tcp relay",
        )
        tracked.append(t)
        assert relay.stdout is not None
        if relay.stdout.readline().strip() != "ready":
            raise RuntimeError("the TCP relay did not start")
        lg, t = _bench_child(
            _loadgen_args(s, sshd, port, "root", sshd.client_key.private),
            "bench load generator (floor)",
        )
        tracked.append(t)
        killer = threading.Timer(_conc_deadline(s) + 30, lg.kill)
        killer.start()
        try:
            assert lg.stdout is not None
            for line in lg.stdout:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                kind = ev.get("event")
                if kind == "hold_start":
                    cpu0, machine0, t0 = cpu_seconds(relay.pid), machine_cpu(), time.monotonic()
                elif kind == "hold_end":
                    wall = time.monotonic() - t0
                    rec = {
                        "pair": ev["pair"],
                        "echo": ev["echo"],
                        "machine_hold_per_s": per_second(machine0, machine_cpu(), wall),
                    }
                    if ev["arm"] == "gateway":
                        rec["relay_cpu_share_of_one_core"] = (cpu_seconds(relay.pid) - cpu0) / wall
                    holds[ev["arm"]].append(rec)
                elif kind == "result":
                    result = ev
        finally:
            killer.cancel()
    finally:
        for t in tracked:
            procs.kill(t)
        sshd.cleanup()
    if not result:
        print("[bench] floor: the load generator gave no result", file=sys.stderr, flush=True)
        return
    arms = result["arms"]
    relay_echo, direct_echo = arms["gateway"]["echo_load"], arms["direct"]["echo_load"]
    cpu = _mean_of([h["relay_cpu_share_of_one_core"] for h in holds["gateway"]])
    floor = {"holds": holds, "loadgen": result, "relay_cpu_share": cpu, "burn_us": burn_us}
    if burn_us:
        rig.results.setdefault("relay_floor_burn", {})[str(burn_us)] = floor
    else:
        rig.results["relay_floor"] = floor
    spin = f", spinning {burn_us} us of CPU per read" if burn_us else ""
    rig.row(
        n="5",
        bench=f"reference: #5's load through a plain TCP relay (bench/tcp_relay.py: uvloop, "
        f"no SSH, no recording{spin}), {len(holds['gateway'])} A/B pairs",
        cipher="aes128-gcm",
        direct=f"echo p50 {_ms(direct_echo['p50_ms'])} / p99 {_ms(direct_echo['p99_ms'])} ms"
        + _machine_text(_mean_of([h["machine_hold_per_s"] for h in holds["direct"]]) or {}),
        gateway=f"relay: {arms['gateway']['opened']}/{result['sessions']} ok; echo p50 "
        f"{_ms(relay_echo['p50_ms'])} / p99 {_ms(relay_echo['p99_ms'])} ms (per hold "
        + ", ".join(_ms(h["echo"]["p99_ms"]) for h in holds["gateway"])
        + ")"
        + _machine_text(_mean_of([h["machine_hold_per_s"] for h in holds["gateway"]]) or {}),
        ratio=None,
        goal="(the floor, not a goal)",
        cpu=f"relay {(cpu or 0) * 100:.0f}% of a core",
        ok=None,
    )
    print(
        f"[bench] floor{spin}: relay echo {relay_echo}; direct echo {direct_echo}; relay CPU {cpu}",
        file=sys.stderr,
        flush=True,
    )


def _bench_child(
    args: list[str], what: str, stdin: Any = None, stderr: Any = subprocess.DEVNULL
) -> tuple[subprocess.Popen[str], procs.Tracked]:
    """A helper process of #5 (the load generator, the TCP relay): text
    stdout piped, in its own session, tracked by pid so it is killed at exit."""
    p = subprocess.Popen(
        args,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=ROOT,
        env={**clean_env(), "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    return p, procs.register(p.pid, what, p)  # type: ignore[arg-type]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _mean_of(values: list[Any]) -> Any:
    """The mean of numbers, or key by key of dicts of numbers (None if empty)."""
    if not values:
        return None
    if isinstance(values[0], dict):
        return {k: statistics.fmean(v[k] for v in values) for k in values[0]}
    return statistics.fmean(values)


def _read_account(path: Path, timeout: float = 10.0) -> dict[str, Any] | None:
    """The window bench/cpu_account.py wrote on SIGUSR2 (None if it never came)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    return cast(dict[str, Any], json.loads(path.read_text()))


def print_account(acc: dict[str, Any] | None) -> None:
    """--attribute: where the gateway's CPU went in #5's hold."""
    if not acc:
        print("[bench] --attribute: the gateway wrote no CPU account", file=sys.stderr)
        return
    threads = acc["threads_cpu_per_s"]
    print(
        f"\nCPU of the gateway's hot calls through #5's hold ({acc['wall_s']:.0f} s; inclusive,"
        f" thread CPU time; threads: "
        + ", ".join(f"{k} {v * 100:.1f}%" for k, v in threads.items() if v >= 0.001)
        + ")"
    )
    print("| call | % of a core | calls/s | us/call |")
    print("|---|---|---|---|")
    for name, c in sorted(acc["calls"].items(), key=lambda kv: -kv[1]["cpu_per_s"]):
        us = "-" if c["us_per_call"] is None else f"{c['us_per_call']:.1f}"
        print(f"| {name} | {c['cpu_per_s'] * 100:.1f} | {c['calls_per_s']:.0f} | {us} |")


def _loadgen_args(
    s: Sizes, sshd: TargetSshd, port: int, login: str, key: Path, *extra: str
) -> list[str]:
    """bench/loadgen.py's command line for #5's workload: the relayed fleet
    through ``port`` as ``login`` with ``key``, the direct fleet to ``sshd``."""
    return [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--port",
        str(port),
        "--login",
        login,
        "--key",
        str(key),
        "--sessions",
        str(s.conc_sessions),
        "--pairs",
        str(s.conc_pairs),
        "--hold",
        str(s.conc_hold),
        "--settle",
        str(s.conc_settle),
        "--type-every",
        str(s.conc_type_every),
        "--deadline",
        str(_conc_deadline(s)),
        *("--direct-port", str(sshd.port), "--direct-login", "root"),
        *("--direct-key", str(sshd.client_key.private)),
        *extra,
    ]


def _conc_deadline(s: Sizes) -> int:
    """Seconds the load generator may take: two ramps, every hold with its
    settling and winding down, the closing, and margin."""
    return round(240 + 2 * s.conc_pairs * (s.conc_settle + s.conc_hold + 30))


def _sched_text(per_s: dict[str, float]) -> str:
    """The gateway's hold in a few words (see ``sched_sample``)."""
    if "user_s" not in per_s:
        return ""
    text = f"; gateway user {per_s['user_s'] * 100:.0f}% / sys {per_s['sys_s'] * 100:.0f}%"
    if "runnable_wait_s" in per_s:
        text += f", its loop waited for a CPU {per_s['runnable_wait_s'] * 100:.0f}% of the hold"
    switches = per_s.get("voluntary_ctxt_switches", 0) + per_s.get("nonvoluntary_ctxt_switches", 0)
    return text + f", {switches / 1000:.1f}k context switches/s"


def _machine_text(per_s: dict[str, float]) -> str:
    """The whole machine during the hold (see ``machine_cpu``)."""
    if "busy_s" not in per_s:
        return ""
    return (
        f"; machine busy {per_s['busy_s']:.2f} of {os.cpu_count()} cores, "
        f"steal {per_s['steal_s'] * 100:.1f}% of a core"
    )


def _conc_report(rig: Rig, res: dict[str, Any]) -> None:
    lg = res["loadgen"]
    cc = res["cast_check"]
    echo = lg["echo_load"]
    direct = lg.get("arms", {}).get("direct") or {}
    decho = direct.get("echo_load") or {}
    per = res.get("rss_per_session_kib")
    holds = res.get("holds", {})
    all_ok = (
        lg["opened"] == lg["sessions"]
        and lg["keystroke_timeouts"] == 0
        and len(holds.get("gateway", [])) == res["pairs"]
    )
    casts_ok = cc["complete"] == cc["casts"] == res["casts_expected"] and not cc["bad"]
    # The goal's p99 is over every keystroke of every gateway hold together;
    # the per-hold p99s show how much the machine moved between holds.
    p99 = echo["p99_ms"]
    res["goals"] = {
        "all_succeed": all_ok,
        "rss_per_session_le_150KiB": per is not None and per <= 150,
        "echo_p99_le_20ms": p99 is not None and p99 <= 20,
        "every_cast_complete": casts_ok,
    }
    if decho.get("p99_ms") is not None and p99 is not None:
        res["echo_p99_added_ms"] = p99 - decho["p99_ms"]
    gw_p99s = [h["echo"]["p99_ms"] for h in holds.get("gateway", []) if h["echo"]["p99_ms"]]
    d_p99s = [h["echo"]["p99_ms"] for h in holds.get("direct", []) if h["echo"]["p99_ms"]]
    res["hold_p99_ms"] = {"direct": d_p99s, "gateway": gw_p99s}
    rig.results["concurrency"] = res
    rig.results_dir.mkdir(parents=True, exist_ok=True)
    (rig.results_dir / "concurrency.json").write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": machine(),
                "loadavg_after": os.getloadavg(),
                **res,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )

    def spread(xs: list[float]) -> str:
        if not xs:
            return "no holds"
        return f"per hold {min(xs):.1f}-{max(xs):.1f}, median {statistics.median(xs):.1f}"

    lag = lg.get("loadgen_loop_lag_under_load_ms") or {}
    rig.row(
        n="5",
        bench=f"concurrency: {lg['sessions']} pty sessions ({lg['streamers']} streaming), "
        f"{lg['client_connections']} client conns, {len(gw_p99s)} A/B pairs of "
        f"{res['hold_s']:g} s holds"
        + "".join(
            f" [{k}: {res[k]}]"
            for k, shipped in (("gateway_recording", "default"), ("gateway_packet_crypto", "c"))
            if res.get(k, shipped) != shipped
        ),
        cipher="aes128-gcm",
        direct=(
            f"all {direct.get('opened')} direct: echo p50 {_ms(decho.get('p50_ms'))} / "
            f"p99 {_ms(decho.get('p99_ms'))} ms ({spread(d_p99s)})"
            + _machine_text(res.get("direct_machine_hold_per_s") or {})
            if decho
            else "no direct holds"
        ),
        gateway=f"{lg['opened']}/{lg['sessions']} ok; echo p50 {_ms(echo['p50_ms'])} / "
        f"p99 {_ms(p99)} ms ({spread(gw_p99s)}); {_ms(per)} KiB/session; casts "
        f"{cc['complete']}/{res['casts_expected']} complete",
        ratio=None,
        goal="all ok; <= 150 KiB; p99 <= 20 ms; casts complete",
        cpu=f"{(res.get('gw_cpu_share_of_one_core') or 0) * 100:.0f}% of a core",
        extra=f"{res['target_connections_at_load']} target conns, "
        f"loadgen lag p99 {_ms(lag.get('p99_ms'))} ms"
        + _sched_text(res.get("gw_hold_per_s") or {})
        + _machine_text(res.get("machine_hold_per_s") or {}),
        ok=all(res["goals"].values()),
    )
    print(
        f"[bench] concurrency: {json.dumps(res['goals'])}; gateway echo {echo}; "
        f"direct echo {decho}; per-hold p99 direct {d_p99s}, gateway {gw_p99s}",
        file=sys.stderr,
        flush=True,
    )


# -- #7 store --------------------------------------------------------------------------


def _bench_store_module() -> Any:
    path = ROOT / "tests" / "store" / "bench_store.py"
    spec = importlib.util.spec_from_file_location("bench_store", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def _store_async(directory: Path, sizes: Sizes) -> dict[str, Any]:
    import logging

    import structlog

    from store import QueryFilter, SqliteStore

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    bs = _bench_store_module()
    out: dict[str, Any] = {}
    for label, records in (
        ("connection_events", bs.connection_events(sizes.store_events)),
        ("commands", bs.commands(sizes.store_events)),
    ):
        db = directory / f"writer-{label}.db"
        store = SqliteStore(db)
        await store.open()
        started = time.perf_counter()
        for r in records:
            store.emit(r)
        await store.flush()
        elapsed = time.perf_counter() - started
        await store.close()
        out[f"writer_{label}_per_s"] = len(records) / elapsed
        out[f"writer_{label}_n"] = len(records)

    # 1M command rows, inserted with plain sqlite3 (setup, not what is measured),
    # laid out as the writer writes them (same as tests/store/bench_store.py).
    qdir = directory / "query"
    qdir.mkdir(exist_ok=True)
    db = qdir / "shellgate.db"
    total = sizes.store_rows
    await bs.fill_commands(db, total)
    since = bs.T0 + timedelta(seconds=total - 50_000)
    times = []
    rows: list[Any] = []
    async with SqliteStore(db, readonly=True) as ro:
        await ro.commands(QueryFilter(user="user042", since=since))
        for _ in range(10):
            t0 = time.perf_counter()
            rows = await ro.commands(QueryFilter(user="user042", since=since))
            times.append(time.perf_counter() - t0)
    out["rows"] = total
    out["query_rows_returned"] = len(rows)
    out["query_inprocess_ms"] = median(times) * 1000  # type: ignore[operator]
    cfg = qdir / "shellgate.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "{qdir}"\n')
    cli = [
        sys.executable,
        "-m",
        "gateway.cli",
        "commands",
        "--user",
        "user042",
        "--since",
        since.isoformat(),
        "--config",
        str(cfg),
        "--json",
    ]
    baseline = [sys.executable, "-c", "import gateway.cli"]
    cli_times: list[float] = []
    base_times: list[float] = []
    for _ in range(5):
        for args, acc in ((cli, cli_times), (baseline, base_times)):
            t0 = time.perf_counter()
            p = subprocess.run(args, capture_output=True, cwd=ROOT, timeout=60)
            acc.append(time.perf_counter() - t0)
            if p.returncode != 0:
                raise RuntimeError(f"{args} exited {p.returncode}: {p.stderr[-2000:]!r}")
            if args is cli:
                out["cli_rows_returned"] = len(p.stdout.splitlines())
    out["cli_wall_ms"] = median(cli_times) * 1000  # type: ignore[operator]
    out["cli_import_only_ms"] = median(base_times) * 1000  # type: ignore[operator]
    return out


def bench_store(rig: Rig) -> None:
    d = rig.directory / "store"
    d.mkdir(exist_ok=True)
    res = _run_async(_store_async(d, rig.sizes))
    rig.results["store"] = res
    for kind in ("connection_events", "commands"):
        rate = res[f"writer_{kind}_per_s"]
        rig.row(
            n="7",
            bench=f"store writer, {res[f'writer_{kind}_n']:,} {kind.replace('_', ' ')}",
            cipher="",
            direct="",
            gateway=f"{rate:,.0f} ev/s",
            ratio=None,
            goal=">= 50k ev/s",
            cpu="",
            ok=rate >= 50_000,
        )
    rig.row(
        n="7",
        bench=f"commands --user --since over {res['rows']:,} rows",
        cipher="",
        direct="",
        gateway=f"{res['query_inprocess_ms']:.1f} ms query; CLI {res['cli_wall_ms']:.0f} ms",
        ratio=None,
        goal="< 100 ms",
        cpu="",
        extra=f"{res['query_rows_returned']} rows; CLI wall incl. interpreter "
        f"(bare `import gateway.cli` {res['cli_import_only_ms']:.0f} ms)",
        ok=res["query_inprocess_ms"] < 100,
    )


# -- profiling ------------------------------------------------------------------------


def find_py_spy() -> str | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found: pip install py-spy into the venv", file=sys.stderr)
        return None
    return spy


@contextlib.contextmanager
def py_spy(spy: str, pid: int, raw: Path) -> Iterator[None]:
    """Sample ``pid`` at 250 Hz without stopping it, into py-spy's raw
    (collapsed) format, for the duration of the block."""
    p = subprocess.Popen(
        [spy, "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    tracked = procs.register(p.pid, "py-spy", p)
    try:
        yield
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(20)
        finally:
            if p.poll() is None:
                procs.kill(tracked)
            procs.unregister(p.pid)


def bench_profile(rig: Rig) -> None:
    """py-spy on the gateway while it relays #1 (both ciphers) and #2 download
    and #3 echo; writes collapsed stacks and a self/inclusive summary."""
    spy = find_py_spy()
    if spy is None:
        return
    if not rig.text_file.exists():
        make_text_file(rig.text_file, rig.sizes.pty_mb)
    if not rig.bin_file.exists():
        make_binary_file(rig.bin_file, rig.sizes.bulk_mb)
    out = rig.results_dir
    out.mkdir(parents=True, exist_ok=True)

    def twice(args: list[str]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(2):
                run_stream(args)

        return run

    cases: dict[str, Callable[[], None]] = {
        "pty-chacha": twice(rig.via().ssh_args(f"cat {rig.text_file}", tty=True)),
        "pty-aesgcm": twice(
            rig.via().with_options(f"Ciphers={AES}").ssh_args(f"cat {rig.text_file}", tty=True)
        ),
        "exec-download-chacha": twice(rig.via().ssh_args(f"cat {rig.bin_file}", tty=False)),
        "echo": lambda: _run_async(_echo_async(rig)) and None,
    }
    summary: dict[str, Any] = {}
    for name, fn in cases.items():
        raw = out / f"profile-{name}.collapsed"
        with py_spy(spy, rig.gw_pid(), raw):
            time.sleep(1.0)
            c0 = cpu_seconds(rig.gw_pid())
            fn()
            cpu = cpu_seconds(rig.gw_pid()) - c0
        rig.clean_recordings()
        if raw.exists():
            summary[name] = summarize_collapsed(raw)
            summary[name]["gateway_cpu_s"] = cpu
            print(f"\nprofile {name}: gateway CPU {cpu:.2f} s; {raw}")
            print_profile(summary[name])
    (out / "profile-summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def summarize_collapsed(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw format."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        self_c[leaf] = self_c.get(leaf, 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def norm(f: str) -> str:
        return f.replace(str(ROOT) + "/", "").replace(
            str(Path(asyncssh.__file__).parent.parent) + "/", ""
        )

    return {
        "samples": total,
        "self": [
            (norm(f), round(c / total * 100, 1))
            for f, c in sorted(self_c.items(), key=lambda kv: -kv[1])[:top]
        ],
        "inclusive": [
            (norm(f), round(c / total * 100, 1))
            for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[: top * 2]
        ],
    }


def print_profile(s: dict[str, Any]) -> None:
    print(f"  {s['samples']} samples; self time (% of samples):")
    for f, p in s["self"][:15]:
        print(f"   {p:5.1f}%  {f}")
    print("  inclusive:")
    for f, p in s["inclusive"][:30]:
        print(f"   {p:5.1f}%  {f}")


# -- #6 recording overhead, in one row ---------------------------------------------


def recording_overhead(rig: Rig) -> None:
    """#6's verdict: how far apart recording off / output only / output+input
    are in #1-#3 (each measured in its own benchmark above), as the spread
    max/min - 1 of the three; throughput as each round's ratio to recording
    off (see ``_throughput_summary``), echo as the p50 and p99 latency."""
    order = ("rec_off", "output_only", "default")
    measures: dict[str, list[float]] = {}
    pty = rig.results.get("pty_throughput", {}).get(ONE_CPU, {})
    bulk = rig.results.get("bulk_throughput", {})
    for name, res in (
        ("pty (one CPU)", pty),
        ("exec download", bulk.get("download/default", {})),
        ("exec upload", bulk.get("upload/default", {})),
    ):
        if all(v in res and "vs_rec_off" in res[v] for v in order):
            measures[f"{name} throughput"] = [res[v]["vs_rec_off"] for v in order]
    echo = rig.results.get("echo_latency", {})
    if all(v in echo for v in order):
        measures["echo p50"] = [echo[v]["p50_us"] for v in order]
        measures["echo p99"] = [echo[v]["p99_us"] for v in order]
    if not measures:
        return
    spreads = {k: max(xs) / min(xs) - 1 for k, xs in measures.items()}
    rig.results["recording_overhead"] = {
        "order": list(order),
        "measures": measures,
        "spread": spreads,
    }

    def show(k: str, xs: list[float]) -> str:
        vals = " / ".join(f"{x:.0f}" if k.startswith("echo") else f"{x:.2f}" for x in xs)
        return f"{k} {vals}{' us' if k.startswith('echo') else ''} ({spreads[k] * 100:.0f}%)"

    rig.row(
        n="6",
        bench="recording off / output only / output+input (#1-#3, as above)",
        cipher="client default",
        direct="",
        gateway="; ".join(show(k, xs) for k, xs in measures.items()),
        ratio=None,
        goal="<= 10% apart",
        cpu="",
        extra="throughput as each round's ratio to recording off",
        ok=all(x <= 0.10 for x in spreads.values()),
    )


# -- output ----------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> str:
    head = ["#", "benchmark", "cipher", "direct", "gateway", "gw/direct", "goal", "gw CPU", "ok"]
    lines = []
    for r in rows:
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        ok = {True: "yes", False: "NO", None: ""}[r.get("ok")]
        gw = r["gateway"] + (f" ({r['extra']})" if r.get("extra") else "")
        lines.append(
            [r["n"], r["bench"], r["cipher"], r["direct"], gw, ratio, r["goal"], r["cpu"], ok]
        )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    text = "\n".join(out)
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="3 pairs, smaller sizes (~2 min)")
    ap.add_argument("--only", action="append", choices=NAMES, help="run only this (repeatable)")
    ap.add_argument("--pairs", type=int, help="override the number of A/B pairs")
    ap.add_argument(
        "--floor-burn-us",
        type=_burn_levels,
        metavar="N[,N...]",
        help="#5's floor once per level, its relay spinning N us of CPU per read (default 0): "
        "the p99 against a relay's CPU alone, in one hour",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the gateway during #1/#2/#3 instead of the benchmarks (writes "
        "profile-*.collapsed and profile-summary.json next to --out's file)",
    )
    ap.add_argument(
        "--profile-hold",
        action="store_true",
        help="#5 concurrency: py-spy the gateway through the hold (writes "
        "profile-concurrency.collapsed next to --out's file; adds the sampler's own load)",
    )
    ap.add_argument(
        "--attribute",
        action="store_true",
        help="#5 concurrency: run the gateway under bench/cpu_account.py and print the "
        "thread CPU time of its relay and recorder calls through the hold (in "
        "concurrency.json as cpu_account; the wrappers add ~0.3 us a call)",
    )
    ap.add_argument(
        "--conc-py-crypto",
        action="store_true",
        help="#5 concurrency: the gateway with its AES-GCM packets in Python "
        "(SHELLGATE_NATIVE=0 for the daemon only; the load generator is unchanged)",
    )
    ap.add_argument(
        "--conc-recording",
        choices=list(VARIANTS),
        default="default",
        help="#5 concurrency: the gateway's recording (#6's variants; default: as shipped). "
        "The verdict needs every cast complete, so rec_off fails that part by design",
    )
    ap.add_argument("--pty-mb", type=int, help="size of the pty cat file (MB)")
    ap.add_argument("--bulk-mb", type=int, help="size of the exec cat file (MB)")
    ap.add_argument(
        "--sessions", type=int, help="#5 concurrency: sessions (default 1000, --quick 200)"
    )
    ap.add_argument(
        "--hold", type=float, help="#5 concurrency: seconds each hold counts (20, --quick 10)"
    )
    ap.add_argument(
        "--conc-pairs", type=int, help="#5 concurrency: A B pairs of holds (5, --quick 3)"
    )
    ap.add_argument(
        "--type-every", type=float, help="#5 concurrency: seconds per typed command (5)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument(
        "--out",
        type=Path,
        help="results file (default bench/results/latest.json); concurrency.json and "
        "profiles go next to it",
    )
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.pairs:
        sizes.pairs = sizes.throughput_pairs = args.pairs
    if args.pty_mb:
        sizes.pty_mb = args.pty_mb
    if args.bulk_mb:
        sizes.bulk_mb = args.bulk_mb
    if args.sessions:
        sizes.conc_sessions = args.sessions
    if args.hold:
        sizes.conc_hold = args.hold
    if args.conc_pairs:
        sizes.conc_pairs = args.conc_pairs
    if args.type_every:
        sizes.conc_type_every = args.type_every
    only = args.only or list(NAMES)

    def on_stop(signum: int, frame: Any) -> None:
        # Only the first Ctrl-C or TERM stops the run. A second one could
        # land in the clean-up (in procs.kill_tree, between freezing a tree
        # with SIGSTOP and killing it): session 17's twice-interrupted #5
        # left its sshd and 200 sessions with 1,000 shells behind, deaf to
        # TERM.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    directory = Path(tempfile.mkdtemp(prefix="shellgate-bench-"))
    rig: Rig | None = None
    started = time.monotonic()
    try:
        need_gw = args.profile or any(n in only for n in ("pty", "bulk", "echo", "setup"))
        variants = ["default"]
        if not args.profile and any(n in only for n in ("pty", "bulk", "echo")):
            variants = list(VARIANTS)
        if need_gw:
            py_crypto = not args.profile and "echo" in only and sshtune.native()
            rig = start_rig(directory, sizes, variants, sizes.cold_runs, py_crypto)
        else:
            rig = Rig(
                directory,
                sizes,
                TargetSshd(directory / "sshd"),
                {},
                directory / "t",
                directory / "b",
            )
        rig.profile_hold = args.profile_hold
        rig.attribute = args.attribute
        rig.conc_py_crypto = args.conc_py_crypto
        rig.conc_recording = args.conc_recording
        if args.floor_burn_us:
            rig.floor_burn_us = args.floor_burn_us
        if args.out:
            rig.results_dir = args.out.parent
        if args.profile:
            bench_profile(rig)
            return 0
        steps = {
            "pty": bench_pty,
            "bulk": bench_bulk,
            "echo": bench_echo,
            "setup": bench_setup,
            "store": bench_store,
            "concurrency": bench_concurrency,
            "floor": bench_relay_floor,
        }
        for name in NAMES:
            if name in only:
                t0 = time.monotonic()
                print(f"[bench] {name} ...", file=sys.stderr, flush=True)
                steps[name](rig)
                print(
                    f"[bench] {name} done in {time.monotonic() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        recording_overhead(rig)
        print()
        table = print_table(rig.rows)
        info = machine()
        print(
            f"\nmachine: {info['nproc']} x {info['cpu_model']}, Python {info['python']}, "
            f"asyncssh {info['asyncssh']}, {info['openssh']}; "
            f"{sizes.pairs} pairs ({sizes.throughput_pairs} for throughput); "
            f"{time.monotonic() - started:.0f} s"
        )
        wake = info.get("wakeup_round_trip") or {}
        if "blocking_p50_us" in wake:
            print(
                f"wake-ups (bench/wakeup.py): a one-byte round trip between two processes "
                f"takes {wake['blocking_p50_us']:.0f} us across CPUs when both sleep, "
                f"{wake['same_cpu_blocking_p50_us']:.0f} us on one CPU, "
                f"{wake['polling_p50_us']:.0f} us polling (cpuidle {wake['cpuidle_driver']})"
            )
        partial = args.quick or args.only is not None or args.pairs is not None
        out = args.out or RESULTS / ("latest-quick.json" if partial else "latest.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "mode": "quick" if args.quick else "full",
                    "only": args.only,
                    "pairs": sizes.pairs,
                    "sizes": sizes.__dict__,
                    "machine": info,
                    "gateway_config": "shipped defaults ([recording] enabled, input=redacted, "
                    "commands on); variants for #6: "
                    + ", ".join(f"{k}: {v or 'default'}" for k, v in VARIANTS.items()),
                    "table": rig.rows,
                    "table_markdown": table,
                    "results": rig.results,
                    "seconds": round(time.monotonic() - started, 1),
                },
                indent=1,
                default=str,
            )
            + "\n"
        )
        print(f"wrote {out}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up (another Ctrl-C is ignored)", file=sys.stderr)
        return 130
    finally:
        stop_rig(rig)
        leaked = procs.kill_all()
        if leaked:
            print("killed leftover processes: " + ", ".join(leaked), file=sys.stderr)
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"kept {directory}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
