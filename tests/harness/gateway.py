"""The real shellgate daemon as the end-to-end tests run it: ``shellgate serve
--config FILE`` in a subprocess on a free loopback port, users with their own
keys, one or more real sshd targets behind it, killed by pid afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import procs
from harness.keys import KeyPair, generate_key
from harness.net import free_port
from harness.ssh_client import Completed, SshClient, run_sync
from harness.sshd import TargetSshd

SHELLGATE = [sys.executable, "-m", "gateway.cli"]


@dataclass
class GatewayUser:
    name: str
    key: KeyPair
    roles: tuple[str, ...] = ()


@dataclass
class GatewayProcess:
    """A shellgate daemon under test. ``extra_toml`` is appended to the config."""

    directory: Path
    targets: dict[str, TargetSshd]
    users: list[GatewayUser] = field(default_factory=list)
    extra_toml: str = ""
    gateway_toml: str = ""
    recording_toml: str = ""
    policies_toml: str | None = None
    command: Sequence[str] = tuple(SHELLGATE)  # the bench's accounting launcher replaces it
    env: dict[str, str] = field(default_factory=dict)  # added to the daemon's environment
    port: int = 0
    popen: subprocess.Popen[bytes] | None = None
    tracked: procs.Tracked | None = None

    @classmethod
    def create(
        cls,
        directory: Path,
        targets: dict[str, TargetSshd],
        users: Sequence[tuple[str, Sequence[str]]] = (("alice", ("admin",)), ("bob", ())),
        **kw: str,
    ) -> GatewayProcess:
        directory.mkdir(parents=True, exist_ok=True)
        gw = cls(directory=directory, targets=targets, **kw)  # type: ignore[arg-type]
        for name, roles in users:
            gw.users.append(GatewayUser(name, generate_key(directory / "keys", name), tuple(roles)))
        return gw

    @property
    def config_path(self) -> Path:
        return self.directory / "shellgate.toml"

    @property
    def data_dir(self) -> Path:
        return self.directory / "var"

    def user(self, name: str) -> GatewayUser:
        return next(u for u in self.users if u.name == name)

    def write_config(self) -> None:
        if not self.port:
            self.port = free_port()
        parts = [
            "[gateway]",
            f'listen = "127.0.0.1:{self.port}"',
            'host_keys = ["var/ssh_host_ed25519_key"]',
            'data_dir = "var"',
            self.gateway_toml,
            "[recording]",
            self.recording_toml,
        ]
        for u in self.users:
            roles = ", ".join(f'"{r}"' for r in u.roles)
            parts += [
                "[[users]]",
                f'name = "{u.name}"',
                f'keys = ["{u.key.public_line}"]',
                f"roles = [{roles}]",
            ]
        for name, sshd in self.targets.items():
            parts.append(sshd.target_toml(name))
        if self.policies_toml is None:
            names = ", ".join(f'"{u.name}"' for u in self.users)
            parts += ["[[policies]]", f"users = [{names}]", 'targets = ["*"]', 'logins = ["root"]']
        else:
            parts.append(self.policies_toml)
        parts.append(self.extra_toml)
        self.config_path.write_text("\n".join(parts) + "\n")

    def start(self, timeout: float = 15.0) -> GatewayProcess:
        self.write_config()
        ready = self.directory / "ready"
        ready.unlink(missing_ok=True)
        log = open(self.directory / "gateway.log", "ab")  # noqa: SIM115 (outlives this call)
        self.popen = subprocess.Popen(
            [*self.command, "serve", "--config", str(self.config_path), "--ready-file", str(ready)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            env={**os.environ, "HOME": str(self.directory), **self.env},
        )
        log.close()
        self.tracked = procs.register(self.popen.pid, "shellgate serve", self.popen)
        deadline = time.monotonic() + timeout
        while not ready.exists() or not ready.read_text().strip():
            if self.popen.poll() is not None:
                raise RuntimeError(f"shellgate exited {self.popen.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"shellgate did not start:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the clean stop."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        finally:
            self._forget()
        return code

    def kill(self) -> None:
        """SIGKILL: the unclean stop."""
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)
        self._forget()

    def _forget(self) -> None:
        if self.tracked is not None:
            procs.unregister(self.tracked.pid)
            self.tracked = None

    def cleanup(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.kill()

    def log_text(self) -> str:
        try:
            return (self.directory / "gateway.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    # clients -------------------------------------------------------------------
    def client(self, user: str, login: str) -> SshClient:
        """The OpenSSH client as ``user`` (by key) logging in as ``login``."""
        return SshClient("127.0.0.1", self.port, login, self.user(user).key.private)

    def to(self, target: str, user: str = "alice", login: str = "root") -> SshClient:
        return self.client(user, f"{login}@{target}")

    def control(self, user: str = "alice") -> SshClient:
        return self.client(user, user)

    def cli(self, *args: str, timeout: float = 30.0) -> Completed:
        """``shellgate ARGS --config FILE`` as an operator runs it."""
        return run_sync([*SHELLGATE, *args, "--config", str(self.config_path)], timeout=timeout)

    def cli_json(self, *args: str) -> list[dict[str, object]]:
        result = self.cli(*args, "--json")
        assert result.returncode == 0, result
        return [json.loads(line) for line in result.stdout.decode().splitlines() if line]

    def wait_events(
        self, connection_id: str | None = None, *, types: Sequence[str], timeout: float = 10.0
    ) -> list[dict[str, object]]:
        """Poll ``shellgate events --json`` until the event types include ``types`` in order."""
        deadline = time.monotonic() + timeout
        events: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            args = ["events"] + (["--connection", connection_id] if connection_id else [])
            events = self.cli_json(*args)
            seen = [e["type"] for e in events]
            it = iter(seen)
            if all(t in it for t in types):
                return events
            time.sleep(0.2)
        raise AssertionError(f"events {types} not seen; have {[e['type'] for e in events]}")
