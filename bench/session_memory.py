"""Where a gateway session's memory goes: ``python -m bench.session_memory``.

Benchmark #5 asks for <= 150 KiB of gateway RSS per interactive session. This
measures it without sshd or a second machine, and says where it goes:

* a shell-like target (in-process asyncssh server: pty, echo, a bash-like
  prompt, ``echo WORDS``, ``exit``) and a client fleet (asyncssh, 10 sessions
  per client connection like an agent fleet, as bench/loadgen.py does) make up
  the *far side*;
* the real ``Gateway`` (gateway/daemon.py: real store, recordings and command
  extraction as shipped, logging configured as ``shellgate serve`` does, to
  /dev/null) in front of it, on loopback, its target connections pooled.

By default the far side runs in a child process (``--role far``), so every byte
of this process is the gateway's and VmRSS is the gateway's RSS; ``--inproc``
puts it in the same process and loop (the pattern of tests/gateway/test_relay.py:
the object ownership walk still attributes only the gateway's objects).

A run: warm-up (a few sessions opened and closed), baseline, open N sessions
and type one command in each (keystroke by keystroke, each echo awaited), then
measure; every shell exits and every client disconnects; measure again; and
``--cycles`` times over, so a one-time high-water mark (reused next cycle) is
told from a leak (growth every cycle). Measured at each point:

* VmRSS (/proc/self/status) per session, before and after ``gc.collect()``,
  and after close also after ``malloc_trim(0)`` (what glibc keeps vs what is
  still referenced);
* pymalloc arenas (``sys._debugmallocstats``): bytes in use vs arenas held;
* ``gc.get_objects()`` counts by type, per session and left after close;
* with ``--trace``: tracemalloc from the baseline on, grouped by file:line,
  by the innermost frame of ours or of a library, and by traceback (top
  allocators per session); it slows the gateway ~10x, so keep the hold short;
* with ``--detail``: an ownership walk: from each session's roots
  (asyncssh client-facing connection and channel, ``ClientSession``,
  ``LiveConnection``, its bound logger, ``SessionRecording``, ``CastWriter``,
  ``CommandExtractor``, ``ScreenModel``, ``TargetSession``, the target
  channel, the pooled target connection) every object reachable and not
  reachable earlier (baseline) or from another owner's root is summed into
  that owner; sizes are ``sys.getsizeof``, so C memory (OpenSSL contexts,
  libuv handles) and allocator slack show up as the gap to RSS.

``python -m bench.session_memory`` runs 200 and 1,000 sessions (RSS runs,
then a ``--detail`` run of 200 and a ``--trace`` run of 100 without the
hold) each in a fresh process and writes bench/results/session_memory.json.
``--role gateway --sessions N [--detail] [--trace]`` is one run, printing its
JSON. ``--try NAME`` applies a change proposed for a file outside this
bench's owner's reach, to measure it (see EXPERIMENTS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

PROMPT = b"root@target:~# "
MOTD = (
    b"Linux target 6.1.0-28-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 x86_64\r\n\r\n"
    b"Last login: Mon Nov 23 03:33:46 2026 from 10.0.0.1\r\n"
)


# -- the far side: a shell-like target and a client fleet ----------------------


class ShellSession(asyncssh.SSHServerSession[bytes]):
    """A pty 'shell': echoes keys, runs ``echo WORDS`` and ``exit``."""

    stream_interval = 0.1

    def __init__(self) -> None:
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.line = bytearray()
        self.streaming: asyncio.TimerHandle | None = None
        self.t0 = time.monotonic()

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:  # type: ignore[override]
        self.chan = chan

    def pty_requested(self, *args: object) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def session_started(self) -> None:
        assert self.chan is not None
        self.chan.write(MOTD + PROMPT)

    def _stream_line(self) -> None:
        """One line like the bench's ``while :; do echo "stream $RANDOM ..."``."""
        if self.chan is None:
            return
        r = random.randrange
        n = " ".join(str(r(32768)) for _ in range(5))
        self.chan.write(f"stream {n} {int(time.monotonic() - self.t0)}\r\n".encode())
        loop = asyncio.get_running_loop()
        self.streaming = loop.call_later(self.stream_interval, self._stream_line)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.chan = None

    def data_received(self, data: bytes, datatype: int | None) -> None:
        chan = self.chan
        assert chan is not None
        if self.streaming is not None:
            if b"\x03" in data:
                self.streaming.cancel()
                self.streaming = None
                chan.write(b"^C\r\n" + PROMPT)
            return
        out = bytearray()
        for b in data:
            if b in (10, 13):
                cmd = bytes(self.line)
                self.line.clear()
                out += b"\r\n"
                if cmd == b"exit":
                    chan.write(bytes(out) + b"logout\r\n")
                    chan.exit(0)
                    return
                if cmd == b"stream":
                    chan.write(bytes(out))
                    self._stream_line()
                    return
                if cmd.startswith(b"echo "):
                    out += cmd[5:] + b"\r\n"
                elif cmd:
                    out += b"-bash: " + cmd.split()[0] + b": command not found\r\n"
                out += PROMPT
            elif b in (8, 127):
                if self.line:
                    self.line.pop()
                    out += b"\b \b"
            elif b == 3:
                self.line.clear()
                out += b"^C\r\n" + PROMPT
            elif b >= 32:
                self.line.append(b)
                out.append(b)
        if out:
            chan.write(bytes(out))


class _TargetServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True

    def session_requested(self) -> ShellSession:
        return ShellSession()


class ClientSession(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.want = b""
        self.waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        w = self.waiter
        if w is None and len(self.buf) > 65536:
            del self.buf[:-4096]
        self.buf += data
        if w is not None and not w.done() and self.want in self.buf:
            w.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"channel closed: {exc}"))

    async def wait_for(self, want: bytes, timeout: float = 120.0) -> None:
        if want in self.buf:
            return
        self.want = want
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.waiter, timeout)
        finally:
            self.waiter = None


async def type_command(
    chan: asyncssh.SSHClientChannel[bytes], sess: ClientSession, word: str
) -> None:
    """``echo WORD`` one key at a time, each echo awaited, then Enter and the
    command's output and the next prompt."""
    sess.buf.clear()
    for ch in b"echo " + word.encode():
        chan.write(bytes([ch]))
        await sess.wait_for(bytes([ch]))
        sess.buf.clear()
    chan.write(b"\r")
    await sess.wait_for(word.encode() + b"\r\n" + PROMPT)
    sess.buf.clear()


class FarSide:
    """The target server and the client fleet (no gateway code here)."""

    def __init__(self) -> None:
        self.target: asyncssh.SSHAcceptor | None = None
        self.target_key = asyncssh.generate_private_key("ssh-ed25519")
        self.user_key = asyncssh.generate_private_key("ssh-ed25519")
        self.conns: list[asyncssh.SSHClientConnection] = []
        self.sessions: list[tuple[asyncssh.SSHClientChannel[bytes], ClientSession]] = []
        self.errors: Counter[str] = Counter()

    async def start_target(self) -> dict[str, Any]:
        self.target = await asyncssh.create_server(
            _TargetServer,
            "127.0.0.1",
            0,
            server_host_keys=[self.target_key],
            encoding=None,
            line_editor=False,
            encryption_algs=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
        )
        return {
            "port": self.target.get_port(),
            "host_key": self.target_key.export_public_key().decode(),
            "user_key": self.user_key.export_public_key().decode(),
        }

    async def open(self, gw_port: int, n: int, per_conn: int, batch: int) -> dict[str, Any]:
        """``n`` pty shells over ``ceil(n / per_conn)`` connections, ``batch``
        connections at a time (under the gateway's max_startups), one command
        typed in each."""
        t0 = time.monotonic()
        counts = [per_conn] * (n // per_conn) + ([n % per_conn] if n % per_conn else [])
        opened = 0
        for i in range(0, len(counts), batch):
            results = await asyncio.gather(
                *(self._one_conn(gw_port, k, len(self.sessions)) for k in counts[i : i + batch]),
                return_exceptions=True,
            )
            for r in results:
                if isinstance(r, BaseException):
                    self.errors[f"{type(r).__name__}: {r}"[:200]] += 1
                else:
                    opened += r
        return {"opened": opened, "open_s": time.monotonic() - t0, "errors": dict(self.errors)}

    async def _one_conn(self, gw_port: int, k: int, base: int) -> int:
        conn = await asyncssh.connect(
            "127.0.0.1",
            gw_port,
            username="root@t1",
            client_keys=[self.user_key],
            known_hosts=None,
            config=None,
            agent_path=None,
            preferred_auth="publickey",
            encryption_algs=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
        )
        self.conns.append(conn)

        async def one(j: int) -> tuple[asyncssh.SSHClientChannel[bytes], ClientSession]:
            chan, session = await conn.create_session(
                ClientSession, term_type="xterm", term_size=(80, 24), encoding=None
            )
            sess = cast(ClientSession, session)
            await sess.wait_for(PROMPT)
            sess.buf.clear()
            await type_command(chan, sess, f"hi-{base + j}")
            return chan, sess

        ok = 0
        for r in await asyncio.gather(*(one(j) for j in range(k)), return_exceptions=True):
            if isinstance(r, BaseException):
                self.errors[f"{type(r).__name__}: {r}"[:200]] += 1
            else:
                self.sessions.append(r)
                ok += 1
        return ok

    async def hold(
        self, commands: int, every: float, stream_frac: float, stream_lines: int
    ) -> dict[str, Any]:
        """Load like bench/loadgen.py's hold, compressed: a ``stream_frac`` of
        the shells stream ``stream_lines`` lines (one every
        ``ShellSession.stream_interval``), the others type ``commands`` more
        commands, keystroke by keystroke, ~``every`` seconds apart."""
        t0 = time.monotonic()
        n_stream = round(len(self.sessions) * stream_frac)
        streamers, typists = self.sessions[:n_stream], self.sessions[n_stream:]
        for chan, _ in streamers:
            chan.write(b"stream\r")
        rnd = random.Random(1)

        async def typist(i: int, chan: Any, sess: ClientSession) -> None:
            await asyncio.sleep(rnd.uniform(0, every))
            for k in range(commands):
                await type_command(chan, sess, f"hi-{i}-{k}")
                await asyncio.sleep(every * rnd.uniform(0.8, 1.2))

        results = await asyncio.gather(
            *(typist(i, c, s) for i, (c, s) in enumerate(typists)),
            asyncio.sleep(stream_lines * ShellSession.stream_interval if streamers else 0),
            return_exceptions=True,
        )
        for chan, sess in streamers:
            sess.buf.clear()
            chan.write(b"\x03")
        for _, sess in streamers:
            await sess.wait_for(b"^C\r\n" + PROMPT)
            sess.buf.clear()
        errors = Counter(f"{type(r).__name__}: {r}"[:200] for r in results if r is not None)
        return {
            "hold_s": time.monotonic() - t0,
            "streamers": len(streamers),
            "typists": len(typists),
            "errors": dict(errors),
        }

    async def close(self) -> dict[str, Any]:
        """Every shell exits (as bench/loadgen.py does), then every client leaves."""
        t0 = time.monotonic()
        for chan, _ in self.sessions:
            with contextlib.suppress(OSError):
                chan.write(b"exit\r")
        for _, sess in self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sess.closed), 30)
        for conn in self.conns:
            conn.close()
        for conn in self.conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 10)
        n = len(self.sessions)
        self.sessions.clear()
        self.conns.clear()
        return {"closed": n, "close_s": time.monotonic() - t0}

    def stop(self) -> None:
        if self.target is not None:
            self.target.close()


class RemoteFarSide:
    """``FarSide`` in a child process (``--role far``), driven by JSON lines."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None

    async def start_target(self) -> dict[str, Any]:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.session_memory",
            "--role",
            "far",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            limit=1 << 20,
        )
        return await self._reply()

    async def _reply(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError("far side exited")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"far side: {reply['error']}")
        return reply

    async def _call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._reply()

    async def open(self, gw_port: int, n: int, per_conn: int, batch: int) -> dict[str, Any]:
        return await self._call(cmd="open", port=gw_port, n=n, per_conn=per_conn, batch=batch)

    async def hold(
        self, commands: int, every: float, stream_frac: float, stream_lines: int
    ) -> dict[str, Any]:
        return await self._call(
            cmd="hold",
            commands=commands,
            every=every,
            stream_frac=stream_frac,
            stream_lines=stream_lines,
        )

    async def close(self) -> dict[str, Any]:
        return await self._call(cmd="close")

    def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()


async def far_main() -> None:
    """``--role far``: serve FarSide over stdin/stdout."""
    far = FarSide()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say(await far.start_target())
    while line := await reader.readline():
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "open":
                say(await far.open(cmd["port"], cmd["n"], cmd["per_conn"], cmd["batch"]))
            elif cmd["cmd"] == "hold":
                say(
                    await far.hold(
                        cmd["commands"], cmd["every"], cmd["stream_frac"], cmd["stream_lines"]
                    )
                )
            elif cmd["cmd"] == "close":
                say(await far.close())
        except Exception as e:  # reported to the gateway side, which gives up
            say({"error": f"{type(e).__name__}: {e}"})
    far.stop()


# -- measurements ----------------------------------------------------------------


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def malloc_trim() -> float:
    """glibc's malloc_trim(0): free pages anywhere in the heaps go back to the
    OS. Returns how long it took (ms)."""
    t0 = time.perf_counter()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return (time.perf_counter() - t0) * 1000


def pymalloc_stats() -> dict[str, int]:
    """Arenas held vs bytes in use in pymalloc (from sys._debugmallocstats)."""
    with tempfile.TemporaryFile("w+") as tmp:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read()
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        key = key.strip().lstrip("#").strip()
        value = value.strip().replace(",", "")
        if (
            key
            in (
                "arenas allocated current",
                "bytes in allocated blocks",
                "bytes in available blocks",
                "bytes lost to pool headers",
                "bytes lost to quantization",
                "bytes lost to arena alignment",
            )
            and value.isdigit()
        ):
            out[key.replace(" ", "_")] = int(value)
    # 1 MiB arenas (3.10+ on 64-bit); "in use" is what live objects occupy.
    if "arenas_allocated_current" in out:
        out["arenas_kib"] = out["arenas_allocated_current"] * 1024
    out["in_use_kib"] = out.get("bytes_in_allocated_blocks", 0) // 1024
    return out


def type_counts() -> Counter[str]:
    c: Counter[str] = Counter()
    for o in gc.get_objects():
        t = type(o)
        c[f"{t.__module__}.{t.__qualname__}"] += 1
    return c


def diff_counts(after: Counter[str], before: Counter[str], *, per: int = 1, top: int = 40) -> dict:
    d = {k: after[k] - before.get(k, 0) for k in after.keys() | before.keys()}
    items = sorted(((k, v) for k, v in d.items() if v), key=lambda kv: -abs(kv[1]))[:top]
    return {k: (round(v / per, 2) if per > 1 else v) for k, v in items}


OURS = ("gateway/", "recorder/", "store/", "config/")


def short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    try:
        return str(Path(filename).resolve().relative_to(ROOT))
    except ValueError:
        return filename


def trace_stats(snap: tracemalloc.Snapshot, base: tracemalloc.Snapshot, per: int) -> dict:
    """Top allocators per session: by file:line (deepest frame), by the
    innermost frame in our packages or asyncssh, and by traceback."""
    out: dict[str, Any] = {}
    diff = snap.compare_to(base, "lineno")
    out["total_kib_per_session"] = round(sum(d.size_diff for d in diff) / 1024 / per, 2)
    out["by_line"] = [
        {
            "where": f"{short(d.traceback[0].filename)}:{d.traceback[0].lineno}",
            "kib": round(d.size_diff / 1024 / per, 2),
            "blocks": round(d.count_diff / per, 2),
        }
        for d in diff[:30]
    ]
    # Attribute each block to the innermost frame that is ours or a library's
    # we care about (asyncssh, pyte, structlog, uvloop).
    owner_sizes: Counter[str] = Counter()
    site_sizes: Counter[str] = Counter()
    for traces, sign in ((snap.traces, 1), (base.traces, -1)):
        for t in traces:
            where, site = _innermost(t.traceback)
            owner_sizes[where] += sign * t.size
            if site is not None:
                site_sizes[site] += sign * t.size
    out["by_innermost_package_file_kib"] = {
        k: round(v / 1024 / per, 2) for k, v in owner_sizes.most_common() if abs(v) / per > 64
    }
    out["by_innermost_site_kib"] = {
        k: round(v / 1024 / per, 2) for k, v in site_sizes.most_common(40) if v / per > 64
    }
    tb = snap.compare_to(base, "traceback")
    out["by_traceback"] = [
        {
            "kib": round(d.size_diff / 1024 / per, 2),
            "blocks": round(d.count_diff / per, 2),
            "stack": [f"{short(f.filename)}:{f.lineno}" for f in d.traceback][:12],
        }
        for d in tb[:15]
    ]
    return out


_LIBS = ("asyncssh/", "pyte/", "structlog/", "uvloop/", "cryptography/")


def _innermost(tb: tracemalloc.Traceback) -> tuple[str, str | None]:
    for fr in reversed(tb):  # most recent frame first
        s = short(fr.filename)
        if s.startswith(OURS):
            return "/".join(s.split("/")[:2]), f"{s}:{fr.lineno}"
        if s.startswith(_LIBS):
            return s.split("/")[0], f"{s}:{fr.lineno}"
    return "other", None


_ATOMIC = (str, bytes, int, float, type(None), bool)


def _is_shared(o: object) -> bool:
    import types

    return isinstance(
        o, (type, types.ModuleType, types.CodeType, types.FrameType, asyncio.AbstractEventLoop)
    )


def baseline_ids() -> tuple[set[int], list[object]]:
    """Every object alive now (gc-tracked ones and their direct referents),
    kept alive so their ids cannot be reused by new objects."""
    keep: list[object] = []
    ids: set[int] = set()
    for o in gc.get_objects():
        if id(o) not in ids:
            ids.add(id(o))
            keep.append(o)
        for r in gc.get_referents(o):
            if id(r) not in ids:
                ids.add(id(r))
                keep.append(r)
    return ids, keep


PER_SESSION_TYPES = (
    "gateway.live.LiveConnection",
    "gateway.recording.SessionRecording",
    "gateway.server.ClientSession",
    "gateway.server.TargetSession",
    "gateway.server.GatewayServer",
    "recorder.commands.CommandExtractor",
    "recorder.screen.ScreenModel",
    "recorder.terminal.TrackedScreen",
    "recorder.cast.CastWriter",
    "asyncssh.channel.SSHServerChannel",
    "asyncssh.channel.SSHClientChannel",
)


def _name(o: object) -> str:
    t = type(o)
    return f"{t.__module__}.{t.__qualname__}"


def _describe(o: object) -> str:
    if isinstance(o, dict):
        return f"dict({len(o)}) keys {list(o)[:6]!r}"[:160]
    if isinstance(o, (list, tuple, set, frozenset)):
        return f"{type(o).__name__}({len(o)})"
    return f"{_name(o)} {repr(o)[:100]}"


def referrer_chain(obj: object, depth: int = 12) -> list[str]:
    """Who holds ``obj``: one chain of referrers up to something with no
    referrer we can see (a frame, a module dict, a C-level root)."""
    import types

    chain = [_describe(obj)]
    cur = obj
    seen = {id(obj)}
    for _ in range(depth):
        here = sys._getframe()
        refs = [
            r
            for r in gc.get_referrers(cur)
            if id(r) not in seen and r is not here and not isinstance(r, types.FrameType)
        ]
        if not refs:
            break
        # Prefer an object over its __dict__'s dict when both hold it.
        cur = next((r for r in refs if not isinstance(r, (list, dict))), refs[0])
        seen.add(id(cur))
        chain.append(_describe(cur))
    return chain


def held_after_close() -> dict[str, Any]:
    """Per-session objects still alive, and who holds the first of each type."""
    found: dict[str, list[object]] = {}
    for o in gc.get_objects():
        n = _name(o)
        if n in PER_SESSION_TYPES:
            found.setdefault(n, []).append(o)
    out = {n: {"count": len(objs), "held_by": referrer_chain(objs[0])} for n, objs in found.items()}
    found.clear()
    return out


def session_owners(gw: Any) -> list[tuple[str, list[object]]]:
    """Each session's roots, most specific owner first."""
    lives = list(gw.registry)
    owners: dict[str, list[object]] = {
        k: []
        for k in (
            "extractor (CommandExtractor)",
            "screen (ScreenModel)",
            "cast writer (CastWriter)",
            "recording (SessionRecording)",
            "bound logger (structlog)",
            "live (LiveConnection)",
            "client session (ClientSession)",
            "target session (TargetSession)",
            "asyncssh client-facing channel",
            "asyncssh target channel",
            "asyncssh client-facing conn (+GatewayServer)",
            "asyncssh pooled target conn",
        )
    }
    seen_conn: set[int] = set()
    for live in lives:
        rec = live.recording
        if rec is not None:
            if rec.extractor is not None:
                owners["extractor (CommandExtractor)"].append(rec.extractor)
            if rec.screen is not None:
                owners["screen (ScreenModel)"].append(rec.screen)
            owners["cast writer (CastWriter)"].append(rec.writer)
            owners["recording (SessionRecording)"].append(rec)
        log = getattr(live, "log", None)
        if log is not None:
            owners["bound logger (structlog)"].append(log)
        owners["live (LiveConnection)"].append(live)
        client = live.client
        if client is not None:
            owners["client session (ClientSession)"].append(client)
            owners["asyncssh client-facing channel"].append(client.chan)
            conn = client.chan._conn
            if conn is not None and id(conn) not in seen_conn:
                seen_conn.add(id(conn))
                owners["asyncssh client-facing conn (+GatewayServer)"].append(conn)
                if conn._owner is not None:
                    owners["asyncssh client-facing conn (+GatewayServer)"].append(conn._owner)
        tchan = live.target_chan
        if tchan is not None:
            owners["asyncssh target channel"].append(tchan)
            if tchan._session is not None:
                owners["target session (TargetSession)"].append(tchan._session)
    for pooled in gw.pool._pools.values():
        for p in pooled:
            owners["asyncssh pooled target conn"] += [p, p.conn]
    return list(owners.items())


def ownership(owners: list[tuple[str, list[object]]], base: set[int], per: int) -> dict[str, Any]:
    """Objects reachable from each owner's roots (not from the baseline, not
    through another owner's root), as KiB and objects per session, with the
    top types per owner."""
    claimed = set(base)
    for _, roots in owners:
        claimed.update(id(r) for r in roots)
    result: dict[str, Any] = {}
    total = 0
    for name, roots in owners:
        size = 0
        count = 0
        by_type: Counter[str] = Counter()
        stack: list[object] = list(roots)
        while stack:
            o = stack.pop()
            if not isinstance(o, _ATOMIC) and hasattr(o, "__dict__") and not _is_shared(o):
                with contextlib.suppress(Exception):
                    o.__dict__  # noqa: B018  (materialise a 3.11 inline-values dict)
            s = sys.getsizeof(o)
            size += s
            count += 1
            by_type[type(o).__qualname__] += s
            for r in gc.get_referents(o):
                if id(r) in claimed or _is_shared(r):
                    continue
                claimed.add(id(r))
                stack.append(r)
        total += size
        result[name] = {
            "kib_per_session": round(size / 1024 / per, 2),
            "objects_per_session": round(count / per, 1),
            "top_types_kib": {
                k: round(v / 1024 / per, 2) for k, v in by_type.most_common(8) if v / per > 32
            },
        }
    result["total_kib_per_session"] = round(total / 1024 / per, 2)
    return result


# -- the gateway side ---------------------------------------------------------------


async def start_gateway(
    tmp: Path, far: dict[str, Any], *, logging: bool = True, **gateway_keys: Any
) -> Any:
    """The shipped gateway in front of the far side's target; with ``logging``,
    structlog set up as ``shellgate serve`` does (to /dev/null)."""
    from config.loader import parse_config
    from gateway.daemon import Gateway
    from gateway.logs import configure_logging
    from store.sqlite import SqliteStore

    if logging:
        configure_logging("info", open(os.devnull, "w"))  # noqa: SIM115  (lives as long as the run)
    identity = tmp / "identity"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(identity)
    config = parse_config(
        {
            "gateway": {
                "listen": "127.0.0.1:0",
                "data_dir": str(tmp / "var"),
                "host_keys": [str(tmp / "var" / "host_key")],
                **gateway_keys,
            },
            "users": [{"name": "alice", "keys": [far["user_key"]]}],
            "targets": [
                {
                    "name": "t1",
                    "host": "127.0.0.1",
                    "port": far["port"],
                    "host_key": far["host_key"],
                    "identity": str(identity),
                    "logins": ["root"],
                }
            ],
            "policies": [{"users": ["alice"], "targets": ["t1"], "logins": ["root"]}],
        }
    )
    gw = Gateway(config, None, SqliteStore(tmp / "var" / "shellgate.db"))
    await gw.start()
    return gw


async def wait_until(cond: Callable[[], bool], timeout: float = 60.0) -> bool:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        await asyncio.sleep(0.05)
    return True


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _point(label: str, n: int, base_rss: int, *, collect: bool) -> dict[str, Any]:
    if collect:
        gc.collect()
    rss = rss_kib()
    return {
        "label": label,
        "rss_kib": rss,
        "delta_kib": rss - base_rss,
        "kib_per_session": round((rss - base_rss) / n, 1) if n else None,
        "cpu_s": round(cpu_s(), 2),
    }


# -- experiments: changes proposed for files this bench's owner does not own,
# applied at run time so their saving can be measured (--try NAME[=VALUE]).


def _try_settle(value: str) -> None:
    """recorder/commands.py: SETTLE_BYTES (output after a resolved line
    before the extractor's pyte screen is dropped). Since f4f5ab3 it applies
    only after a whole-tail replay; after a cheap one the screen goes at the
    first output past the resolved line (what settle=1 measured)."""
    import recorder.commands

    recorder.commands.SETTLE_BYTES = int(value)  # type: ignore[misc]


def _try_tail(value: str) -> None:
    """recorder/commands.py: TAIL_BYTES (raw output kept to re-engage)."""
    import recorder.commands

    recorder.commands.TAIL_BYTES = int(value)  # type: ignore[misc]


def _try_engage_lines(value: str) -> None:
    """recorder/commands.py: when the extractor re-engages at a line's first
    key, replay only the tail's last ``value`` lines (``resync_start`` of the
    whole ``TAIL_BYTES`` tail replays up to 16 KiB through pyte, ~10 ms).
    Landed in f4f5ab3 (recorder.terminal.engage_replay, with the guards this
    run-time patch lacks); there this sets ``ENGAGE_LINES``."""
    import recorder.commands
    import recorder.terminal

    lines = int(value)
    if hasattr(recorder.terminal, "engage_replay"):
        recorder.terminal.ENGAGE_LINES = lines  # type: ignore[misc]
        return
    whole = recorder.commands.resync_start  # type: ignore[attr-defined]

    def last_lines(tail: bytes) -> bytes:
        end = len(tail)
        for _ in range(lines):
            end = tail.rfind(b"\n", 0, end)
            if end < 0:
                return whole(tail)  # type: ignore[no-any-return]  # fewer lines: as before
        clear = max(tail.rfind(b"\x1b[2J"), tail.rfind(b"\x1bc"))
        return tail[max(end + 1, clear) :]

    recorder.commands.resync_start = last_lines  # type: ignore[attr-defined]


def _landed_in_terminal() -> bool:
    """Whether recorder/terminal.py already shares cells (a332bbe)."""
    import recorder.terminal

    return hasattr(recorder.terminal, "CELL_CACHE")


def _try_intern_chars(_value: str) -> None:
    """recorder/terminal.py: cells share one immutable ``Char`` per
    (attributes, character) instead of a fresh namedtuple each (pyte's
    ``draw`` does ``cursor.attrs._replace(data=char)`` per cell). Landed in
    a332bbe (with an ASCII fast path in ``draw``); a no-op there, kept to
    measure older trees."""
    if _landed_in_terminal():
        return
    from pyte import modes as mo
    from pyte.screens import Char

    from recorder.terminal import TrackedScreen

    cache: dict[tuple[Char, str], Char] = {}

    class InternedChar(Char):  # type: ignore[misc]
        __slots__ = ()

        def _replace(self, **kw: Any) -> Char:  # type: ignore[override]
            data = kw.get("data")
            if data is not None and len(kw) == 1:
                key = (self, data)
                c = cache.get(key)
                if c is None:
                    if len(cache) >= 65536:
                        cache.clear()
                    c = cache[key] = Char._replace(self, data=data)
                return c
            return Char._replace(self, **kw)

    def default_char(self: TrackedScreen) -> Char:
        return InternedChar(data=" ", fg="default", bg="default", reverse=mo.DECSCNM in self.mode)

    reset = TrackedScreen.reset

    def interned_reset(self: TrackedScreen) -> None:
        reset(self)
        self.cursor.attrs = InternedChar(*self.cursor.attrs)  # pyte: Cursor(0, 0) -> Char(" ")

    TrackedScreen.default_char = property(default_char)  # type: ignore[method-assign,assignment]
    TrackedScreen.reset = interned_reset  # type: ignore[method-assign]


def _try_plain_rows(_value: str) -> None:
    """recorder/terminal.py: rows as plain ``StaticDefaultDict`` (pyte makes
    each row through ``StaticDefaultDict[int, Char](...)``: a GenericAlias
    call, which also gives every row an ``__orig_class__`` instance dict), made
    by a factory that holds the screen weakly (pyte's ``lambda`` closes over
    ``self``: every screen is a reference cycle, freed only by the collector).
    Landed in a332bbe (slotted rows); a no-op there, kept to measure older
    trees."""
    if _landed_in_terminal():
        return
    import weakref
    from collections import defaultdict

    from pyte.screens import StaticDefaultDict

    from recorder.terminal import TrackedScreen

    init = TrackedScreen.__init__

    def plain_init(self: TrackedScreen, columns: int, lines: int) -> None:
        init(self, columns, lines)
        screen = weakref.ref(self)
        self.buffer = defaultdict(lambda: StaticDefaultDict(screen().default_char))  # type: ignore[union-attr]

    TrackedScreen.__init__ = plain_init  # type: ignore[method-assign]


def _try_break_cycle(_value: str) -> None:
    """gateway/live.py: ``close()`` lets go of the recording. LiveConnection
    .recording <-> SessionRecording.live is a reference cycle, so a closed
    session (its extractor and pyte screens, ScreenModel, CastWriter, target
    channel) stays in memory until a full (generation 2) collection. Landed in
    dd1cdd9; kept to measure older trees."""
    from gateway.live import LiveConnection

    close = LiveConnection.close

    def close_and_let_go(self: LiveConnection, *args: Any, **kwargs: Any) -> None:
        close(self, *args, **kwargs)
        self.recording = None

    LiveConnection.close = close_and_let_go  # type: ignore[method-assign]


EXPERIMENTS: dict[str, Callable[[str], None]] = {
    "break-cycle": _try_break_cycle,
    "settle": _try_settle,
    "engage-lines": _try_engage_lines,
    "tail": _try_tail,
    "intern-chars": _try_intern_chars,
    "plain-rows": _try_plain_rows,
}


def apply_experiments(names: list[str]) -> None:
    for item in names:
        name, _, value = item.partition("=")
        if name not in EXPERIMENTS:
            raise SystemExit(f"--try {name}: no such experiment (one of {', '.join(EXPERIMENTS)})")
        EXPERIMENTS[name](value)


async def gateway_main(args: argparse.Namespace) -> dict[str, Any]:
    n = args.sessions
    far: FarSide | RemoteFarSide = FarSide() if args.inproc else RemoteFarSide()
    res: dict[str, Any] = {
        "sessions": n,
        "per_conn": args.per_conn,
        "far_side": "in-process" if args.inproc else "child process",
        "detail": args.detail,
        "trace": args.trace,
        "hold": {
            "commands": args.commands,
            "type_every": args.type_every,
            "stream_frac": args.stream_frac,
            "stream_lines": args.stream_lines,
        },
        "python": sys.version.split()[0],
        "asyncssh": asyncssh.__version__,
    }
    apply_experiments(args.try_)
    res["experiments"] = args.try_
    with tempfile.TemporaryDirectory(prefix="sg-mem-") as tmpdir:
        tmp = Path(tmpdir)
        info = await far.start_target()
        gw = await start_gateway(tmp, info)
        try:
            # Warm-up: first dial, first recording, code paths, caches.
            await far.open(gw.port, args.per_conn, args.per_conn, args.batch)
            await far.close()
            await wait_until(lambda: len(gw.registry) == 0)
            await asyncio.sleep(1.5)
            gc.collect()
            base_rss = rss_kib()
            base_counts = type_counts()
            res["baseline"] = {"rss_kib": base_rss, "pymalloc": pymalloc_stats()}
            base_snap = None
            walk_base: tuple[set[int], list[object]] | None = None
            if args.detail:
                # Everything alive now, kept alive (ids stay unique) for the
                # ownership walk.
                walk_base = baseline_ids()
            if args.trace:
                tracemalloc.start(args.frames)
                base_snap = tracemalloc.take_snapshot()
            cycles: list[dict[str, Any]] = []
            for cycle in range(args.cycles):
                c: dict[str, Any] = {"cycle": cycle + 1, "points": []}
                opened = await far.open(gw.port, n, args.per_conn, args.batch)
                c["far_open"] = opened
                await asyncio.sleep(1.5)  # a recording flush and the store writer
                # Per session of the gateway's (a far-side failure may leave
                # a session open there all the same).
                c["live"] = len(gw.registry)
                k = c["live"] or 1
                c["points"].append(_point("open", k, base_rss, collect=False))
                if args.commands or args.stream_lines:
                    c["far_hold"] = await far.hold(
                        args.commands, args.type_every, args.stream_frac, args.stream_lines
                    )
                    await asyncio.sleep(1.5)
                    c["points"].append(_point("held", k, base_rss, collect=False))
                c["points"].append(_point("loaded, after gc.collect", k, base_rss, collect=True))
                c["pymalloc_loaded"] = pymalloc_stats()
                if cycle == 0:
                    counts = type_counts()
                    c["objects_per_session"] = diff_counts(counts, base_counts, per=k)
                    c["objects_per_session_total"] = round(
                        (sum(counts.values()) - sum(base_counts.values())) / k, 1
                    )
                    if args.trace:
                        assert base_snap is not None
                        snap = tracemalloc.take_snapshot()
                        if args.detail:
                            tracemalloc.stop()  # the walk below allocates a lot
                        c["tracemalloc"] = trace_stats(snap, base_snap, k)
                        del snap
                    if args.detail:
                        assert walk_base is not None
                        c["ownership"] = ownership(session_owners(gw), walk_base[0], k)
                c["far_close"] = await far.close()
                await wait_until(lambda: len(gw.registry) == 0)
                await asyncio.sleep(2.0)
                c["points"].append(_point("closed", k, base_rss, collect=False))
                # The daemon trims the heap TRIM_DELAY after a drop it sees
                # on its once-a-second tick (gateway/daemon.py).
                await asyncio.sleep(7.0)
                c["points"].append(_point("closed, +9 s", k, base_rss, collect=False))
                c["daemon_trimmed"] = gw._last_trim > 0
                c["points"].append(_point("closed, after gc.collect", k, base_rss, collect=True))
                c["malloc_trim_ms"] = round(malloc_trim(), 2)
                c["points"].append(_point("closed, after malloc_trim", k, base_rss, collect=False))
                c["pymalloc_closed"] = pymalloc_stats()
                counts = type_counts()
                c["objects_left_after_close"] = diff_counts(counts, base_counts, top=30)
                c["objects_left_total"] = sum(counts.values()) - sum(base_counts.values())
                c["held_after_close"] = held_after_close()
                if args.trace and tracemalloc.is_tracing():
                    # What was allocated since the baseline and is still
                    # alive: the blocks that keep pymalloc arenas from being
                    # freed (whole KiB, not per session).
                    assert base_snap is not None
                    snap = tracemalloc.take_snapshot()
                    c["traced_left_after_close"] = trace_stats(snap, base_snap, 1)
                    del snap
                    tracemalloc.stop()
                c["pool"] = {
                    str(key): [(p.channels, p.usable) for p in ps]
                    for key, ps in gw.pool._pools.items()
                }
                cycles.append(c)
            res["cycles"] = cycles
        finally:
            await gw.stop()
            far.stop()
    return res


def run_role_gateway(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(gateway_main(args))


# -- the orchestrator -----------------------------------------------------------------


def run_child(extra: Iterable[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.session_memory", "--role", "gateway", *extra]
    print(f"[session_memory] {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def summary_line(r: dict[str, Any]) -> str:
    c = r["cycles"][0]
    pts = {p["label"]: p for p in c["points"]}
    last = {p["label"]: p for p in r["cycles"][-1]["points"]}
    held = pts.get("held")
    return (
        f"{r['sessions']} sessions ({r['far_side']} far side): "
        f"open {pts['open']['kib_per_session']} KiB/session"
        + (f", after the hold {held['kib_per_session']}" if held else "")
        + f"; after close +{pts['closed']['delta_kib']} KiB"
        f" (+{pts['closed, after malloc_trim']['delta_kib']} after malloc_trim);"
        f" after cycle {len(r['cycles'])} +{last['closed, after malloc_trim']['delta_kib']} KiB;"
        f" objects left {c['objects_left_total']}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--role", choices=("orchestrate", "gateway", "far"), default="orchestrate")
    p.add_argument("--sessions", type=int, nargs="*", default=None)
    p.add_argument("--per-conn", type=int, default=10)
    p.add_argument("--batch", type=int, default=20, help="client connections opened at once")
    p.add_argument("--cycles", type=int, default=2)
    p.add_argument("--detail", action="store_true", help="ownership walk per owner")
    p.add_argument("--trace", action="store_true", help="tracemalloc top allocators")
    p.add_argument("--frames", type=int, default=12, help="tracemalloc frames")
    p.add_argument("--inproc", action="store_true", help="far side in this process")
    p.add_argument(
        "--commands", type=int, default=10, help="hold: commands each typist types after the open"
    )
    p.add_argument("--type-every", type=float, default=0.5, help="hold: seconds between commands")
    p.add_argument("--stream-frac", type=float, default=0.1, help="hold: share of streamers")
    p.add_argument(
        "--stream-lines",
        type=int,
        default=600,
        help="hold: lines each streamer prints (0.1 s apart)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "session_memory.json")
    p.add_argument(
        "--try",
        dest="try_",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help=f"apply an experiment ({', '.join(EXPERIMENTS)}); repeatable",
    )
    args = p.parse_args(argv)
    if args.role == "far":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(far_main())
        return 0
    if args.role == "gateway":
        args.sessions = (args.sessions or [200])[0]
        print(json.dumps(run_role_gateway(args), indent=1))
        return 0
    sizes = args.sessions or [200, 1000]

    def child_args(*, hold: bool, cycles: int) -> list[str]:
        out = ["--per-conn", str(args.per_conn), "--batch", str(args.batch)]
        out += ["--cycles", str(cycles), "--type-every", str(args.type_every)]
        out += ["--stream-frac", str(args.stream_frac)]
        out += ["--commands", str(args.commands if hold else 0)]
        out += ["--stream-lines", str(args.stream_lines if hold else 0)]
        out += ["--inproc"] if args.inproc else []
        return out + [f"--try={t}" for t in args.try_]

    runs = [
        run_child(["--sessions", str(n), *child_args(hold=True, cycles=args.cycles)]) for n in sizes
    ]
    runs.append(
        run_child(["--sessions", str(min(sizes)), "--detail", *child_args(hold=True, cycles=1)])
    )
    runs.append(run_child(["--sessions", "100", "--trace", *child_args(hold=False, cycles=1)]))
    for r in runs:
        print(summary_line(r), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs}, indent=1
        )
        + "\n"
    )
    print(f"[session_memory] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
