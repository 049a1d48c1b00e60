"""The relay with in-process asyncssh servers: a real Gateway (real store, real
recordings) in front of an in-process asyncssh target, driven by an asyncssh
client. Byte streams, exit status, stderr, EOF, backpressure, pooling, and the
sshtune packet change."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from config.loader import parse_config
from gateway import pool, sshtune
from gateway.daemon import Gateway
from store.base import QueryFilter
from store.sqlite import SqliteStore


@dataclass
class TargetStats:
    produced: int = 0
    logins: int = 0
    sessions: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    auth_delay: float = 0.0
    in_auth: int = 0
    max_in_auth: int = 0


async def _target_process(process: asyncssh.SSHServerProcess[bytes], stats: TargetStats) -> None:
    stats.sessions += 1
    cmd = process.command or ""
    if cmd.startswith("produce "):
        total = int(cmd.split()[1])
        chunk = b"x" * 65536
        sent = 0
        while sent < total:
            n = min(len(chunk), total - sent)
            process.stdout.write(chunk[:n])
            sent += n
            stats.produced += n
            await process.stdout.drain()
        stats.done.set()
        process.exit(0)
    elif cmd == "sha256":
        h = hashlib.sha256()
        while True:
            data = await process.stdin.read(65536)
            if not data:
                break
            h.update(data)
        process.stdout.write(h.hexdigest().encode())
        process.stderr.write(b"to stderr")
        process.exit(7)
    else:
        process.stderr.write(b"unknown command\n")
        process.exit(127)


class _CountingServer(asyncssh.SSHServer):
    def __init__(self, stats: TargetStats) -> None:
        self.stats = stats

    def begin_auth(self, username: str) -> bool:
        self.stats.logins += 1
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        st = self.stats
        st.in_auth += 1
        st.max_in_auth = max(st.max_in_auth, st.in_auth)
        try:
            await asyncio.sleep(st.auth_delay)
        finally:
            st.in_auth -= 1
        return True


@dataclass
class Rig:
    gateway: Gateway
    stats: TargetStats
    user_key: asyncssh.SSHKey

    async def client(self) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            "127.0.0.1",
            self.gateway.port,
            username="root@t1",
            client_keys=[self.user_key],
            known_hosts=None,
            config=None,
            agent_path=None,
        )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    stats = TargetStats()
    target_key = asyncssh.generate_private_key("ssh-ed25519")
    target = await asyncssh.create_server(
        lambda: _CountingServer(stats),
        "127.0.0.1",
        0,
        server_host_keys=[target_key],
        process_factory=lambda p: _target_process(p, stats),
        encoding=None,
    )
    identity = tmp_path / "identity"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(identity)
    user_key = asyncssh.generate_private_key("ssh-ed25519")
    config = parse_config(
        {
            "gateway": {
                "listen": "127.0.0.1:0",
                "data_dir": str(tmp_path / "var"),
                "host_keys": [str(tmp_path / "var" / "host_key")],
            },
            "users": [{"name": "alice", "keys": [user_key.export_public_key().decode()]}],
            "targets": [
                {
                    "name": "t1",
                    "host": "127.0.0.1",
                    "port": target.get_port(),
                    "host_key": target_key.export_public_key().decode(),
                    "identity": str(identity),
                    "logins": ["root"],
                }
            ],
            "policies": [{"users": ["alice"], "targets": ["t1"], "logins": ["root"]}],
        }
    )
    store = SqliteStore(tmp_path / "var" / "shellgate.db")
    gateway = Gateway(config, None, store)
    await gateway.start()
    try:
        yield Rig(gateway, stats, user_key)
    finally:
        await gateway.stop()
        target.close()


async def test_upload_exit_status_and_stderr(rig: Rig) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 5)
    async with await rig.client() as conn:
        result = await conn.run("sha256", input=blob, encoding=None)
    assert result.exit_status == 7
    assert result.stdout == hashlib.sha256(blob).hexdigest().encode()
    assert result.stderr == b"to stderr"
    await rig.gateway.store.flush()
    rows = await rig.gateway.store.connections(QueryFilter())
    assert rows[-1].reason == "client_exit" and rows[-1].bytes_in == len(blob)


async def test_a_client_that_stops_reading_stalls_the_target(rig: Rig) -> None:
    total = 64 * 1024 * 1024
    async with await rig.client() as conn:
        chan, session = await conn.create_session(
            asyncssh.SSHClientSession, f"produce {total}", encoding=None
        )
        chan.pause_reading()
        await asyncio.sleep(1.5)
        stalled_at = rig.stats.produced
        await asyncio.sleep(1.0)
        # Bounded by the SSH windows and write buffers on the way, not by the total.
        assert stalled_at < 16 * 1024 * 1024
        assert rig.stats.produced - stalled_at < 1024 * 1024
        got = 0

        def count(data: bytes, datatype: object) -> None:
            nonlocal got
            got += len(data)

        session.data_received = count  # type: ignore[method-assign]
        chan.resume_reading()
        await asyncio.wait_for(chan.wait_closed(), 60)
    assert got == total
    assert rig.stats.done.is_set()


async def test_channels_share_one_pooled_target_connection(rig: Rig) -> None:
    async with await rig.client() as conn:
        for _ in range(3):
            r = await conn.run("produce 10", encoding=None)
            assert r.stdout == b"x" * 10
    assert rig.stats.logins == 1
    assert rig.stats.sessions == 3


async def test_a_burst_of_sessions_dials_target_connections_in_parallel(rig: Rig) -> None:
    """25 sessions at once, 10 channels per target connection: three logins,
    dialled side by side (the target is slow to authenticate), every session
    waiting for its reserved slot on a connection still being dialled."""
    rig.stats.auth_delay = 0.3
    async with await rig.client() as conn:
        results = await asyncio.gather(*(conn.run("produce 10", encoding=None) for _ in range(25)))
    assert [r.stdout for r in results] == [b"x" * 10] * 25
    assert rig.stats.logins == 3
    assert 2 <= rig.stats.max_in_auth <= pool.PARALLEL_DIALS


async def test_sshtune_halves_the_packets_on_the_wire(rig: Rig) -> None:
    """Same workload with and without the wrap: the client counts the packets
    the gateway sent it (``_recv_seq`` is the SSH sequence number)."""
    assert sshtune.installed()
    tuned_send = asyncssh.connection.SSHConnection.send_packet
    original = tuned_send.__wrapped__  # type: ignore[attr-defined]
    # the direct data path (write, send-buffer flush) never sends IGNORE
    # either: off for the untuned run
    chan_cls = asyncssh.channel.SSHChannel
    tuned_write = chan_cls.write
    original_write = tuned_write.__wrapped__  # type: ignore[attr-defined]
    tuned_flush = chan_cls._flush_send_buf  # type: ignore[attr-defined]
    original_flush = tuned_flush.__wrapped__

    async def packets_for_one_run(conn: asyncssh.SSHClientConnection) -> int:
        before = conn._recv_seq
        r = await conn.run("produce 200000", encoding=None)
        assert r.stdout == b"x" * 200000
        return conn._recv_seq - before

    async with await rig.client() as conn:
        tuned = await packets_for_one_run(conn)
        asyncssh.connection.SSHConnection.send_packet = original  # type: ignore[method-assign]
        chan_cls.write = original_write  # type: ignore[method-assign]
        chan_cls._flush_send_buf = original_flush  # type: ignore[attr-defined]
        try:
            untuned = await packets_for_one_run(conn)
        finally:
            asyncssh.connection.SSHConnection.send_packet = tuned_send  # type: ignore[method-assign]
            chan_cls.write = tuned_write  # type: ignore[method-assign]
            chan_cls._flush_send_buf = tuned_flush  # type: ignore[attr-defined]
    assert tuned * 1.6 < untuned, (tuned, untuned)
