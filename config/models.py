"""The TOML config as pydantic models: keys, defaults and cross-checks.

Loading (files, environment overrides, error formatting) lives in ``config.loader``;
this module only says what a valid config is.
"""

from __future__ import annotations

import fnmatch
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written in the config as ``90``, ``"90s"``, ``"15m"`` or ``"1h30m"``; 0 disables."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_CIPHERS = [
    # In SSH the client picks the first of its *own* preferences that we offer.
    # OpenSSH prefers chacha20-poly1305, then aes-ctr (with a umac MAC), and
    # only then aes-gcm; asyncssh does chacha20 and umac in Python-level code,
    # aes-gcm in OpenSSL. Offering only aes-gcm makes every OpenSSH since 6.2
    # use it: ~40% less relay CPU per byte (bench/). Add others if a client
    # needs them. No CBC modes: weak, and gateway/sshtune.py relies on that.
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
]

DEFAULT_MACS = [
    # Only used with non-AEAD ciphers (aes-ctr, if configured): hashlib-backed
    # HMACs rather than asyncssh's ctypes umac.
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
]


HOST_KEY_NAME = "ssh_host_ed25519_key"
"""The host key's file in ``data_dir`` when ``host_keys`` is not given."""


class GatewaySection(_Section):
    listen: str = "127.0.0.1:2222"
    # Not given: <data_dir>/HOST_KEY_NAME (see _host_key_with_the_data).
    host_keys: list[Path] = Field(default_factory=lambda: [Path("var") / HOST_KEY_NAME])
    data_dir: Path = Path("var")
    detach_timeout: Duration = 900.0
    idle_timeout: Duration = 0.0
    idle_warning: Duration = 60.0
    connect_timeout: Duration = 10.0
    login_grace_time: Duration = 30.0
    max_startups: int = Field(default=100, ge=1)
    max_channels_per_target: int = Field(default=10, ge=1)
    ciphers: list[str] = Field(default_factory=lambda: list(DEFAULT_CIPHERS))
    macs: list[str] = Field(default_factory=lambda: list(DEFAULT_MACS))
    user_ca_keys: list[str] = Field(default_factory=list)
    log_level: str = "info"

    @model_validator(mode="before")
    @classmethod
    def _host_key_with_the_data(cls, data: object) -> object:
        # A config that moves data_dir and says nothing of host keys keeps
        # the host key with the store and the recordings, not in ./var of
        # whatever directory the daemon was started from.
        if isinstance(data, dict) and "host_keys" not in data:
            data = {**data, "host_keys": [Path(data.get("data_dir", "var")) / HOST_KEY_NAME]}
        return data

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {v!r}")
        return v

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @field_validator("ciphers")
    @classmethod
    def _known_stream_ciphers(cls, v: list[str]) -> list[str]:
        from asyncssh.encryption import get_encryption_algs

        known = {a.decode() for a in get_encryption_algs()}
        if not v:
            raise ValueError("at least one cipher is needed")
        for name in v:
            if name.endswith("-cbc") or name.endswith("-cbc@lysator.liu.se"):
                raise ValueError(
                    f"{name}: CBC ciphers are not offered (weak; see gateway/sshtune.py)"
                )
            if name not in known:
                raise ValueError(f"{name}: unknown cipher (known: {', '.join(sorted(known))})")
        return v

    @field_validator("macs")
    @classmethod
    def _known_macs(cls, v: list[str]) -> list[str]:
        from asyncssh.mac import get_mac_algs

        known = {a.decode() for a in get_mac_algs()}
        for name in v:
            if name not in known:
                raise ValueError(f"{name}: unknown MAC (known: {', '.join(sorted(known))})")
        return v

    @field_validator("host_keys")
    @classmethod
    def _at_least_one_host_key(cls, v: list[Path]) -> list[Path]:
        if not v:
            raise ValueError("at least one host key path is needed")
        return v


class InputRecording(StrEnum):
    OFF = "off"
    ON = "on"
    REDACTED = "redacted"


class CastFormat(StrEnum):
    V2 = "v2"
    V3 = "v3"


class OnFailure(StrEnum):
    CLOSE = "close"
    CONTINUE = "continue"


class RecordingSection(_Section):
    enabled: bool = True
    input: InputRecording = InputRecording.REDACTED
    format: CastFormat = CastFormat.V2
    on_failure: OnFailure = OnFailure.CLOSE
    flush_interval: Duration = 1.0
    commands: bool = True


class User(_Section):
    name: str
    keys: list[str] = Field(default_factory=list)
    authorized_keys_file: Path | None = None
    roles: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or any(c in v for c in "@:/ \t") or not v.isprintable():
            raise ValueError(
                f"user name {v!r} must be non-empty, printable, without @ : / or spaces"
            )
        return v

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


class Target(_Section):
    name: str
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    host_key: str | None = None
    known_hosts: Path | None = None
    identity: Path
    logins: list[str] = Field(min_length=1)
    max_channels: int | None = Field(default=None, ge=1)
    detach_timeout: Duration | None = None
    idle_timeout: Duration | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or any(c in v for c in "@:/ \t*?[") or not v.isprintable():
            raise ValueError(
                f"target name {v!r} must be non-empty, printable, without @ : / * ? [ or spaces"
            )
        return v

    @model_validator(mode="after")
    def _has_trust_anchor(self) -> Target:
        if not self.host_key and not self.known_hosts:
            raise ValueError("needs host_key or known_hosts (unknown host keys are refused)")
        return self


class Policy(_Section):
    users: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    targets: list[str] = Field(min_length=1)
    logins: list[str] = Field(default_factory=lambda: ["*"])

    @model_validator(mode="after")
    def _names_someone(self) -> Policy:
        if not self.users and not self.roles:
            raise ValueError("a policy needs users or roles")
        return self


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class GatewayConfig(BaseSettings):
    """The whole config. Environment variables ``SHELLGATE_<SECTION>__<KEY>``
    override the file (``SHELLGATE_GATEWAY__LISTEN=127.0.0.1:2200``)."""

    model_config = SettingsConfigDict(
        env_prefix="SHELLGATE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file; no dotenv or secrets directories.
        return (env_settings, init_settings)

    gateway: GatewaySection = Field(default_factory=GatewaySection)
    recording: RecordingSection = Field(default_factory=RecordingSection)
    users: list[User] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        problems: list[str] = []
        seen_users: set[str] = set()
        for u in self.users:
            if u.name in seen_users:
                problems.append(f"users: duplicate user name {u.name!r}")
            seen_users.add(u.name)
        seen_targets: set[str] = set()
        for t in self.targets:
            if t.name in seen_targets:
                problems.append(f"targets: duplicate target name {t.name!r}")
            seen_targets.add(t.name)
        roles = {r for u in self.users for r in u.roles}
        for i, p in enumerate(self.policies):
            for name in p.users:
                if not _is_glob(name) and name not in seen_users:
                    problems.append(f"policies[{i}].users: unknown user {name!r}")
            for name in p.targets:
                if _is_glob(name):
                    if not fnmatch.filter(seen_targets, name):
                        problems.append(f"policies[{i}].targets: {name!r} matches no target")
                elif name not in seen_targets:
                    problems.append(f"policies[{i}].targets: unknown target {name!r}")
            for role in p.roles:
                if not _is_glob(role) and role not in roles:
                    problems.append(f"policies[{i}].roles: no user has role {role!r}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def user(self, name: str) -> User | None:
        return next((u for u in self.users if u.name == name), None)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def allows(self, user: User, target: Target, login: str) -> bool:
        """Whether any policy lets ``user`` log in to ``target`` as ``login``.
        The target's own ``logins`` bound every policy."""
        if login not in target.logins:
            return False
        for p in self.policies:
            who = any(fnmatch.fnmatchcase(user.name, pat) for pat in p.users) or any(
                fnmatch.fnmatchcase(r, pat) for pat in p.roles for r in user.roles
            )
            if not who:
                continue
            if not any(fnmatch.fnmatchcase(target.name, pat) for pat in p.targets):
                continue
            if any(fnmatch.fnmatchcase(login, pat) for pat in p.logins):
                return True
        return False
