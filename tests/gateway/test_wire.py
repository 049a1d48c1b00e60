"""gateway._wire, the C sealing and opening of AES-GCM SSH packets, checked
against asyncssh's own GCMEncryption (which uses cryptography's AESGCM): the
same bytes on the wire either way, nonces stepped alike, a bad tag refused
with the nonce left for asyncssh's own error."""

from __future__ import annotations

import os
from typing import Any

import pytest
from asyncssh.encryption import get_encryption

from gateway import sshtune

_wire: Any = sshtune._wire
MSG_CHANNEL_DATA = 94


def _pair(key_len: int) -> tuple[Any, Any]:
    """An asyncssh AES-GCM encryption object for each side of one key."""
    alg = b"aes128-gcm@openssh.com" if key_len == 16 else b"aes256-gcm@openssh.com"
    key, iv = os.urandom(key_len), os.urandom(12)
    return get_encryption(alg, key, iv), get_encryption(alg, key, iv)


def test_the_native_module_is_built() -> None:
    assert _wire is not None, "gateway._wire is not built: `make setup` builds it (gcc, libssl-dev)"


@pytest.mark.parametrize("key_len", [16, 32])
@pytest.mark.parametrize("n", [0, 1, 3, 15, 16, 100, 4096, 32768])
def test_sealed_packets_open_in_asyncssh_and_back(key_len: int, n: int) -> None:
    assert _wire is not None
    sender, receiver = _pair(key_len)
    data = os.urandom(n)
    for seq in range(3):  # the nonce must step alike on both sides
        wire = _wire.seal_data(sender._cipher, 7, data, 16, 1)
        pktlen = int.from_bytes(wire[:4], "big")
        assert pktlen == len(wire) - 20
        assert pktlen % 16 == 0  # GCM's length field is outside the blocks
        plain = receiver.decrypt_packet(seq, wire[:4], wire[4:-16], 4, wire[-16:])
        assert plain is not None, "asyncssh refused a packet sealed in C"
        padlen = plain[0]
        assert 4 <= padlen < 4 + 16
        assert plain[1] == MSG_CHANNEL_DATA
        assert int.from_bytes(plain[2:6], "big") == 7
        assert int.from_bytes(plain[6:10], "big") == n
        assert plain[10 : 10 + n] == data
        assert len(plain) == 10 + n + padlen
    # and the other way: asyncssh seals, C opens (inside a bigger buffer)
    for _ in range(3):
        body = bytes([16]) + data + bytes(15)  # any well-formed plaintext will do
        header = len(body).to_bytes(4, "big")
        sealed, mac = receiver.encrypt_packet(0, header, body)
        buf = b"junk" + sealed + mac + b"more"
        assert _wire.open_packet(sender._cipher, buf, 4, 4 + len(sealed) + len(mac)) == body


def test_nonce_counter_wraps_inside_its_64_bits() -> None:
    assert _wire is not None
    sender, receiver = _pair(16)
    fixed = b"\x01\x02\x03\x04"
    sender._cipher._iv = receiver._cipher._iv = fixed + b"\xff" * 8
    wire = _wire.seal_data(sender._cipher, 1, b"k", 16, 1)
    assert sender._cipher._iv == fixed + b"\x00" * 8  # the fixed field untouched
    assert receiver.decrypt_packet(0, wire[:4], wire[4:-16], 4, wire[-16:]) is not None


def test_a_bad_tag_is_refused_and_the_nonce_left_for_asyncssh() -> None:
    assert _wire is not None
    sender, receiver = _pair(16)
    wire = bytearray(_wire.seal_data(sender._cipher, 1, b"k", 16, 1))
    wire[-1] ^= 1
    before = receiver._cipher._iv
    assert _wire.open_packet(receiver._cipher, bytes(wire), 0, len(wire)) is None
    assert receiver._cipher._iv == before
    # a flipped length (the associated data) is refused as well
    wire[-1] ^= 1
    wire[3] ^= 16
    assert _wire.open_packet(receiver._cipher, bytes(wire), 0, len(wire)) is None
    wire[3] ^= 16
    assert _wire.open_packet(receiver._cipher, bytes(wire), 0, len(wire)) is not None


@pytest.mark.parametrize(("pos", "stop"), [(-1, 40), (0, 10_000), (30, 20), (0, 19)], ids=str)
def test_bounds_outside_the_buffer_are_an_error_not_a_read(pos: int, stop: int) -> None:
    assert _wire is not None
    _, receiver = _pair(16)
    with pytest.raises(ValueError):
        _wire.open_packet(receiver._cipher, bytes(64), pos, stop)


def test_bad_arguments_raise() -> None:
    assert _wire is not None
    sender, _ = _pair(16)
    with pytest.raises(ValueError):
        _wire.seal_data(sender._cipher, -1, b"k", 16, 1)
    with pytest.raises(ValueError):
        _wire.seal_data(sender._cipher, 1, b"k", 4, 1)
    with pytest.raises(TypeError):
        _wire.seal_data(sender._cipher, 1, "text", 16, 1)
    sender._cipher._key = b"short"
    sender._cipher.__dict__.pop("_sg_wire", None)
    with pytest.raises(ValueError):
        _wire.seal_data(sender._cipher, 1, b"k", 16, 1)
