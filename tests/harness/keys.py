"""SSH key pairs and an OpenSSH user CA for tests, made by the real ``ssh-keygen``
so the files are exactly what OpenSSH clients and servers read."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.env import clean_env


def _keygen(*args: str) -> str:
    done = subprocess.run(
        ["ssh-keygen", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ssh-keygen {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class KeyPair:
    """A private key file and its ``.pub`` beside it (mode 0600, no passphrase)."""

    private: Path
    public: Path

    @property
    def public_line(self) -> str:
        """``TYPE BASE64 COMMENT``, as in an authorized_keys file or a users[].keys entry."""
        return self.public.read_text().strip()

    @property
    def public_blob(self) -> str:
        """``TYPE BASE64`` without the comment (for host_key pins and comparisons)."""
        return " ".join(self.public_line.split()[:2])

    @property
    def certificate(self) -> Path:
        """Where ``ssh-keygen -s`` writes this key's certificate; ``ssh -i private``
        picks it up from there by itself."""
        return self.private.with_name(self.private.name + "-cert.pub")

    def fingerprint(self) -> str:
        """``SHA256:...`` as OpenSSH and the audit log print it."""
        return _keygen("-l", "-E", "sha256", "-f", str(self.public)).split()[1]


def generate_key(
    directory: Path, name: str = "id_ed25519", *, key_type: str = "ed25519", comment: str = ""
) -> KeyPair:
    """A new key pair ``directory/name`` and ``directory/name.pub``."""
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / name
    args = ["-q", "-t", key_type, "-N", "", "-f", str(private), "-C", comment or name]
    if key_type == "rsa":
        args[3:3] = ["-b", "2048"]  # the default 3072 is slow to make and adds nothing here
    _keygen(*args)
    return KeyPair(private=private, public=private.with_name(name + ".pub"))


@dataclass(frozen=True)
class UserCA:
    """An OpenSSH user certificate authority: its key pair signs user keys."""

    key: KeyPair

    @classmethod
    def create(cls, directory: Path, name: str = "user_ca") -> UserCA:
        return cls(generate_key(directory, name, comment=name))

    @property
    def public_line(self) -> str:
        """For the gateway's ``user_ca_keys`` or sshd's ``TrustedUserCAKeys`` file."""
        return self.key.public_blob

    def sign(
        self,
        key: KeyPair,
        principals: str | Sequence[str],
        *,
        identity: str = "test-cert",
        validity: str | None = None,
        serial: int | None = None,
    ) -> Path:
        """Certify ``key`` for ``principals``; returns the certificate path.

        ``validity`` is ssh-keygen's ``-V`` text, e.g. ``"-5m:+1h"`` or, for an
        expired certificate, ``"20200101:20200102"``.
        """
        names = [principals] if isinstance(principals, str) else list(principals)
        args = ["-q", "-s", str(self.key.private), "-I", identity, "-n", ",".join(names)]
        if validity is not None:
            args += ["-V", validity]
        if serial is not None:
            args += ["-z", str(serial)]
        _keygen(*args, str(key.public))
        return key.certificate


def certificate_principals(cert: Path) -> list[str]:
    """The principals ``ssh-keygen -L`` reads from a certificate file."""
    out = _keygen("-L", "-f", str(cert)).splitlines()
    names: list[str] = []
    in_principals = False
    for line in out:
        stripped = line.strip()
        if stripped.startswith("Principals:"):
            in_principals = True
            continue
        if in_principals:
            if line.startswith(" " * 16) and stripped:
                names.append(stripped)
            else:
                break
    return names
