"""Types of gateway._wire (gateway/_wire.c): AES-GCM sealing and opening of
SSH binary packets on asyncssh's own cipher objects (``_key``, ``_iv``)."""

from typing import Any

from typing_extensions import Buffer

def seal_data(cipher: Any, send_chan: int, data: Buffer, blocksize: int, enchdrlen: int) -> bytes:
    """One CHANNEL_DATA packet, framed, padded and sealed; the nonce stepped."""

def open_packet(cipher: Any, buf: Buffer, pos: int, stop: int) -> bytes | None:
    """The packet in ``buf[pos:stop]`` opened, the nonce stepped; None on a bad tag."""

def configure(gcm_encryption: type, plain_channel_types: tuple[type, ...]) -> None:
    """What splice_run checks channels and ciphers against."""

def splice_run(
    conn: Any,
    cipher: Any,
    buf: Buffer,
    pos: int,
    end: int,
    maxlen: int,
    blocksize: int,
    now: float,
    done: list[tuple[Any, int, bytes]],
) -> tuple[int, int, bytes | None]:
    """Whole packets from ``pos``: a gateway session's data relayed to the
    other leg (``(live, leg, data)`` appended to ``done``); the first packet
    not taken returned opened with its bounds, else ``(pos, 0, None)``, or
    ``(pos, -1, None)`` at a bad packet."""

def splice_stats() -> tuple[int, int]:
    """Packets splice_run relayed since the module was loaded, and its writes."""
