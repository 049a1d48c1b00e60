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
"""

from __future__ import annotations

from typing import Any

from asyncssh import connection as _connection
from asyncssh import packet as _packet
from asyncssh.constants import MSG_IGNORE
from asyncssh.crypto import cipher as _cipher
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_EMPTY_STRING = b"\x00\x00\x00\x00"  # SSH wire encoding of String(b"")
_installed = False
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
    _installed = True


def _install_fair_reads() -> None:
    original = _connection.SSHConnection.data_received

    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        if len(data) <= _FEED_BYTES:
            original(self, data, datatype)
            return
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


def _install_cached_gcm() -> None:
    cls = _cipher.GCMCipher

    def _aead(self: Any) -> AESGCM:
        aead = self.__dict__.get("_sg_aead")
        if aead is None:
            aead = self._sg_aead = AESGCM(self._key)
        return aead

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
