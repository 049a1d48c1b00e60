"""Fixtures for the config tests: real key material (made in-process by asyncssh,
which is what the loader parses it with) and a way to write config files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest


@dataclass(frozen=True)
class Keys:
    """Public key lines for users, and a target identity and host key on disk."""

    alice: str
    bob: str
    carol: str
    host_key: str
    identity: Path
    known_hosts: Path


def _public_line(comment: str) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_public_key("openssh").decode().strip()


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("config-keys")
    identity = d / "web1_identity"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(identity))
    host_key = " ".join(_public_line("host").split()[:2])
    known_hosts = d / "known_hosts"
    known_hosts.write_text(f"[10.0.0.5]:22 {host_key}\n")
    return Keys(
        alice=_public_line("alice@laptop"),
        bob=_public_line("bob@laptop"),
        carol=_public_line("carol@laptop"),
        host_key=host_key,
        identity=identity,
        known_hosts=known_hosts,
    )


@pytest.fixture(autouse=True)
def _no_shellgate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment overrides change what a file means: start every test without any."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("SHELLGATE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """``write_config(text, name="shellgate.toml")`` -> the path of a new config file."""

    def write(text: str, name: str = "shellgate.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write
