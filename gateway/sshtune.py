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
flow control (which is per channel, by SSH windows).
"""

from __future__ import annotations

from typing import Any

from asyncssh import connection as _connection
from asyncssh.constants import MSG_IGNORE

_EMPTY_STRING = b"\x00\x00\x00\x00"  # SSH wire encoding of String(b"")
_installed = False


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
    _installed = True


def _install_fair_reads() -> None:
    original = _connection.SSHConnection.data_received

    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        original(self, data, datatype)
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
