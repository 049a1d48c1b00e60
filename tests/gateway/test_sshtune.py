"""gateway.sshtune's wraps of asyncssh, each against plain in-process asyncssh
peers: the behaviour the wrap must keep (keepalive probes after silence, AES-GCM
across rekeys, packet logs at debug level 3)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncssh
import pytest

from gateway import sshtune

GCM = ["aes128-gcm@openssh.com"]
CHACHA = ["chacha20-poly1305@openssh.com"]


SERVER_CONNS: list[asyncssh.SSHServerConnection] = []


class _Server(asyncssh.SSHServer):
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        SERVER_CONNS.append(conn)

    def begin_auth(self, username: str) -> bool:
        return False  # no auth needed


async def _process(process: asyncssh.SSHServerProcess[bytes]) -> None:
    cmd = process.command or ""
    if cmd.startswith("tick "):
        # one small write every `interval` seconds, `count` times
        interval, count = float(cmd.split()[1]), int(cmd.split()[2])
        for i in range(count):
            process.stdout.write(b"t%d\n" % i)
            await asyncio.sleep(interval)
        process.exit(0)
    elif cmd.startswith("burst "):
        # `count` small writes without yielding: one packet each, all sent
        # before the peer reads (as a pty's output piles up in a socket)
        for i in range(int(cmd.split()[1])):
            process.stdout.write(b"t%d\n" % i)
        await process.stdout.drain()
        process.exit(0)
    else:  # echo stdin back until EOF
        while data := await process.stdin.read(65536):
            process.stdout.write(data)
        process.exit(0)


@pytest.fixture(autouse=True, params=["native", "python"])
def packet_crypto(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs twice: AES-GCM packets sealed and opened by
    gateway._wire (C), and by the pure-Python path it replaces."""
    if request.param == "python":
        monkeypatch.setattr(sshtune, "_wire", None)
    else:
        assert sshtune.native(), "gateway._wire is not built (make setup builds it)"
    return str(request.param)


@pytest.fixture
async def server() -> AsyncIterator[Any]:
    sshtune.install()
    SERVER_CONNS.clear()
    srv = await asyncssh.create_server(
        _Server,
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        process_factory=_process,
        encoding=None,
        encryption_algs=GCM + CHACHA,
        window=64 * 1024,  # small, so the window runs out mid-burst
    )
    try:
        yield srv
    finally:
        srv.close()
        await srv.wait_closed()


async def _connect(server: Any, **kw: Any) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        server.get_port(),
        username="u",
        known_hosts=None,
        config=None,
        agent_path=None,
        client_keys=None,
        **{"encryption_algs": GCM, **kw},
    )


async def test_keepalive_is_rearmed_by_traffic_and_probes_after_silence(server: Any) -> None:
    conn = await _connect(server, keepalive_interval=0.3, keepalive_count_max=3)
    probes: list[float] = []
    original = conn._make_keepalive_request

    async def counted() -> None:
        probes.append(asyncio.get_running_loop().time())
        await original()

    conn._make_keepalive_request = counted  # type: ignore[method-assign]
    async with conn:
        # traffic every 0.1 s for 1.2 s: the 0.3 s keepalive never fires
        r = await conn.run("tick 0.1 12", encoding=None)
        assert r.exit_status == 0
        assert probes == []
        # then silence: a probe within ~one interval, answered, connection kept
        await asyncio.sleep(0.8)
        assert probes, "no keepalive probe after 0.8 s of silence"
        assert conn._keepalive_count == 0  # the server answered
        r = await conn.run("tick 0 1", encoding=None)
        assert r.stdout == b"t0\n"


async def test_keepalive_closes_a_silent_peer(server: Any) -> None:
    conn = await _connect(server, keepalive_interval=0.2, keepalive_count_max=1)
    async with conn:
        # the server stops reading (and so stops answering): the client gives up
        SERVER_CONNS[-1]._transport.pause_reading()
        await asyncio.wait_for(conn.wait_closed(), 5)


async def test_gcm_relays_exactly_across_rekeys(server: Any) -> None:
    """The cached AES-GCM context belongs to one key: with a rekey every 64 KiB,
    2 MB each way must still arrive byte for byte."""
    payload = bytes(range(256)) * 8192  # 2 MiB
    async with await _connect(server, rekey_bytes=65536) as conn:
        r = await conn.run("echo", input=payload, encoding=None)
        assert r.stdout == payload
        assert conn.get_extra_info("send_cipher") == GCM[0]


async def test_packet_logs_still_appear_at_debug_level_3(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with await _connect(server) as conn:
        caplog.set_level(logging.DEBUG, logger="asyncssh")
        asyncssh.set_debug_level(3)
        try:
            await conn.run("tick 0 1", encoding=None)
        finally:
            asyncssh.set_debug_level(1)
        logged = caplog.text
        caplog.clear()
        await conn.run("tick 0 1", encoding=None)
        quiet = caplog.text
    assert "MSG_CHANNEL_DATA" in logged
    assert "MSG_CHANNEL_DATA" not in quiet


class _Counted:
    """Counts the packets asyncssh's own receive path builds and the sends
    that go through its channel send buffer: what the direct path avoids."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from asyncssh import channel, connection

        self.parsed = 0
        self.buffered = 0
        base = connection.SSHPacket
        counter = self

        class CountedPacket(base):  # type: ignore[misc, valid-type]
            def __init__(self, packet: bytes) -> None:
                counter.parsed += 1
                super().__init__(packet)

        flush = channel.SSHChannel._flush_send_buf

        def counted_flush(chan: Any) -> None:
            counter.buffered += 1
            flush(chan)

        monkeypatch.setattr(connection, "SSHPacket", CountedPacket)
        monkeypatch.setattr(channel.SSHChannel, "_flush_send_buf", counted_flush)

        # and the packets gateway._wire seals and opens (when it is in use)
        self.sealed_in_c = 0
        self.opened_in_c = 0
        wire = sshtune._wire
        if wire is not None:

            class CountedWire:
                @staticmethod
                def seal_data(*args: Any) -> bytes:
                    counter.sealed_in_c += 1
                    return bytes(wire.seal_data(*args))

                @staticmethod
                def open_packet(*args: Any) -> bytes | None:
                    counter.opened_in_c += 1
                    return wire.open_packet(*args)  # type: ignore[no-any-return]

            monkeypatch.setattr(sshtune, "_wire", CountedWire)


async def _echo_exactly(conn: asyncssh.SSHClientConnection, chunks: list[bytes]) -> bytes:
    """Write ``chunks`` one write each to an echoing channel; what came back."""
    writer, reader, _ = await conn.open_session("echo", encoding=None)
    want = sum(map(len, chunks))

    async def read_all() -> bytes:
        got = bytearray()
        while len(got) < want:
            data = await reader.read(65536)
            if not data:
                break
            got += data
        return bytes(got)

    reading = asyncio.create_task(read_all())
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    got = await asyncio.wait_for(reading, 30)
    writer.write_eof()
    return got


def _mixed_chunks() -> list[bytes]:
    sizes = [1] * 300 + [7, 100, 1000, 4096, 32768, 32769, 70000, 200000] + [1] * 50
    return [bytes((i + k) % 256 for k in range(n)) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("cipher", [GCM, CHACHA], ids=["aes-gcm", "chacha20"])
async def test_channel_data_takes_the_direct_path_and_arrives_exactly(
    server: Any, monkeypatch: pytest.MonkeyPatch, cipher: list[str], packet_crypto: str
) -> None:
    """Keystroke-sized data skips asyncssh's send buffer (and with AES-GCM its
    packet objects);
    chunks bigger than a packet or than the 64 KiB window, and a rekey every
    64 KiB, go through asyncssh's own path: all arrive byte for byte."""
    counted = _Counted(monkeypatch)
    chunks = _mixed_chunks()
    async with await _connect(server, encryption_algs=cipher, rekey_bytes=65536) as conn:
        got = await _echo_exactly(conn, chunks)
        assert conn.get_extra_info("send_cipher") == cipher[0]
    assert got == b"".join(chunks)
    # 350 one-byte writes each way; buffered sends (and, with AES-GCM, which
    # has the direct receive loop, parsed packets) stay a small share: the big
    # chunks, window adjusts, rekeys, channel set-up
    assert counted.buffered < 200, counted.buffered
    if cipher == GCM:
        assert counted.parsed < 200, counted.parsed
        if packet_crypto == "native":  # most of the 350 one-byte writes, at least
            assert counted.sealed_in_c >= 300, counted.sealed_in_c
            assert counted.opened_in_c >= 300, counted.opened_in_c
        else:
            assert counted.sealed_in_c == counted.opened_in_c == 0
    else:
        assert counted.parsed > 350, counted.parsed  # every one-byte write, at least


async def test_channel_data_at_debug_level_2_takes_asyncssh_path(
    server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    counted = _Counted(monkeypatch)
    chunks = [b"k"] * 50
    async with await _connect(server) as conn:
        caplog.set_level(logging.DEBUG, logger="asyncssh")
        asyncssh.set_debug_level(2)
        try:
            got = await _echo_exactly(conn, chunks)
        finally:
            asyncssh.set_debug_level(1)
    assert got == b"k" * 50
    assert counted.parsed > 50  # every data packet (50 keys in, their echoes) parsed by asyncssh
    assert "Received 1 data byte" in caplog.text


class _Collect(asyncssh.SSHClientSession[bytes]):
    def __init__(self) -> None:
        self.got = bytearray()
        self.more = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.got += data
        self.more.set()


async def test_data_for_a_paused_channel_is_held_in_order_then_delivered(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backpressure: while a session has paused reading, CHANNEL_DATA that
    arrives is held for it (the direct loop, no packet objects), window
    accounting and all. With a 16 KiB window, the ~24 KB of small packets can
    only all arrive through the WINDOW_ADJUSTs sent once reading resumes:
    everything arrives, in order."""
    counted = _Counted(monkeypatch)
    want = b"".join(b"t%d\n" % i for i in range(4000))
    async with await _connect(server) as conn:
        chan, base = await conn.create_session(
            _Collect, "tick 0 4000", encoding=None, window=16 * 1024
        )
        session = cast(_Collect, base)
        chan.pause_reading()
        # what the window lets through piles up, undelivered
        for _ in range(250):
            if sum(len(d) for d, _t in chan._recv_buf) >= 8 * 1024:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        held = sum(len(d) for d, _t in chan._recv_buf)  # type: ignore[attr-defined]
        assert 8 * 1024 <= held <= 16 * 1024, held
        assert len(session.got) < 1024  # at most what came before the pause took hold
        parsed_while_paused = counted.parsed
        chan.resume_reading()
        while len(session.got) < len(want):
            session.more.clear()
            await asyncio.wait_for(session.more.wait(), 10)
        assert bytes(session.got) == want
    # ~1,500 small packets were held: opened by the direct loop, not asyncssh's parser
    assert parsed_while_paused < 50, parsed_while_paused
    assert counted.parsed < 200, counted.parsed


class _CountCalls(_Collect):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.eof = asyncio.Event()
        self.closed = asyncio.Event()
        self.after_eof = 0  # data calls after the EOF (there must be none)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.calls += 1
        self.after_eof += self.eof.is_set()
        super().data_received(data, datatype)

    def eof_received(self) -> bool:
        self.eof.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


async def test_consecutive_packets_for_a_channel_reach_its_session_as_one_piece(
    server: Any,
) -> None:
    """A read holding many small CHANNEL_DATA packets (a pty's output) is handed
    to each session in one call per run of packets, not one per packet; two
    channels interleaved on one connection each get exactly their bytes, in
    order, and the EOF after them comes after them."""
    want = [b"".join(b"t%d\n" % i for i in range(3000))] * 2
    async with await _connect(server) as conn:
        opened = [await conn.create_session(_CountCalls, "burst 3000", encoding=None) for _ in want]
        sessions = [cast(_CountCalls, s) for _c, s in opened]
        for s in sessions:
            await asyncio.wait_for(s.closed.wait(), 20)
        for s, w in zip(sessions, want, strict=True):
            assert bytes(s.got) == w
            assert s.after_eof == 0
        calls = sum(s.calls for s in sessions)
        assert calls < 6000 // 4, calls


async def test_send_buffer_flushes_take_the_direct_path_and_arrive_exactly(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes far bigger than the peer's 64 KiB window wait in asyncssh's send
    buffer and go out as WINDOW_ADJUSTs come in: sealed by the direct path,
    not one asyncssh send_packet each, and byte for byte (also across the
    rekeys every MiB, which asyncssh's own flush starts)."""
    from asyncssh import connection
    from asyncssh.constants import MSG_CHANNEL_DATA

    sent_by_asyncssh = 0
    send_packet = connection.SSHConnection.send_packet

    def counted(self: Any, pkttype: int, *args: bytes, **kw: Any) -> None:
        nonlocal sent_by_asyncssh
        if pkttype == MSG_CHANNEL_DATA and isinstance(self, asyncssh.SSHClientConnection):
            sent_by_asyncssh += 1
        send_packet(self, pkttype, *args, **kw)

    monkeypatch.setattr(connection.SSHConnection, "send_packet", counted)
    chunks = [bytes((i + k) % 251 for k in range(n)) for i, n in enumerate([300_000] * 7)]
    async with await _connect(server, rekey_bytes=1 << 20) as conn:
        got = await _echo_exactly(conn, chunks)
    assert got == b"".join(chunks)
    # ~2 MB at most 32 KiB a packet through a 64 KiB window: 64+ packets
    # each way; the client's went out of the direct flush but for the few
    # around each of the two rekeys (65 went through asyncssh without it)
    assert sent_by_asyncssh < 20, sent_by_asyncssh


async def test_a_forged_packet_after_auth_closes_that_connection_only(server: Any) -> None:
    """A packet whose tag does not verify, on a connection in the direct
    receive loop's steady state: the loop refuses it, asyncssh's own path
    raises its MAC error and disconnects that peer; the nonce was left as it
    was, so nothing was delivered, and the server serves the next client."""
    async with await _connect(server) as conn:
        got = await _echo_exactly(conn, [b"a", b"b"])
        assert got == b"ab"
        victim = SERVER_CONNS[-1]
        received: list[bytes] = []
        session = next(iter(victim._channels.values()))._session
        original = session.data_received
        session.data_received = lambda data, datatype: (  # type: ignore[method-assign]
            received.append(data),
            original(data, datatype),
        )
        forged = (48).to_bytes(4, "big") + bytes(range(48)) + bytes(16)
        conn._transport.write(forged)
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert victim._transport is None, "the server kept a connection that sent a forged packet"
        assert received == []
    async with await _connect(server) as conn2:
        assert await _echo_exactly(conn2, [b"still here"]) == b"still here"
