"""The load generator for benchmark #5 (concurrency): ``python -m bench.loadgen``.

One asyncssh process (started by ``bench.run``, so its CPU is not the
gateway's) that opens two fleets of ``--sessions`` interactive pty sessions
each, ``--per-conn`` sessions per client SSH connection (an agent fleet),
ramping up ``--batch`` sessions at a time: the direct fleet straight to the
target sshd (``--direct-port``) and the gateway fleet through the gateway.
Both stay open throughout and take turns: ``--pairs`` times, the direct fleet
runs the load, then the gateway fleet (A B A B ...), while the other one sits
idle (an idle shell costs memory, not CPU). So both arms are measured on the
same machine in the same minutes, which a shared 2-core box needs.

In a fleet's turn, a tenth of its sessions (``--stream-frac``) run a streaming
loop in the target shell (one ~60-byte line every ``--stream-interval``
seconds, no fork per line); the others type ``echo hi-N-K`` (a 12-16 key
command line) every ~``--type-every`` seconds, one keystroke at a time at a
human pace (a key every ``--key-interval`` seconds, about 80 words a minute).
After ``--settle`` seconds (the typists start at random points of their
cycle), each keystroke's echo latency (write 1 byte, time until that byte
comes back) counts for ``--hold`` seconds; then the typists finish their
command and the streams are interrupted.

The load generator stands in for people's OpenSSH clients, so its asyncssh is
tuned like the gateway's (``gateway.sshtune``): above all, no empty
SSH_MSG_IGNORE before every packet, which OpenSSH clients don't send and which
would double the packets the gateway has to open per keystroke.

Protocol on stdout, one JSON object per line: ``{"event": "progress", ...}``
while a fleet opens, ``{"event": "ramped", "arm": ...}`` when it is open,
``{"event": "hold_start", "arm": ..., "pair": ...}`` and ``{"event":
"hold_end", ...}`` (with that hold's figures) around every hold, and
``{"event": "result", ...}`` after every shell was told to exit and every
connection closed. Everything is bounded: ``--deadline`` seconds after start
the process gives up, reports what it has and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

import asyncssh

from bench.stats import pct
from gateway import sshtune

PROMPT = b"# "  # the harness's PS1 is '\u@target:\w\$ ' and we log in as root


def emit(event: str, **kw: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **kw}) + "\n")
    sys.stdout.flush()


def summary(xs: list[float]) -> dict[str, Any]:
    return {
        "n": len(xs),
        "p50_ms": pct(xs, 50),
        "p90_ms": pct(xs, 90),
        "p99_ms": pct(xs, 99),
        "max_ms": max(xs) if xs else None,
    }


class Session(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.want: bytes = b""
        self.start = 0
        self.fut: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.nbytes = 0

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.nbytes += len(data)
        if self.fut is None:
            if len(self.buf) < 65536:
                self.buf += data
            return
        self.buf += data
        if not self.fut.done() and self.buf.find(self.want, self.start) >= 0:
            self.fut.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"channel closed: {exc}"))

    async def wait_for(self, want: bytes, timeout: float, start: int = 0) -> int:
        """Until ``want`` appears in buf at or after ``start``; returns its index."""
        i = self.buf.find(want, start)
        if i >= 0:
            return i
        self.want, self.start = want, start
        self.fut = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.fut, timeout)
        finally:
            self.fut = None
        return self.buf.find(want, start)


@dataclass
class Slot:
    idx: int
    kind: str  # "stream" | "type" | "warm"
    chan: asyncssh.SSHClientChannel[bytes] | None = None
    sess: Session | None = None
    error: str | None = None
    open_s: float | None = None


@dataclass
class Stats:
    # Per hold ("gateway-0", "direct-3", ...): keystroke echo times and
    # command round trips (Enter to the next prompt), in ms; and the load
    # generator's own loop lag.
    lat: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cmd_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lag_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    key_timeouts: int = 0
    cmd_errors: list[str] = field(default_factory=list)
    commands: int = 0
    phase: str = "idle"  # the hold that samples go to; "idle" and "done" keep none

    @property
    def holding(self) -> bool:
        return self.phase not in ("idle", "done")


async def open_session(conn: asyncssh.SSHClientConnection, slot: Slot, timeout: float) -> None:
    t0 = time.monotonic()
    try:
        chan, sess = await asyncio.wait_for(
            conn.create_session(Session, term_type="xterm", term_size=(80, 24), encoding=None),
            timeout,
        )
        slot.chan, slot.sess = chan, cast(Session, sess)
        await slot.sess.wait_for(PROMPT, timeout)
        slot.open_s = time.monotonic() - t0
    except Exception as e:
        slot.error = f"{type(e).__name__}: {e}"[:300]


async def connect(host: str, port: int, login: str, key: str, timeout: float) -> Any:
    return await asyncio.wait_for(
        asyncssh.connect(
            host,
            port,
            username=login,
            client_keys=[key],
            known_hosts=None,
            config=None,
            agent_path=None,
            preferred_auth="publickey",
            encryption_algs=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
        ),
        timeout,
    )


async def typer(
    slot: Slot, stats: Stats, stop: asyncio.Event, every: float, key_interval: float, seed: int
) -> None:
    rnd = random.Random(seed)
    sess, chan = slot.sess, slot.chan
    assert sess is not None and chan is not None
    await asyncio.sleep(rnd.uniform(0, every))  # desynchronise the fleet
    k = 0
    while not stop.is_set():
        cycle = time.monotonic()
        word = f"hi-{slot.idx}-{k}"
        try:
            for ch in f"echo {word}".encode():
                byte = bytes([ch])
                start = len(sess.buf)
                t0 = time.perf_counter()
                chan.write(byte)
                await sess.wait_for(byte, 10.0, start)
                ms = (time.perf_counter() - t0) * 1000
                if stats.holding:
                    stats.lat[stats.phase].append(ms)
                pause = key_interval - ms / 1000
                if pause > 0:
                    await asyncio.sleep(pause)
            start = len(sess.buf)
            t0 = time.perf_counter()
            chan.write(b"\r")
            # The typed line's echo is already in buf before `start`: what
            # comes after Enter is echo's output, then the next prompt.
            i = await sess.wait_for(word.encode() + b"\r\n", 10.0, start)
            await sess.wait_for(PROMPT, 10.0, i)
            if stats.holding:
                stats.cmd_ms[stats.phase].append((time.perf_counter() - t0) * 1000)
            stats.commands += 1
        except TimeoutError:
            stats.key_timeouts += 1
            stats.cmd_errors.append(f"session {slot.idx}: timeout, tail {bytes(sess.buf[-80:])!r}")
            chan.write(b"\x03")  # back to a clean prompt
            with contextlib.suppress(TimeoutError, ConnectionError):
                await sess.wait_for(PROMPT, 10.0, len(sess.buf))
        except ConnectionError as e:
            stats.cmd_errors.append(f"session {slot.idx}: {e}")
            return
        sess.buf.clear()
        k += 1
        rest = every * rnd.uniform(0.8, 1.2) - (time.monotonic() - cycle)
        if rest > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rest)


async def loop_lag(stop: asyncio.Event, stats: Stats) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.05)
        if stats.holding:
            stats.lag_ms[stats.phase].append((time.perf_counter() - t0 - 0.05) * 1000)


async def close_slot(slot: Slot, timeout: float) -> bool:
    """Leave the shell as a user would (``exit``), so the target ends the
    session and the gateway closes the connection and its cast. A client that
    only dropped its channel would leave a detached connection behind."""
    if slot.chan is None or slot.sess is None:
        return False
    try:
        if slot.kind == "stream":
            slot.chan.write(b"\x03")
            await asyncio.sleep(0.2)
        slot.chan.write(b"\rexit\r")
        await asyncio.wait_for(asyncio.shield(slot.sess.closed), timeout)
        return True
    except (TimeoutError, OSError, asyncssh.Error):
        slot.chan.close()
        return False


@dataclass
class Fleet:
    """One arm's sessions: through the gateway, or straight to the sshd."""

    arm: str  # "gateway" | "direct"
    host: str
    port: int
    login: str
    key: str
    slots: list[Slot]
    conns: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ramp_s: float = 0.0

    @property
    def ok_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.error is None and s.sess is not None]


async def ramp(fleet: Fleet, a: argparse.Namespace, started: float) -> None:
    """Open the fleet's sessions, ``batch`` at a time, ``per_conn`` per client
    connection; no load runs while a fleet opens."""
    slots = fleet.slots
    groups = [slots[i : i + a.per_conn] for i in range(0, len(slots), a.per_conn)]
    per_batch = max(1, a.batch // a.per_conn)
    t_ramp = time.monotonic()

    async def open_group(group: list[Slot]) -> None:
        try:
            conn = await connect(fleet.host, fleet.port, fleet.login, fleet.key, a.open_timeout)
        except Exception as e:
            for s in group:
                s.error = f"connect: {type(e).__name__}: {e}"[:300]
            fleet.errors.append(group[0].error or "")
            return
        fleet.conns.append(conn)
        await asyncio.gather(*(open_session(conn, s, a.open_timeout) for s in group))

    for b in range(0, len(groups), per_batch):
        if time.monotonic() - started > a.deadline * 0.4:
            for g in groups[b:]:
                for s in g:
                    s.error = "not attempted: ramp ran out of time"
            break
        await asyncio.gather(*(open_group(g) for g in groups[b : b + per_batch]))
        ok = sum(1 for s in slots if s.sess is not None and s.error is None)
        failed = sum(1 for s in slots if s.error is not None)
        emit(
            "progress",
            arm=fleet.arm,
            open=ok,
            failed=failed,
            elapsed=round(time.monotonic() - t_ramp, 1),
        )
        if a.batch_pause:
            await asyncio.sleep(a.batch_pause)
    fleet.ramp_s = time.monotonic() - t_ramp
    emit(
        "ramped",
        arm=fleet.arm,
        open=len(fleet.ok_slots),
        failed=len(slots) - len(fleet.ok_slots),
        ramp_s=fleet.ramp_s,
    )


async def run_phase(fleet: Fleet, pair: int, a: argparse.Namespace, stats: Stats) -> dict[str, Any]:
    """One arm's turn: its streamers stream and its typists type; after
    ``settle`` seconds (the typists start at random points of their cycle)
    the ``hold`` counts. Then the typists finish their command and the
    streamers are interrupted, so the other arm's turn runs alone."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    ok = fleet.ok_slots
    for slot in ok:
        assert slot.chan is not None
        if slot.kind == "stream":
            slot.chan.write(stream_command(a.stream_interval))
        else:
            seed = slot.idx * 1000 + pair
            tasks.append(
                asyncio.create_task(typer(slot, stats, stop, a.type_every, a.key_interval, seed))
            )
    await asyncio.sleep(a.settle)
    label = f"{fleet.arm}-{pair}"
    emit("hold_start", arm=fleet.arm, pair=pair)
    bytes0 = {s.idx: s.sess.nbytes for s in ok if s.kind == "stream" and s.sess}
    stats.phase, cmds0 = label, stats.commands
    t_hold = time.monotonic()
    await asyncio.sleep(a.hold)
    hold_s = time.monotonic() - t_hold
    stats.phase = "idle"
    stream_bytes = sum(s.sess.nbytes - bytes0[s.idx] for s in ok if s.kind == "stream" and s.sess)
    phase = {
        "arm": fleet.arm,
        "pair": pair,
        "hold_s": hold_s,
        "echo": summary(stats.lat[label]),
        "loop_lag_ms": summary(stats.lag_ms[label]),
        "command_roundtrip": summary(stats.cmd_ms[label]),
        "commands": stats.commands - cmds0,
        "stream_KBps_total": stream_bytes / hold_s / 1000 if hold_s else None,
    }
    emit("hold_end", **phase)
    stop.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 25)
    for slot in ok:
        if slot.kind == "stream" and slot.chan is not None:
            with contextlib.suppress(OSError):
                slot.chan.write(b"\x03")
    await asyncio.sleep(1.0)  # the interrupted loops' last output drains
    return phase


def stream_command(interval: float) -> bytes:
    """A streamer's loop in the target shell: one ~60-byte line per
    ``interval`` seconds, no fork per line."""
    return (
        'while :; do echo "stream $RANDOM $RANDOM $RANDOM $RANDOM $RANDOM $SECONDS"; '
        f"read -t {interval}; done\r"
    ).encode()


def _pooled(per_hold: dict[str, list[float]], arm: str) -> list[float]:
    """Every sample of ``arm``'s holds."""
    return [x for label, xs in per_hold.items() if label.startswith(arm + "-") for x in xs]


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    stats = Stats()
    stop_lag = asyncio.Event()
    lag_task = asyncio.create_task(loop_lag(stop_lag, stats))
    n_stream = round(a.sessions * a.stream_frac)

    def fleet(arm: str, port: int, login: str, key: str) -> Fleet:
        kinds = ["stream" if i < n_stream else "type" for i in range(a.sessions)]
        return Fleet(arm, a.host, port, login, key, [Slot(i, k) for i, k in enumerate(kinds)])

    gateway = fleet("gateway", a.port, a.login, a.key)
    fleets = [gateway]
    if a.direct_port:
        # The direct arm first, as in every other benchmark's A B pairs.
        fleets.insert(0, fleet("direct", a.direct_port, a.direct_login, a.direct_key or a.key))

    if a.warmup:
        # One whole session lifecycle through the gateway (its lazy imports,
        # the pooled target connection), then wait for the bench to read the
        # gateway's idle memory and say "go".
        w = Slot(-1, "warm")
        wconn = await connect(a.host, a.port, a.login, a.key, a.open_timeout)
        await open_session(wconn, w, a.open_timeout)
        if w.error is None and w.chan is not None and w.sess is not None:
            w.chan.write(b"echo warm-$((6*7))\r")
            with contextlib.suppress(TimeoutError, ConnectionError):
                await w.sess.wait_for(b"warm-42", 10)
            await close_slot(w, 10)
        wconn.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wconn.wait_closed(), 10)
        emit("warm", error=w.error)
        line = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), 60
        )
        if line.strip() != "go":
            raise SystemExit("no go from the bench")

    # Both fleets stay open throughout; only one of them runs its load at a
    # time (an idle shell costs memory, not CPU), so the arms alternate
    # within minutes, on the same machine in the same state.
    for f in fleets:
        await ramp(f, a, started)
    phases: list[dict[str, Any]] = []
    for pair in range(a.pairs):
        for f in fleets:
            if time.monotonic() - started > a.deadline - 2 * (a.settle + a.hold) - 60:
                break
            phases.append(await run_phase(f, pair, a, stats))
    stats.phase = "done"

    # Every shell exits.
    t_close = time.monotonic()
    closed = await asyncio.gather(*(close_slot(s, 20) for f in fleets for s in f.ok_slots))
    close_s = time.monotonic() - t_close
    conns = [c for f in fleets for c in f.conns]
    for c in conns:
        c.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True), 10
        )
    stop_lag.set()
    await lag_task
    ru = resource.getrusage(resource.RUSAGE_SELF)
    arms: dict[str, Any] = {}
    for f in fleets:
        ok_slots = f.ok_slots
        errors: dict[str, int] = {}
        for s in f.slots:
            if s.error is not None:
                errors[s.error] = errors.get(s.error, 0) + 1
        mine = [p for p in phases if p["arm"] == f.arm]
        arms[f.arm] = {
            "opened": len(ok_slots),
            "opened_streamers": sum(1 for s in ok_slots if s.kind == "stream"),
            "failed": len(f.slots) - len(ok_slots),
            "errors": errors,
            "connection_errors": f.errors[:20],
            "ramp_s": f.ramp_s,
            "session_open_ms": summary([s.open_s * 1000 for s in ok_slots if s.open_s]),
            "echo_load": summary(_pooled(stats.lat, f.arm)),
            "command_roundtrip": summary(_pooled(stats.cmd_ms, f.arm)),
            "holds": len(mine),
            "hold_s": sum(p["hold_s"] for p in mine),
            "commands_completed": sum(p["commands"] for p in mine),
            "loadgen_loop_lag_under_load_ms": summary(_pooled(stats.lag_ms, f.arm)),
        }
    gw = arms["gateway"]
    return {
        "sessions": a.sessions,
        "streamers": n_stream,
        "typists": a.sessions - n_stream,
        "client_connections": -(-a.sessions // a.per_conn),
        "pairs": a.pairs,
        "settle_s": a.settle,
        "arms": arms,
        "phases": phases,
        # The gateway arm's figures at the top level, as the bench reads them.
        "opened": gw["opened"],
        "failed": gw["failed"],
        "errors": gw["errors"],
        "echo_load": gw["echo_load"],
        "command_roundtrip": gw["command_roundtrip"],
        "loadgen_loop_lag_under_load_ms": gw["loadgen_loop_lag_under_load_ms"],
        "keystroke_timeouts": stats.key_timeouts,
        "command_errors": stats.cmd_errors[:20],
        "closed_by_exit": sum(1 for c in closed if c),
        "close_s": close_s,
        "loadgen_cpu_s": ru.ru_utime + ru.ru_stime,
        "loadgen_maxrss_kib": ru.ru_maxrss,
        "wall_s": time.monotonic() - started,
    }


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--login", required=True, help="e.g. root@t0")
    ap.add_argument("--key", required=True)
    ap.add_argument("--direct-port", type=int, default=0)
    ap.add_argument("--direct-login", default="root")
    ap.add_argument("--direct-key", default="")
    ap.add_argument("--warmup", action="store_true", help="one session, then wait for 'go'")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--per-conn", type=int, default=10)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--batch-pause", type=float, default=0.2)
    ap.add_argument("--stream-frac", type=float, default=0.1)
    ap.add_argument("--stream-interval", type=float, default=0.1)
    ap.add_argument("--type-every", type=float, default=5.0, help="seconds per command cycle")
    ap.add_argument("--key-interval", type=float, default=0.15, help="seconds between keys")
    ap.add_argument("--pairs", type=int, default=5, help="holds per arm, alternated")
    ap.add_argument("--hold", type=float, default=20.0, help="seconds each hold counts")
    ap.add_argument(
        "--settle", type=float, default=5.0, help="seconds of load before each hold counts"
    )
    ap.add_argument("--open-timeout", type=float, default=30.0)
    ap.add_argument("--deadline", type=float, default=240.0)
    a = ap.parse_args()

    sshtune.install()

    async def bounded() -> dict[str, Any]:
        return await asyncio.wait_for(main_async(a), a.deadline)

    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            res = runner.run(bounded())
    except TimeoutError:
        emit("result", error=f"load generator gave up after {a.deadline:g} s")
        return 1
    emit("result", **res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
