"""Types of gateway._wire (gateway/_wire.c): AES-GCM sealing and opening of
SSH binary packets on asyncssh's own cipher objects (``_key``, ``_iv``)."""

from typing import Any

from typing_extensions import Buffer

def seal_data(cipher: Any, send_chan: int, data: Buffer, blocksize: int, enchdrlen: int) -> bytes:
    """One CHANNEL_DATA packet, framed, padded and sealed; the nonce stepped."""

def open_packet(cipher: Any, buf: Buffer, pos: int, stop: int) -> bytes | None:
    """The packet in ``buf[pos:stop]`` opened, the nonce stepped; None on a bad tag."""
