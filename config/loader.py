"""Loading a config: the TOML file, environment overrides, file checks, and
errors as ``FILE: KEY: PROBLEM`` lines.

Relative paths in a file are taken relative to that file's directory (so a
config and its keys can move together), ``data_dir``'s default ``var``
included; with no file, relative to the working directory. ``host_keys``
not given means ``<data_dir>/ssh_host_ed25519_key``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    import asyncssh

from config.models import GatewayConfig

EMBEDDED = "<embedded default>"


class ConfigError(Exception):
    """A config that cannot be used. ``problems`` are ready-to-print lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_PATH_KEYS: dict[str, tuple[str, ...]] = {
    "gateway": ("host_keys", "data_dir"),
    "users": ("authorized_keys_file",),
    "targets": ("identity", "known_hosts"),
}


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value):
            return str(base / value)
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    for section, keys in _PATH_KEYS.items():
        entries = data.get(section)
        items = entries if isinstance(entries, list) else [entries]
        for item in items:
            if isinstance(item, dict):
                for key in keys:
                    if key in item:
                        item[key] = fix(item[key])


def parse_authorized_key(line: str) -> asyncssh.SSHKey | None:
    """The public key on an authorized_keys line (options before it allowed), or None."""
    import asyncssh  # lazily: the query commands never need it

    parts = line.split()
    # Options may hold quoted spaces, so try each word as the start of the key.
    for i in range(len(parts) - 1):
        try:
            return asyncssh.import_public_key(" ".join(parts[i : i + 2]))
        except (asyncssh.KeyImportError, ValueError):
            continue
    return None


def _file_checks(cfg: GatewayConfig) -> list[str]:
    """What pydantic cannot see: files that must be readable, keys that must parse."""
    import asyncssh  # lazily: the query commands never need it

    problems: list[str] = []
    owner_of_key: dict[bytes, str] = {}
    for i, u in enumerate(cfg.users):
        sources = [(f"users[{i}].keys[{j}]", line) for j, line in enumerate(u.keys)]
        if u.authorized_keys_file is not None:
            try:
                text = u.authorized_keys_file.read_text()
            except OSError as e:
                problems.append(
                    f"users[{i}].authorized_keys_file: cannot read {u.authorized_keys_file}: "
                    f"{e.strerror}"
                )
            else:
                sources += [
                    (f"users[{i}].authorized_keys_file: line {n}", line)
                    for n, line in enumerate(text.splitlines(), 1)
                ]
        if not sources and u.authorized_keys_file is None:
            problems.append(f"users[{i}]: user {u.name!r} has no keys and no authorized_keys_file")
        for where, line in sources:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key = parse_authorized_key(line)
            if key is None:
                problems.append(f"{where}: not a public key: {line[:40]!r}")
                continue
            other = owner_of_key.setdefault(key.public_data, u.name)
            if other != u.name:
                problems.append(f"{where}: key of {u.name!r} is already the key of {other!r}")
    for i, hk in enumerate(cfg.gateway.host_keys):
        if not hk.exists():
            continue  # the daemon generates it
        try:
            asyncssh.read_private_key(hk)
        except OSError as e:
            problems.append(f"gateway.host_keys[{i}]: cannot read {hk}: {e.strerror}")
        except (asyncssh.KeyImportError, ValueError) as e:
            problems.append(f"gateway.host_keys[{i}]: {hk} is not a usable private key: {e}")
    for i, ca in enumerate(cfg.gateway.user_ca_keys):
        try:
            asyncssh.import_public_key(ca)
        except (asyncssh.KeyImportError, ValueError) as e:
            problems.append(f"gateway.user_ca_keys[{i}]: not a public key: {e}")
    for i, t in enumerate(cfg.targets):
        try:
            asyncssh.read_private_key(t.identity)
        except OSError as e:
            problems.append(f"targets[{i}].identity: cannot read {t.identity}: {e.strerror}")
        except (asyncssh.KeyImportError, ValueError) as e:
            problems.append(f"targets[{i}].identity: not a private key: {e}")
        if t.host_key:
            try:
                asyncssh.import_public_key(t.host_key)
            except (asyncssh.KeyImportError, ValueError) as e:
                problems.append(f"targets[{i}].host_key: not a public key: {e}")
        if t.known_hosts is not None:
            try:
                asyncssh.read_known_hosts(str(t.known_hosts))
            except OSError as e:
                problems.append(
                    f"targets[{i}].known_hosts: cannot read {t.known_hosts}: {e.strerror}"
                )
            except ValueError as e:
                problems.append(f"targets[{i}].known_hosts: {e}")
    return problems


def parse_config(
    data: dict[str, Any], source: str = EMBEDDED, *, check_files: bool = True
) -> GatewayConfig:
    """Validate a config mapping (environment overrides applied). Raises ConfigError.
    ``check_files=False`` skips reading keys and identity files: the store
    queries need only ``data_dir``, and an auditor may not read the keys."""
    try:
        cfg = GatewayConfig(**data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            where = _loc(err["loc"])
            if where == "(top level)":
                problems += [f"{source}: {line}" for line in msg.splitlines()]
            elif err["type"] == "extra_forbidden":
                problems.append(f"{source}: {where}: unknown key")
            else:
                problems.append(f"{source}: {where}: {msg}")
        raise ConfigError(problems) from None
    problems = [f"{source}: {p}" for p in _file_checks(cfg)] if check_files else []
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | os.PathLike[str] | None, *, check_files: bool = True) -> GatewayConfig:
    """The config at ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        return parse_config({}, EMBEDDED, check_files=check_files)
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{p}: TOML syntax: {e}"]) from None
    # The default data_dir is a relative path like any other in the file: the
    # daemon and the query commands then find the same store whatever
    # directory each was started from.
    section = data.get("gateway")
    if section is None:
        section = data["gateway"] = {}
    if isinstance(section, dict):
        section.setdefault("data_dir", "var")
    _resolve_paths(data, p.resolve().parent)
    return parse_config(data, str(p), check_files=check_files)
