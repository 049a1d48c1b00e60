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
"""

from __future__ import annotations

from typing import Any

from asyncssh import connection as _connection
from asyncssh.constants import MSG_IGNORE

_EMPTY_STRING = b"\x00\x00\x00\x00"  # SSH wire encoding of String(b"")
_installed = False


def install() -> None:
    """Stop asyncssh's per-packet IGNORE padding (idempotent)."""
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
    _installed = True


def installed() -> bool:
    return _installed
