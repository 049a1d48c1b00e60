"""Tuning of asyncssh for a relay: what we change in the library, and why.

asyncssh (2.x) sends an empty SSH_MSG_IGNORE before *every* encrypted packet
after key exchange (``SSHConnection.send_packet``). That is a countermeasure
for CBC-mode ciphers, whose next IV an attacker could otherwise predict; it
does nothing for the AEAD and CTR ciphers shellgate offers on both legs (no
CBC is offered, see ``config.models.DEFAULT_CIPHERS`` and ``gateway.pool``).
For a relay it doubles packets, encryptions and send() calls on both legs: the
benchmark profile put the socket send at the top of a keystroke's cost.

``install()`` wraps ``send_packet`` to drop exactly that packet (type IGNORE
with an empty string); every other packet goes through unchanged. shellgate
never sends IGNORE packets of its own. A test checks the wrap is installed
and that relayed data still round-trips; bench/ measures the effect.

Second, fair reads. libuv (uvloop) reads a readable socket up to 32 times per
loop turn, and asyncssh processes every packet of each read at once, so a few
full-speed streams made one loop turn last seconds: a new client waited ~10 s
for the banner and the store's writer (one await per statement) fell far
behind (tests/e2e/test_drills.py). After each read, the connection's transport
is paused and resumed on the next loop turn, so every connection gets at most
one read per turn and timers, tasks and new connections run in between.
asyncssh never pauses its transport itself, so this does not fight its own
flow control (which is per channel, by SSH windows). Only a big read pauses:
libuv reads again in the same turn only after a read that filled its buffer,
so a small read (a keystroke, its echo) already ends the connection's turn,
and pausing it would cost two epoll updates per keystroke for nothing.

Third, keepalive timers. asyncssh cancels and re-creates its keepalive timer
on every read; on a keystroke that is two timer operations per packet. The
wrap only stamps the time of the read and, when the timer fires, re-arms it
for the rest of the interval if data came in since: the same keepalive
behaviour (a probe after ``keepalive_interval`` of silence), fewer timers.

Fourth, AES-GCM contexts. asyncssh builds a new ``AESGCM(key)`` (a key
schedule) for every packet it seals or opens; the wrap keeps one per cipher
object (a cipher object lives for one key, so a rekey gets a fresh one). The
nonce handling is asyncssh's own, unchanged.

Fifth, packet logging. asyncssh formats a log line for every packet sent and
received (name lookup, byte counts, a payload copy) before its logger drops it
below debug level 3. The wrap skips that work unless level 3 is on, so
``asyncssh.set_debug_level(3)`` still logs every packet.

Sixth, a direct path for channel data, the packets a relay is made of. In
asyncssh a keystroke's CHANNEL_DATA goes through ~15 Python calls on the way
out (write, send buffer, window loop, channel and connection ``send_packet``,
framing, encryption shim, ``_send``) and ~20 on the way in (packet object,
handler lookup, ``process_packet`` dispatch, ``_process_data``, accept,
deliver, awaitable check, finish). In the steady state (keys exchanged, user
authenticated, no compression, no rekey due, nothing queued, the data fits
the peer's window and packet size, logging below debug level 2) the wraps do
the same work inline: the same framing, padding, encryption, sequence
numbers, window accounting and WINDOW_ADJUST. Anything else takes asyncssh's
own path unchanged, including every other packet type. Padding comes from a
pool of ``os.urandom`` bytes rather than one ``getrandom`` call per packet.
The receive side is AES-GCM's only (the default offer): its header wrap opens
every whole packet in the input buffer in one loop and cuts the buffer once.
That loop also holds data for a channel whose session paused reading
(backpressure from the other leg; asyncssh's resume flushes it, in order) and
applies a plain channel's WINDOW_ADJUST itself: in a pty stream those were a
fifth of the target's packets and one per ~28 KiB the client took in. A run
of consecutive data packets for one channel reaches its session as one piece
(a read from a pty's sshd holds several ~4 KiB packets: the relay, the
recording and the client write then run once per read, not per packet). And
when a peer's window reopens, what waited in a channel's send buffer is
sealed the same way and sent in one writev (a client that fell behind the
stream otherwise sent everything through asyncssh's per-packet path).

Seventh, the AES-GCM work of those direct paths in C (gateway/_wire.c, built
by setup.py): a CHANNEL_DATA packet framed, padded and sealed, or a packet
opened, in one call on asyncssh's own cipher object (its key and nonce), so
asyncssh's path and this one still take turns on one connection. In Python
that was a join of five pieces, cryptography's AESGCM (argument checks and
two copies) and the nonce stepped through int conversions: ~6 us a packet,
~1 us in C, four packets per echoed keystroke. Without the module (not
built, or ``SHELLGATE_NATIVE=0``) the Python code does the same work.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from asyncssh import channel as _channel
from asyncssh import connection as _connection
from asyncssh import encryption as _encryption
from asyncssh import logging as _logging
from asyncssh import packet as _packet
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE
from asyncssh.crypto import cipher as _cipher
from asyncssh.misc import DisconnectError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_EMPTY_STRING = b"\x00\x00\x00\x00"  # SSH wire encoding of String(b"")
_installed = False


def _load_wire() -> Any:
    """gateway._wire (the C sealing and opening of AES-GCM packets, built by
    setup.py when a compiler and libssl-dev are there), or None: then the
    pure-Python code below does the same work. ``SHELLGATE_NATIVE=0`` turns
    it off (tests run both paths; bench/ compares them)."""
    if os.environ.get("SHELLGATE_NATIVE", "1") == "0":
        return None
    try:
        from gateway import _wire
    except ImportError:
        return None
    return _wire


_wire = _load_wire()
_GCM_OVERHEAD = 4 + 16  # the length field and the tag, around the packet


def native() -> bool:
    """Whether the relay seals and opens AES-GCM packets in C (gateway._wire)."""
    return _wire is not None


# A read this big may have filled uvloop's read buffer (256 KiB), after which
# libuv would read the same socket again within this loop turn.
FAIR_READ_BYTES = 32 * 1024
# asyncssh re-slices its whole input buffer for every packet it takes off the
# front: a 256 KiB read of 4 KiB pty packets meant ~16 MB of copying. Fed in
# pieces of this size, the copying stays proportional to the data.
_FEED_BYTES = 16 * 1024


def install() -> None:
    """Stop asyncssh's per-packet IGNORE padding; fair reads (idempotent)."""
    global _installed
    if _installed:
        return
    original = _connection.SSHConnection.send_packet

    def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,):
            return
        original(self, pkttype, *args, handler=handler)

    send_packet.__wrapped__ = original  # type: ignore[attr-defined]
    _connection.SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
    _install_fair_reads()
    _install_quiet_packet_log()
    _install_lazy_keepalive()
    _install_cached_gcm()
    _install_data_fast_path()
    _installed = True


def _install_fair_reads() -> None:
    original = _connection.SSHConnection.data_received

    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        if len(data) <= _FEED_BYTES or (
            type(self._recv_encryption) is _encryption.GCMEncryption
            and self._auth_complete
            and self._decompressor is None
            and _logging.SSHLogger._debug_level < 2
        ):
            # The direct path's AES-GCM loop cuts the buffer once per read, so
            # the read goes in whole; and asyncssh's data_received and
            # _recv_data are inlined here (three calls per keystroke's packet):
            inpbuf = self._inpbuf
            self._inpbuf = inpbuf + data if inpbuf else data
            if self._keepalive_timer is not None and self._keepalive_interval:
                self._sg_last_rx = self._loop.time()  # the lazy keepalive's stamp
            else:
                self._reset_keepalive_timer()
            try:
                while self._inpbuf and self._recv_handler():
                    pass
            except DisconnectError as exc:
                self._send_disconnect(exc.code, exc.reason, exc.lang)
                self._force_close(exc)
            except Exception:
                self.internal_error()
            if self._transport is None:
                return
        else:
            view = memoryview(data)
            for at in range(0, len(data), _FEED_BYTES):
                original(self, bytes(view[at : at + _FEED_BYTES]), datatype)
                if self._transport is None:
                    return  # closed while processing
        if len(data) < FAIR_READ_BYTES:
            return
        transport = self._transport
        if transport is None or getattr(self, "_sg_read_paused", False):
            return
        try:
            transport.pause_reading()
        except (AttributeError, RuntimeError):
            return  # closing, or a transport that cannot pause
        self._sg_read_paused = True
        self._loop.call_soon(_resume_reading, self)

    data_received.__wrapped__ = original  # type: ignore[attr-defined]
    _connection.SSHConnection.data_received = data_received  # type: ignore[method-assign]


def _install_quiet_packet_log() -> None:
    original = _packet.SSHPacketLogger._log_packet

    def _log_packet(self: Any, msg: str, pkttype: int, pktid: Any, packet: Any, note: str) -> None:
        if self.logger._debug_level >= 3:
            original(self, msg, pkttype, pktid, packet, note)

    _log_packet.__wrapped__ = original  # type: ignore[attr-defined]
    _packet.SSHPacketLogger._log_packet = _log_packet  # type: ignore[method-assign]


def _install_lazy_keepalive() -> None:
    cls = _connection.SSHConnection
    original_reset = cls._reset_keepalive_timer
    original_fire = cls._keepalive_timer_callback

    def _reset_keepalive_timer(self: Any) -> None:
        if self._keepalive_timer is None or not self._keepalive_interval:
            self._sg_last_rx = None
            original_reset(self)
        elif self._auth_complete:
            self._sg_last_rx = self._loop.time()

    def _keepalive_timer_callback(self: Any) -> None:
        last = getattr(self, "_sg_last_rx", None)
        self._sg_last_rx = None
        if last is not None and self._keepalive_interval:
            due = last + self._keepalive_interval
            if due > self._loop.time():
                self._keepalive_timer = self._loop.call_at(due, self._keepalive_timer_callback)
                return
        original_fire(self)

    _reset_keepalive_timer.__wrapped__ = original_reset  # type: ignore[attr-defined]
    _keepalive_timer_callback.__wrapped__ = original_fire  # type: ignore[attr-defined]
    cls._reset_keepalive_timer = _reset_keepalive_timer  # type: ignore[method-assign]
    cls._keepalive_timer_callback = _keepalive_timer_callback  # type: ignore[method-assign]


_GCM_TAG = 16


_IV_MASK = 0xFFFFFFFFFFFFFFFF


def _aead(cipher: Any) -> AESGCM:
    """The AES-GCM context of an asyncssh ``GCMCipher`` (one per key)."""
    aead = cipher.__dict__.get("_sg_aead")
    if aead is None:
        aead = cipher._sg_aead = AESGCM(cipher._key)
    return aead


def _next_iv(iv: bytes) -> bytes:
    """RFC 5647's nonce step, as ``GCMCipher._update_iv``: the 64-bit invocation
    counter after the 4-byte fixed field goes up by one."""
    return iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _IV_MASK).to_bytes(8, "big")


def _install_cached_gcm() -> None:
    cls = _cipher.GCMCipher

    def encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = _aead(self).encrypt(self._iv, data, header)
        self._update_iv()
        return header + sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]

    def verify_and_decrypt(self: Any, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        try:
            opened: bytes | None = _aead(self).decrypt(self._iv, data + mac, header)
        except InvalidTag:
            opened = None
        self._update_iv()
        return opened

    encrypt_and_sign.__wrapped__ = cls.encrypt_and_sign  # type: ignore[attr-defined]
    verify_and_decrypt.__wrapped__ = cls.verify_and_decrypt  # type: ignore[attr-defined]
    cls.encrypt_and_sign = encrypt_and_sign  # type: ignore[method-assign]
    cls.verify_and_decrypt = verify_and_decrypt  # type: ignore[method-assign]


_DATA_HEADER = struct.Struct(">BII")  # MSG_CHANNEL_DATA, recipient channel, length
_ADJUST = struct.Struct(">II")  # WINDOW_ADJUST's recipient channel, bytes to add
_ADJUST_STATES = frozenset(("open", "eof_pending", "eof"))  # as _process_window_adjust
_PAD_POOL_BYTES = 4096
_pad_pool = b""
_pad_at = 0


def _padding(n: int) -> bytes:
    """``n`` random bytes, cut from a pool refilled by ``os.urandom``."""
    global _pad_pool, _pad_at
    at = _pad_at
    if at + n > len(_pad_pool):
        _pad_pool = os.urandom(_PAD_POOL_BYTES)
        at = 0
    _pad_at = at + n
    return _pad_pool[at : at + n]


class _Opened:
    """Stands in for the receive cipher while asyncssh finishes a packet this
    module already decrypted (its ``_recv_packet`` decrypts, then dispatches)."""

    __slots__ = ("packet_data",)

    def __init__(self, packet_data: bytes) -> None:
        self.packet_data = packet_data

    def decrypt_packet(self, seq: int, first: bytes, rest: bytes, hdrlen: int, mac: bytes) -> bytes:
        return self.packet_data


def _seal_data(conn: Any, enc: Any, send_chan: int, data: Any, out: list[bytes]) -> None:
    """One CHANNEL_DATA packet carrying ``data``, framed, padded and sealed as
    asyncssh's ``send_packet`` does, appended to ``out`` in pieces (for one
    writev); the connection's send sequence number and rekey byte count move
    on as they do there."""
    n = len(data)
    if _wire is not None and type(enc) is _encryption.GCMEncryption:
        sealed = _wire.seal_data(
            enc._cipher, send_chan, data, conn._send_blocksize, conn._send_enchdrlen
        )
        out.append(sealed)
        conn._send_seq = (conn._send_seq + 1) & 0xFFFFFFFF
        conn._rekey_bytes_sent += len(sealed) - _GCM_OVERHEAD
        return
    padlen = -(conn._send_enchdrlen + 9 + n) % conn._send_blocksize
    if padlen < 4:
        padlen += conn._send_blocksize
    packet = b"".join(
        (
            padlen.to_bytes(1, "big"),
            _DATA_HEADER.pack(MSG_CHANNEL_DATA, send_chan, n),
            data,
            _padding(padlen),
        )
    )
    pktlen = len(packet)
    header = pktlen.to_bytes(4, "big")
    seq = conn._send_seq
    if type(enc) is _encryption.GCMEncryption:
        cipher = enc._cipher
        iv = cipher._iv
        out.append(header)
        out.append(_aead(cipher).encrypt(iv, packet, header))
        cipher._iv = _next_iv(iv)
    else:
        sealed, mac = enc.encrypt_packet(seq, header, packet)
        out.append(sealed)
        out.append(mac)
    conn._send_seq = (seq + 1) & 0xFFFFFFFF
    conn._rekey_bytes_sent += pktlen


def _install_data_fast_path() -> None:
    conn_cls = _connection.SSHConnection
    chan_cls = _channel.SSHChannel
    original_recv = conn_cls._recv_packet
    original_pkthdr = conn_cls._recv_pkthdr
    original_write = chan_cls.write
    original_flush = chan_cls._flush_send_buf  # type: ignore[attr-defined]
    logger_cls = _logging.SSHLogger
    gcm_enc = _encryption.GCMEncryption
    plain: dict[type, bool] = {}  # channel class -> takes data as SSHChannel does

    def takes_plain_data(cls: type) -> bool:
        ok = plain.get(cls)
        if ok is None:
            ok = plain[cls] = (
                cls._accept_data is chan_cls._accept_data  # type: ignore[attr-defined]
                and cls._deliver_data is chan_cls._deliver_data  # type: ignore[attr-defined]
                and cls.process_packet is chan_cls.process_packet  # type: ignore[attr-defined]
                and cls._packet_handlers.get(MSG_CHANNEL_DATA)  # type: ignore[attr-defined]
                is chan_cls._packet_handlers.get(MSG_CHANNEL_DATA)  # type: ignore[attr-defined]
                and cls._packet_handlers.get(MSG_CHANNEL_WINDOW_ADJUST)  # type: ignore[attr-defined]
                is chan_cls._packet_handlers.get(MSG_CHANNEL_WINDOW_ADJUST)  # type: ignore[attr-defined]
                and cls._flush_send_buf is chan_cls._flush_send_buf  # type: ignore[attr-defined]
            )
        return ok

    def finish_in_asyncssh(self: Any, enc: Any, packet_data: bytes) -> bool:
        """asyncssh's _recv_packet, on a packet this module already opened."""
        self._recv_encryption = _Opened(packet_data)
        try:
            return bool(original_recv(self))
        finally:
            if isinstance(self._recv_encryption, _Opened):
                self._recv_encryption = enc

    def _recv_pkthdr(self: Any) -> bool:
        # AES-GCM (the only cipher offered by default): every whole packet in
        # the input buffer in one loop, the buffer cut once at the end rather
        # than re-sliced per packet. CHANNEL_DATA for a channel in the plain
        # open state goes straight to its session, as asyncssh's
        # _process_data, _accept_data and _deliver_data would take it (inline:
        # a Python call costs more than most of this loop's lines).
        enc = self._recv_encryption
        if (
            type(enc) is not gcm_enc
            or self._decompressor is not None
            or not self._auth_complete
            or logger_cls._debug_level >= 2
        ):
            return bool(original_pkthdr(self))
        inp = self._inpbuf
        end = len(inp)
        pos = 0
        cipher = enc._cipher
        wire = _wire
        aead = _aead(cipher) if wire is None else None
        maxlen = self._max_recv_pktlen
        blocksize = self._recv_blocksize
        channels = self._channels
        refused = False
        view = memoryview(inp)  # slices of it are not copies
        # Data for one channel in consecutive packets is handed on as one
        # piece (see _hand_on): a pty sends ~4 KiB packets, a read holds
        # several, and the session, recording and client write run once.
        held_chan: Any = None
        held: list[bytes] = []
        try:
            while end - pos >= blocksize:
                pktlen = int.from_bytes(view[pos : pos + 4], "big")
                stop = pos + 4 + pktlen + _GCM_TAG
                if pktlen > maxlen:
                    refused = True  # asyncssh's own path raises its error
                    break
                if stop > end:
                    break  # the rest of this packet is still on its way
                if wire is not None:
                    opened = wire.open_packet(cipher, inp, pos, stop)  # steps the nonce
                    if opened is None:
                        refused = True  # asyncssh's own path raises its MAC error
                        break
                    packet_data = opened
                else:
                    iv = cipher._iv
                    try:
                        packet_data = aead.decrypt(  # type: ignore[union-attr]
                            iv, view[pos + 4 : stop], view[pos : pos + 4]
                        )
                    except InvalidTag:
                        refused = True  # asyncssh's own path raises its MAC error
                        break
                    cipher._iv = iv[:4] + (
                        (int.from_bytes(iv[4:], "big") + 1) & _IV_MASK  # as _next_iv
                    ).to_bytes(8, "big")
                chan = None
                pkttype = packet_data[1]
                datalen = len(packet_data) - packet_data[0] - 10  # padding, header
                if pkttype == MSG_CHANNEL_DATA and datalen > 0:
                    _, recv_chan, n = _DATA_HEADER.unpack_from(packet_data, 1)
                    chan = channels.get(recv_chan)
                    if held and chan is not held_chan:
                        _hand_on(held_chan, held)  # in order, before checking this one
                        if self._transport is None:
                            return False
                    if chan is not None and (
                        n != datalen
                        or chan._recv_state != "open"
                        or datalen > chan._recv_window
                        or chan._encoding is not None
                        or chan._session is None
                        or chan._send_state in ("close_pending", "closed")
                        or not (plain.get(type(chan)) or takes_plain_data(type(chan)))
                    ):
                        chan = None
                elif pkttype == MSG_CHANNEL_WINDOW_ADJUST and datalen == 0:  # no more, no less
                    # The peer's window grew (OpenSSH sends one per ~32 KiB it
                    # takes in): asyncssh's _process_window_adjust, inline.
                    recv_chan, adjust = _ADJUST.unpack_from(packet_data, 2)
                    chan = channels.get(recv_chan)
                    if chan is not None and (
                        chan._recv_state not in _ADJUST_STATES
                        or not (plain.get(type(chan)) or takes_plain_data(type(chan)))
                    ):
                        chan = None
                    if chan is not None:
                        if held:
                            _hand_on(held_chan, held)
                            if self._transport is None:
                                return False  # closed by what the data set off
                        pos = stop
                        if self._transport:
                            self._recv_seq = (self._recv_seq + 1) & 0xFFFFFFFF
                        self._auth_final = True
                        chan._send_window += adjust
                        chan._flush_send_buf()
                        if self._transport is None:
                            return False  # closed by what the flush set off
                        continue
                if chan is None:
                    if held:  # in order: what is held goes before this packet
                        _hand_on(held_chan, held)
                        if self._transport is None:
                            return False
                    self._packet = inp[pos : pos + blocksize]
                    self._pktlen = pktlen
                    self._inpbuf = inp = inp[pos + blocksize :]
                    pos = 0
                    self._recv_handler = self._recv_packet
                    return finish_in_asyncssh(self, enc, packet_data)
                pos = stop
                if self._transport:
                    self._recv_seq = (self._recv_seq + 1) & 0xFFFFFFFF
                self._auth_final = True
                held_chan = chan
                held.append(packet_data[10 : 10 + datalen])
                chan._recv_window -= datalen
            if held:
                _hand_on(held_chan, held)
                if self._transport is None:
                    return False  # closed by what the data set off
        finally:
            if pos and self._inpbuf is inp:
                self._inpbuf = inp[pos:]
        return bool(original_pkthdr(self)) if refused else False

    def write(self: Any, data: Any, datatype: Any = None) -> None:
        conn = self._conn
        n = len(data)
        if (
            datatype is not None
            or not n
            or self._send_buf
            or self._send_state != "open"
            or self._encoding is not None
            or not self._send_window
            or conn is None
            or self._send_chan is None
            or logger_cls._debug_level >= 2
        ):
            original_write(self, data, datatype)
            return
        enc = conn._send_encryption
        transport = conn._transport
        if (
            enc is None
            or transport is None
            or not conn._kex_complete
            or not conn._auth_complete
            or conn._compressor is not None
            or conn._rekey_bytes_sent >= conn._rekey_bytes
            or (conn._rekey_seconds and time.monotonic() >= conn._rekey_time)
        ):
            original_write(self, data, datatype)
            return
        rest = None
        if n > self._send_window:
            # what the window allows goes now, the rest waits in asyncssh's
            # send buffer for a WINDOW_ADJUST, as asyncssh's own write does
            rest = data[self._send_window :]
            data = data[: self._send_window]
            n = len(data)
        pktsize = self._send_pktsize
        wire: list[bytes] = []
        if n <= pktsize and type(enc) is gcm_enc and _wire is None:
            # _seal_data's Python path inlined for the keystroke-sized case
            # (four calls; with gateway._wire, _seal_data is one C call)
            blocksize = conn._send_blocksize
            padlen = -(conn._send_enchdrlen + 9 + n) % blocksize
            if padlen < 4:
                padlen += blocksize
            packet = b"".join(
                (
                    padlen.to_bytes(1, "big"),
                    _DATA_HEADER.pack(MSG_CHANNEL_DATA, self._send_chan, n),
                    data,
                    _padding(padlen),
                )
            )
            pktlen = len(packet)
            header = pktlen.to_bytes(4, "big")
            cipher = enc._cipher
            iv = cipher._iv
            aead = cipher.__dict__.get("_sg_aead") or _aead(cipher)
            sealed = header + aead.encrypt(iv, packet, header)
            cipher._iv = iv[:4] + ((int.from_bytes(iv[4:], "big") + 1) & _IV_MASK).to_bytes(
                8, "big"
            )
            conn._send_seq = (conn._send_seq + 1) & 0xFFFFFFFF
            conn._rekey_bytes_sent += pktlen
            wire.append(sealed)
        elif n <= pktsize:
            _seal_data(conn, enc, self._send_chan, data, wire)
        else:  # several packets, one send() call
            view = memoryview(data)
            for at in range(0, n, pktsize):
                _seal_data(conn, enc, self._send_chan, view[at : at + pktsize], wire)
        try:
            if len(wire) == 1:
                transport.write(wire[0])
            elif len(wire) == 2:
                transport.write(wire[0] + wire[1])  # small: a copy beats a writev
            else:
                _write_all(transport, wire)
        except ConnectionError:
            pass  # as asyncssh's _send: the connection's own close handles it
        self._send_window -= n
        if rest is not None:
            original_write(self, rest, None)
        elif self._send_paused:
            self._pause_resume_writing()

    def _flush_send_buf(self: Any) -> None:
        # What the peer's window now allows of the send buffer (a client that
        # fell behind: under a pty stream, a tenth of the relay's time went
        # through asyncssh's per-packet path here), sealed as write() seals
        # it and sent in one writev. asyncssh's own flush then does the rest:
        # extended data, a rekey that came due, pause/resume, a pending EOF
        # or close.
        conn = self._conn
        if (
            self._send_buf
            and self._send_window
            and conn is not None
            and self._send_chan is not None
            and self._encoding is None
            and logger_cls._debug_level < 2
            and (plain.get(type(self)) or takes_plain_data(type(self)))
        ):
            enc = conn._send_encryption
            transport = conn._transport
            if (
                enc is not None
                and transport is not None
                and conn._kex_complete
                and conn._auth_complete
                and conn._compressor is None
                and not (conn._rekey_seconds and time.monotonic() >= conn._rekey_time)
            ):
                wire: list[bytes] = []
                send_buf = self._send_buf
                while (
                    send_buf
                    and self._send_window
                    and send_buf[0][1] is None
                    and conn._rekey_bytes_sent < conn._rekey_bytes
                ):
                    pktsize = min(self._send_window, self._send_pktsize)
                    buf = send_buf[0][0]
                    if len(buf) > pktsize:
                        data = buf[:pktsize]
                        del buf[:pktsize]
                    else:
                        data = buf
                        del send_buf[0]
                    self._send_buf_len -= len(data)
                    self._send_window -= len(data)
                    _seal_data(conn, enc, self._send_chan, data, wire)
                if wire:
                    try:
                        _write_all(transport, wire)
                    except ConnectionError:
                        pass  # as asyncssh's _send
        original_flush(self)

    _recv_pkthdr.__wrapped__ = original_pkthdr  # type: ignore[attr-defined]
    conn_cls._recv_pkthdr = _recv_pkthdr  # type: ignore[method-assign]
    write.__wrapped__ = original_write  # type: ignore[attr-defined]
    chan_cls.write = write  # type: ignore[method-assign]
    _flush_send_buf.__wrapped__ = original_flush  # type: ignore[attr-defined]
    chan_cls._flush_send_buf = _flush_send_buf  # type: ignore[method-assign]


def _write_all(transport: Any, wire: list[bytes]) -> None:
    """Sealed packets, in pieces, in one send."""
    writelines = getattr(transport, "writelines", None)
    if writelines is not None:  # uvloop: one writev
        writelines(wire)
    else:  # e.g. asyncssh's proxy-command tunnel
        transport.write(b"".join(wire))


def _hand_on(chan: Any, held: list[bytes]) -> None:
    """Data the receive loop took for ``chan`` (its window already debited),
    on to the session as asyncssh's ``_accept_data`` and ``_deliver_data``
    would take it: kept for later while the session paused reading
    (backpressure from the other leg; asyncssh's resume flushes it, in
    order), else delivered, after a WINDOW_ADJUST when the window is below
    half. Empties ``held``."""
    data = held[0] if len(held) == 1 else b"".join(held)
    held.clear()
    if chan._recv_paused:
        chan._recv_buf.append((data, None))
    elif chan._recv_window < chan._init_recv_window / 2:
        chan._deliver_data(data, None)  # sends the WINDOW_ADJUST, then delivers
    else:
        chan._session.data_received(data, None)


def _resume_reading(conn: Any) -> None:
    conn._sg_read_paused = False
    transport = conn._transport
    if transport is not None and not transport.is_closing():
        try:
            transport.resume_reading()
        except RuntimeError:
            pass


def installed() -> bool:
    return _installed
