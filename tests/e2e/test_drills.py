"""Drills (issue 6): a bad day for the bastion, end to end against the real
daemon (``shellgate serve`` in a subprocess) and real OpenSSH sshd targets.

Quick versions run in ``make test``; the big ones (``tests/soak``) call the same
``drill_*`` functions with bigger numbers under ``make soak``. Clients are
asyncssh in this process (hundreds of OpenSSH processes would measure fork,
not the gateway); the daemon is measured from /proc (fds, VmRSS) and its
control socket (``list`` reports its asyncio task count).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cast_validator import validate_cast
from harness.gateway import GatewayProcess
from harness.sshd import TargetSshd
from harness.waiting import poll_async, small_tmpfs

from gateway.control import control_request

pytestmark = pytest.mark.e2e

MakeGateway = Callable[..., GatewayProcess]


# -- helpers ----------------------------------------------------------------------------


def _key(gw: GatewayProcess, user: str) -> asyncssh.SSHKey:
    return asyncssh.read_private_key(gw.user(user).key.private)


async def connect(
    gw: GatewayProcess,
    login: str = "root@web1",
    user: str = "alice",
    key: asyncssh.SSHKey | None = None,
    **kw: Any,
) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        gw.port,
        username=login,
        client_keys=[key or _key(gw, user)],
        known_hosts=None,
        agent_path=None,
        config=None,
        preferred_auth="publickey",
        connect_timeout=15,
        **kw,
    )


async def run(
    gw: GatewayProcess,
    command: str,
    login: str = "root@web1",
    *,
    pty: bool = False,
    timeout: float = 30.0,
    **kw: Any,
) -> asyncssh.SSHCompletedProcess:
    async with await connect(gw, login) as conn:
        return await asyncio.wait_for(
            conn.run(command, encoding=None, term_type="xterm" if pty else None, **kw), timeout
        )


async def real_user_ok(gw: GatewayProcess, login: str = "root@web1") -> None:
    r = await run(gw, "echo real-user-ok", login)
    assert r.exit_status == 0 and r.stdout == b"real-user-ok\n", r


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pid_of(gw: GatewayProcess) -> int:
    assert gw.popen is not None
    return gw.popen.pid


def assert_alive(gw: GatewayProcess) -> None:
    assert gw.popen is not None and gw.popen.poll() is None, gw.log_text()[-3000:]


def assert_no_traceback(gw: GatewayProcess) -> None:
    text = gw.log_text()
    assert "Traceback" not in text, text[text.find("Traceback") - 2000 :][:6000]


async def task_count(gw: GatewayProcess) -> int:
    reply = await control_request(gw.data_dir, {"op": "list"})
    return int(reply["tasks"])


wait_for = poll_async


def connections(gw: GatewayProcess, **filters: str) -> list[dict[str, Any]]:
    args = ["connections"]
    for k, v in filters.items():
        args += [f"--{k}", v]
    return gw.cli_json(*args)


def cast_output(path: str | Path) -> tuple[dict[str, Any], list[tuple[float, str, str]], str]:
    header, events = validate_cast(Path(path))
    return header, events, "".join(d for _, c, d in events if c == "o")


def valid_prefix(path: str | Path) -> list[tuple[float, str, str]]:
    """A cast cut short by a write failure: valid up to its last complete line."""
    raw = Path(path).read_bytes()
    _, events = validate_cast(raw[: raw.rfind(b"\n") + 1])
    return events


def text_blob(size: int) -> bytes:
    line = b"shellgate drill line %08d the quick brown fox jumps over the lazy dog\n"
    out = bytearray()
    n = 0
    while len(out) < size:
        out += line % n
        n += 1
    return bytes(out[:size])


async def drain(stream: asyncssh.SSHReader[bytes], into: bytearray | None = None) -> bytes:
    buf = bytearray() if into is None else into
    try:
        while chunk := await stream.read(65536):
            buf += chunk
    except (asyncssh.Error, OSError):
        pass
    return bytes(buf)


async def read_until(
    stream: asyncssh.SSHReader[bytes], marker: bytes, timeout: float = 15
) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} not seen; have {buf[-500:]!r}"
        chunk = await asyncio.wait_for(stream.read(65536), left)
        assert chunk, f"EOF before {marker!r}; have {buf[-500:]!r}"
        buf += chunk
    return buf


# -- 1. crash -----------------------------------------------------------------------------


async def drill_crash(make_gateway: MakeGateway, sshd: TargetSshd, sessions: int, seconds: float):
    gw = make_gateway({"web1": sshd}, recording_toml="flush_interval = 0.2")
    # something already closed, whose events are committed before the crash
    await real_user_ok(gw)
    conns = [await connect(gw) for _ in range(sessions)]
    procs_, drains = [], []
    for i, conn in enumerate(conns):
        cmd = "yes shellgate-crash-drill-0123456789-abcdefghijklmnopqrstuvwxyz"
        if i % 2:
            cmd = "i=0; while :; do i=$((i+1)); echo line $i; done"
        proc = await conn.create_process(cmd, encoding=None, term_type="xterm" if i % 2 else None)
        procs_.append(proc)
        drains.append(asyncio.ensure_future(drain(proc.stdout)))
    await asyncio.sleep(seconds)
    live = await wait_for(
        lambda: (lambda rs: rs if len(rs) == sessions else None)(
            [c for c in connections(gw) if c["state"] == "connected"]
        ),
        timeout=20,
        message="connected rows",
    )
    assert len(live) == sessions, live
    committed = {e["id"]: e for e in gw.cli_json("events")}
    gw.kill()
    # every client sees its connection end (no hang)
    outs = await asyncio.wait_for(asyncio.gather(*drains), 15)
    assert all(len(o) > 100_000 for o in outs), [len(o) for o in outs]
    for conn in conns:
        conn.close()
    gw.start()
    rows = {c["id"]: c for c in connections(gw)}
    for c in live:
        row = rows[c["id"]]
        assert (row["state"], row["reason"], row["closed_by"]) == (
            "closed",
            "gateway_crashed",
            "system",
        ), row
        _header, events, _out = cast_output(row["cast_path"])
        assert events[-1][1:] == ("m", "closed: gateway_crashed"), events[-3:]
        # (how much output a cast kept is test_drill_newcomer_served_under_heavy_output's job)
    after = {e["id"]: e for e in gw.cli_json("events")}
    lost = [e for i, e in committed.items() if after.get(i) != e]
    assert not lost, lost[:5]
    crashed = [
        e for e in after.values() if e["type"] == "closed" and e["reason"] == "gateway_crashed"
    ]
    assert len(crashed) == sessions
    await real_user_ok(gw)
    assert_no_traceback(gw)


async def test_drill_crash_kill9_during_heavy_output(
    make_gateway: MakeGateway, target_sshd: TargetSshd
) -> None:
    await drill_crash(make_gateway, target_sshd, sessions=4, seconds=2.0)


async def test_drill_newcomer_served_under_heavy_output(
    make_gateway: MakeGateway, target_sshd: TargetSshd
) -> None:
    gw = make_gateway({"web1": target_sshd}, recording_toml="flush_interval = 0.2")
    conns = [await connect(gw) for _ in range(4)]
    drains = []
    try:
        for i, conn in enumerate(conns):
            cmd = "yes shellgate-drill" if i % 2 == 0 else "while :; do echo line; done"
            proc = await conn.create_process(
                cmd, encoding=None, term_type="xterm" if i % 2 else None
            )
            drains.append(asyncio.ensure_future(drain(proc.stdout)))
        await asyncio.sleep(1.5)
        casts = list((gw.data_dir / "recordings").glob("*.cast"))
        sizes = [c.stat().st_size for c in casts]
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            banner = await asyncio.wait_for(reader.read(100), 8)
        finally:
            writer.close()
        assert banner.startswith(b"SSH-2.0-"), banner
        # Flushes keep happening under load: every cast grows within a few
        # flush intervals (0.2 s each).
        # (Polled: this test's own Python client decrypts all four streams and
        # may leave one stalled by backpressure for a moment.)
        await wait_for(
            lambda: all(c.stat().st_size > s for c, s in zip(casts, sizes, strict=True)),
            timeout=5,
            message="every cast to grow (flushes under load)",
        )
    finally:
        for conn in conns:
            conn.close()
        for d in drains:
            d.cancel()


# -- 2. target loss -----------------------------------------------------------------------


async def test_drill_target_loss(
    make_gateway: MakeGateway, target_sshd: TargetSshd, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with TargetSshd(tmp_path_factory.mktemp("sshd2")) as other:
        gw = make_gateway({"web1": target_sshd, "web2": other})
        async with await connect(gw) as conn:
            proc = await conn.create_process(encoding=None, term_type="xterm")
            await read_until(proc.stdout, b"root@target")
            row = await wait_for(
                lambda: [c for c in connections(gw, target="web1") if c["state"] == "connected"],
                message="connected",
            )
            # a second session on the other target, live across the loss
            async with await connect(gw, "root@web2") as conn2:
                proc2 = await conn2.create_process(encoding=None, term_type="xterm")
                await read_until(proc2.stdout, b"root@target")
                target_sshd.kill()
                err = await asyncio.wait_for(drain(proc.stderr), 15)
                await asyncio.wait_for(proc.wait_closed(), 15)
                assert b"shellgate: " in err, err
                assert b"lost" in err, err
                assert proc.exit_status not in (None, 0), proc.exit_status
                proc2.stdin.write(b"echo still-$((40+2))\n")
                await read_until(proc2.stdout, b"still-42")
                proc2.stdin.write(b"exit\n")
                await asyncio.wait_for(proc2.wait_closed(), 10)
        closed = gw.wait_events(row[0]["id"], types=["closed"])[-1]
        assert (closed["reason"], closed["closed_by"]) == ("target_lost", "system"), closed
        await real_user_ok(gw, "root@web2")
        # the target comes back on its port: the gateway dials it again
        target_sshd.start()
        await real_user_ok(gw, "root@web1")
        assert_alive(gw)
        assert_no_traceback(gw)


# -- 3. load without loss ----------------------------------------------------------------


async def drill_load(
    make_gateway: MakeGateway, sshd: TargetSshd, tmp_path: Path, sessions: int, size: int
) -> None:
    text = text_blob(size)
    binary = os.urandom(size)
    text_path, bin_path = tmp_path / "load-text.txt", tmp_path / "load-binary.bin"
    text_path.write_bytes(text)
    bin_path.write_bytes(binary)
    want = {"text": hashlib.sha256(text).hexdigest(), "bin": hashlib.sha256(binary).hexdigest()}
    gw = make_gateway({"web1": sshd}, gateway_toml=f"max_startups = {max(100, sessions)}")
    per_conn = 5  # channels per client SSH connection
    handshakes = asyncio.Semaphore(20)

    async def one_conn(first: int) -> list[tuple[str, str, bytes, int | None]]:
        async with handshakes:
            conn = await connect(gw)
        async with conn:

            async def one(i: int) -> tuple[str, str, bytes, int | None]:
                kind = ("pty", "text", "bin")[i % 3]
                if kind == "pty":
                    cmd = f"stty raw -echo; head -c {size} {text_path}"
                else:
                    cmd = f"head -c {size} {bin_path if kind == 'bin' else text_path}"
                r = await conn.run(cmd, encoding=None, term_type="xterm" if kind == "pty" else None)
                return kind, cmd, r.stdout, r.exit_status

            n = min(per_conn, sessions - first)
            return await asyncio.gather(*(one(first + k) for k in range(n)))

    t0 = time.monotonic()
    results = [
        r
        for batch in await asyncio.wait_for(
            asyncio.gather(*(one_conn(f) for f in range(0, sessions, per_conn))),
            60 + sessions,
        )
        for r in batch
    ]
    took = time.monotonic() - t0
    assert len(results) == sessions
    bad = [
        (kind, status, len(out))
        for kind, _, out, status in results
        if status != 0
        or hashlib.sha256(out).hexdigest() != want["bin" if kind == "bin" else "text"]
    ]
    assert not bad, f"{len(bad)} of {sessions} sessions got wrong bytes: {bad[:5]}"
    rows = await wait_for(
        lambda: (
            lambda rs: (
                rs if len(rs) == sessions and all(r["state"] == "closed" for r in rs) else None
            )
        )([r for r in connections(gw) if r["target"] == "web1"]),
        message="every connection closed",
    )
    kinds = {"text": 0, "bin": 0}
    for row in rows:
        assert row["reason"] == "client_exit", row
        assert row["bytes_out"] == size, row
        header, _, out = cast_output(row["cast_path"])
        if str(header.get("command", "")).endswith(str(bin_path)):
            kinds["bin"] += 1  # binary output is recorded as its size, not its bytes
            _, events = validate_cast(Path(row["cast_path"]))
            assert (events[-2][1], events[-2][2]) == ("m", f"binary output: {size} bytes"), events
        else:
            kinds["text"] += 1
            assert out.encode() == text, f"cast {row['cast_path']} output differs"
    assert kinds == {"bin": sessions // 3, "text": sessions - sessions // 3}, kinds
    assert_no_traceback(gw)
    print(f"load drill: {sessions} x {size} bytes in {took:.1f}s")


async def test_drill_load_without_loss(
    make_gateway: MakeGateway, target_sshd: TargetSshd, tmp_path: Path
) -> None:
    await drill_load(make_gateway, target_sshd, tmp_path, sessions=20, size=1_000_000)


# -- 4. hostile input ---------------------------------------------------------------------


async def raw_until_eof(
    port: int, send: bytes, hold: float, timeout: float = 10.0
) -> tuple[float, bytes]:
    """Open a TCP connection, send ``send``, wait ``hold`` (0: not at all) and
    then read until the server closes; returns (seconds until EOF, bytes read)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = b""
    try:
        if send:
            writer.write(send)
            await writer.drain()
        if hold:
            await asyncio.sleep(hold)
            return time.monotonic() - t0, got
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            got += chunk
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    return time.monotonic() - t0, got


async def bad_key_login(gw: GatewayProcess, login: str = "root@web1") -> float:
    key = asyncssh.generate_private_key("ssh-ed25519")
    t0 = time.monotonic()
    with pytest.raises(asyncssh.PermissionDenied):
        async with await connect(gw, login, key=key):
            pass
    return time.monotonic() - t0


async def drill_hostile_flood(
    make_gateway: MakeGateway, sshd: TargetSshd, attempts: int, concurrency: int, rss_slack_kib: int
) -> None:
    gw = make_gateway({"web1": sshd}, gateway_toml='login_grace_time = "2s"')
    pid = pid_of(gw)
    for _ in range(5):
        await real_user_ok(gw)
    await asyncio.sleep(0.5)
    rss0, fds0 = rss_kib(pid), fd_count(pid)
    gate = asyncio.Semaphore(concurrency)
    kinds = ("random", "version-only", "bad-key", "garbage-after-version")
    done = dict.fromkeys((*kinds, "denied"), 0)

    async def hostile(i: int) -> None:
        kind = kinds[i % len(kinds)]
        async with gate:
            if kind == "random":
                await raw_until_eof(gw.port, os.urandom(1 + i % 5000), 0, timeout=10)
            elif kind == "version-only":
                await raw_until_eof(gw.port, b"SSH-2.0-drill_half_handshake\r\n", 0, timeout=10)
            elif kind == "bad-key":
                try:
                    await bad_key_login(gw)
                    done["denied"] += 1
                except asyncssh.ConnectionLost:
                    pass  # login_grace_time ran out while failures were being slowed down
            else:
                await raw_until_eof(gw.port, b"SSH-2.0-drill\r\n" + os.urandom(3000), 0, 10)
            done[kind] += 1

    async def real_users_during() -> int:
        ok = 0
        for _ in range(3):
            await asyncio.sleep(0.5)
            await real_user_ok(gw)
            ok += 1
        return ok

    t0 = time.monotonic()
    flood = asyncio.gather(*(hostile(i) for i in range(attempts)))
    during = await real_users_during()
    await asyncio.wait_for(flood, 30 + attempts * 0.2)
    took = time.monotonic() - t0
    assert during == 3
    assert sum(done[k] for k in kinds) == attempts, done
    assert_alive(gw)
    await real_user_ok(gw)
    peak = rss_kib(pid)
    # every unauthenticated connection is gone, and memory comes back near baseline
    await wait_for(lambda: fd_count(pid) <= fds0 + 2, message=f"fds back to {fds0}")
    await wait_for(
        lambda: rss_kib(pid) <= rss0 + rss_slack_kib,
        timeout=20,
        message=f"rss back near {rss0} KiB (now {rss_kib(pid)})",
    )
    audit = gw.cli_json("audit")
    failed = [a for a in audit if a["action"] == "auth_failed"]
    assert len(failed) >= done["denied"] > 0, (len(failed), done)
    assert_no_traceback(gw)
    print(
        f"hostile flood: {attempts} in {took:.1f}s; rss {rss0} -> peak {peak} -> "
        f"{rss_kib(pid)} KiB; fds {fds0} -> {fd_count(pid)}"
    )


async def test_drill_hostile_flood(make_gateway: MakeGateway, target_sshd: TargetSshd) -> None:
    await drill_hostile_flood(make_gateway, target_sshd, 100, concurrency=20, rss_slack_kib=20_000)


async def test_drill_login_grace_time(make_gateway: MakeGateway, target_sshd: TargetSshd) -> None:
    gw = make_gateway({"web1": target_sshd}, gateway_toml='login_grace_time = "2s"')
    silent, half = await asyncio.gather(
        raw_until_eof(gw.port, b"", 0, timeout=10),
        raw_until_eof(gw.port, b"SSH-2.0-drill\r\n", 0, timeout=10),
    )
    for took, got in (silent, half):
        assert got.startswith(b"SSH-2.0-"), got[:100]
        assert 1.5 <= took <= 5, took
    await real_user_ok(gw)


async def test_drill_max_startups(make_gateway: MakeGateway, target_sshd: TargetSshd) -> None:
    gw = make_gateway(
        {"web1": target_sshd}, gateway_toml='max_startups = 5\nlogin_grace_time = "4s"'
    )
    held = []
    for _ in range(5):
        held.append(await asyncio.open_connection("127.0.0.1", gw.port))
        held[-1][1].write(b"SSH-2.0-drill\r\n")
    await asyncio.sleep(0.3)
    took, _ = await raw_until_eof(gw.port, b"SSH-2.0-drill\r\n", 0, timeout=10)
    assert took < 1.0, f"an excess unauthenticated connection was kept {took:.1f}s"
    with pytest.raises((asyncssh.Error, OSError)):
        await run(gw, "true")
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.3)
    await real_user_ok(gw)
    assert_alive(gw)


async def test_drill_auth_failures_slowed_and_audited(
    make_gateway: MakeGateway, target_sshd: TargetSshd
) -> None:
    gw = make_gateway({"web1": target_sshd})
    times = [await bad_key_login(gw) for _ in range(8)]
    assert times[-1] >= times[0] + 0.4, times
    t0 = time.monotonic()
    await real_user_ok(gw)  # a good key is not slowed down
    assert time.monotonic() - t0 < 2.0
    failed = [a for a in gw.cli_json("audit") if a["action"] == "auth_failed"]
    assert len(failed) >= 8, failed
    assert all(a["client_addr"].startswith("127.0.0.1") for a in failed), failed
    assert all("SHA256:" in a["detail"] for a in failed), failed


def paramiko_exec(gw: GatewayProcess, login: str, command: str) -> tuple[int, bytes, bytes]:
    """asyncssh refuses control characters in a user name (SASLprep); Paramiko sends them."""
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            "127.0.0.1",
            gw.port,
            username=login,
            pkey=paramiko.Ed25519Key.from_private_key_file(str(gw.user("alice").key.private)),
            allow_agent=False,
            look_for_keys=False,
            timeout=15,
        )
        _, stdout, stderr = client.exec_command(command, timeout=15)
        out, err = stdout.read(), stderr.read()
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()


async def refused_line(gw: GatewayProcess, login: str) -> bytes:
    status, out, err = await asyncio.to_thread(paramiko_exec, gw, login, "echo should-not-run")
    assert status == 1 and out == b"", (status, out, err)
    assert err.startswith(b"shellgate: ") and err.count(b"\n") == 1, err[:300]
    return err


async def test_drill_hostile_requests(make_gateway: MakeGateway, target_sshd: TargetSshd) -> None:
    gw = make_gateway({"web1": target_sshd})
    pid = pid_of(gw)
    # logins with control characters: asyncssh's SASLprep of the user name
    # refuses them at authentication (the connection is dropped, as for a wrong key)
    import paramiko

    for login in ("root\x1b[2J@web1", "root@web\x1b]0;pwned\x07", "root@web1\nshellgate: fake"):
        with pytest.raises(paramiko.SSHException):
            await refused_line(gw, login)
    # a 10 KB login
    # a 10 KB login: dropped at authentication like the above
    with pytest.raises(paramiko.SSHException):
        await refused_line(gw, "x" * 10_000 + "@web1")
    # absurd pty sizes: handled (the shell runs), no memory explosion
    rss0 = rss_kib(pid)
    async with await connect(gw) as conn:
        proc = await conn.create_process(
            "echo huge-pty; stty size", encoding=None, term_type="xterm", term_size=(100000, 100000)
        )
        out = await asyncio.wait_for(drain(proc.stdout), 15)
        assert b"huge-pty" in out, out
        proc2 = await conn.create_process(encoding=None, term_type="xterm", term_size=(80, 24))
        await read_until(proc2.stdout, b"root@target")
        proc2.change_terminal_size(100000, 100000)
        proc2.stdin.write(b"echo after-resize\n")
        await read_until(proc2.stdout, b"after-resize\r\n")
        proc2.stdin.write(b"exit\n")
        await asyncio.wait_for(proc2.wait_closed(), 10)
    assert rss_kib(pid) < rss0 + 100_000
    # env flood: 500 variables
    r = await run(gw, "echo env-ok", env={f"LC_DRILL_{i}": "v" * 100 for i in range(500)})
    assert r.stdout == b"env-ok\n", r
    r = await run(gw, "echo env-ok", env={f"DRILL_{i}": "v" * 100 for i in range(500)})
    assert r.stdout == b"env-ok\n", r
    # window-change storm on a shell
    async with await connect(gw) as conn:
        proc = await conn.create_process(encoding=None, term_type="xterm")
        await read_until(proc.stdout, b"root@target")
        for i in range(1000):
            proc.change_terminal_size(40 + i % 200, 10 + i % 60)
        proc.stdin.write(b"stty size; echo storm-$((6*7))\n")
        await read_until(proc.stdout, b"storm-42")
        proc.stdin.write(b"exit\n")
        await asyncio.wait_for(proc.wait_closed(), 15)
    # output full of invalid UTF-8 and escape sequences through a pty shell
    async with await connect(gw) as conn:
        proc = await conn.create_process(encoding=None, term_type="xterm")
        await read_until(proc.stdout, b"root@target")
        proc.stdin.write(b"head -c 5000000 /dev/urandom; echo; stty sane; echo END-$((1+1))\n")
        await read_until(proc.stdout, b"END-2", timeout=60)
        proc.stdin.write(b"exit\n")
        await asyncio.wait_for(proc.wait_closed(), 15)
    assert_alive(gw)
    for row in connections(gw, target="web1"):
        if row["cast_path"]:
            validate_cast(Path(row["cast_path"]))
    await real_user_ok(gw)
    assert_no_traceback(gw)


# -- 5. disk trouble ----------------------------------------------------------------------


@pytest.mark.parametrize("on_failure", ["close", "continue"])
async def test_drill_disk_full(
    make_gateway: MakeGateway, target_sshd: TargetSshd, tmp_path: Path, on_failure: str
) -> None:
    text = text_blob(2_000_000)
    (tmp_path / "big.txt").write_bytes(text)
    rec = "flush_interval = 0.2" + ('\non_failure = "continue"' if on_failure == "continue" else "")
    gw = make_gateway({"web1": target_sshd}, start=False, recording_toml=rec)
    try:
        with small_tmpfs(gw.data_dir / "recordings"):
            gw.start()
            await real_user_ok(gw)  # a small cast fits
            async with await connect(gw) as conn:
                proc = await conn.create_process(encoding=None, term_type="xterm")
                await read_until(proc.stdout, b"root@target")
                big = tmp_path / "big.txt"
                script = f"stty raw -echo; cat {big}; sleep 1; echo BIG-$((2*3))\n"
                proc.stdin.write(script.encode())
                out = bytearray()
                err = (
                    await asyncio.wait_for(
                        asyncio.gather(drain(proc.stdout, out), drain(proc.stderr)), 30
                    )
                    if on_failure == "close"
                    else None
                )
                if on_failure == "continue":
                    out += await read_until(proc.stdout, b"BIG-6", timeout=30)
                    proc.stdin.write(b"exit\n")
                    await asyncio.wait_for(proc.wait_closed(), 10)
            row = await wait_for(
                # The big session: the only one that outgrew the 256 KiB tmpfs.
                lambda: [
                    c
                    for c in connections(gw)
                    if c["state"] == "closed" and c["bytes_out"] > 200_000
                ],
                message="the big connection closed",
            )
            row = row[0]
            if on_failure == "close":
                assert err is not None
                stderr = err[1]
                assert b"shellgate: " in stderr and b"could not be written" in stderr, stderr
                assert (row["reason"], row["closed_by"]) == ("error", "system"), row
                assert "could not be written" in row["message"], row
                assert proc.exit_status not in (None, 0)
            else:
                assert text in bytes(out)
                assert row["reason"] == "client_exit", row
            # Valid up to its last complete line (the first flush may not have
            # fit at all, so no output event is required).
            events = valid_prefix(row["cast_path"])
            assert all(code in "oimr" for _, code, _ in events)
            audit = [a for a in gw.cli_json("audit") if a["action"] == "recording_failed"]
            assert audit and audit[0]["connection_id"] == row["id"], audit
            # the store keeps working: a new connection is recorded (refused
            # with a clear line when recordings are required, run otherwise)
            r = await run(gw, "echo after-disk-full")
            last = await wait_for(
                lambda: [c for c in connections(gw) if c["state"] == "closed"][-1:]
            )
            last = last[0]
            assert last["id"] != row["id"], last
            failed = {
                a["connection_id"]
                for a in gw.cli_json("audit")
                if a["action"] == "recording_failed"
            }
            if last["id"] in failed and on_failure == "close":
                # no room for even a small cast: refused or closed with a clear line
                assert b"shellgate: " in r.stderr and b"recording" in r.stderr, r
                assert last["reason"] == "error", last
            else:
                assert r.stdout == b"after-disk-full\n", r
                if last["id"] not in failed:
                    validate_cast(Path(last["cast_path"]))
            assert_alive(gw)
            assert_no_traceback(gw)
            gw.cleanup()
    finally:
        gw.cleanup()


# -- 6. leaks ---------------------------------------------------------------------------


async def drill_leaks(
    make_gateway: MakeGateway, sshd: TargetSshd, sessions: int, concurrency: int, rss_slack_kib: int
) -> None:
    gw = make_gateway({"web1": sshd})
    pid = pid_of(gw)

    async def burst(n: int) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                r = await run(gw, "true")
                assert r.exit_status == 0, r

        await asyncio.gather(*(one() for _ in range(n)))

    await burst(max(20, concurrency * 5))  # warm up: pool, caches, store
    await asyncio.sleep(1.0)
    fds0, rss0, tasks0 = fd_count(pid), rss_kib(pid), await task_count(gw)
    t0 = time.monotonic()
    await burst(sessions)
    took = time.monotonic() - t0
    await wait_for(lambda: fd_count(pid) <= fds0 + 2, message=f"fds back to {fds0}")
    tasks1 = tasks0
    for _ in range(50):
        tasks1 = await task_count(gw)
        if tasks1 <= tasks0 + 2:
            break
        await asyncio.sleep(0.2)
    assert tasks1 <= tasks0 + 2, (tasks0, tasks1)
    await wait_for(
        lambda: rss_kib(pid) <= rss0 + rss_slack_kib,
        timeout=20,
        message=f"rss back near {rss0} KiB (now {rss_kib(pid)})",
    )
    rows = gw.cli_json("connections", "--limit", "5")
    assert all(r["reason"] == "client_exit" for r in rows), rows
    assert_no_traceback(gw)
    print(
        f"leak drill: {sessions} sessions in {took:.1f}s; fds {fds0}->{fd_count(pid)}, "
        f"tasks {tasks0}->{tasks1}, rss {rss0}->{rss_kib(pid)} KiB"
    )


async def test_drill_leaks_short_sessions(
    make_gateway: MakeGateway, target_sshd: TargetSshd
) -> None:
    await drill_leaks(make_gateway, target_sshd, 200, concurrency=4, rss_slack_kib=10_000)
