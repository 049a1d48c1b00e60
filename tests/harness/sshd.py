"""A real OpenSSH sshd as a test target, on a free loopback port, with its own
host key, its own authorized key and a clean HOME.

The daemon runs in the foreground (``-D``) so the pid we hold is the listener;
its per-connection children call ``setsid()``, so stop() and kill() find them
through ``/proc`` (see ``harness.procs``), never by name.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from harness import procs
from harness.env import clean_env
from harness.keys import KeyPair, generate_key
from harness.net import free_port
from harness.ssh_client import SshClient

SSHD = "/usr/sbin/sshd"

# What the target shell reads: a plain prompt the tests can wait for, and
# nothing from /root (whose dotfiles run pyenv, slow and once hung bash).
BASHRC = r"""# Written by the shellgate test harness: a known, fast shell environment.
PS1='\u@target:\w\$ '
PROMPT_COMMAND=
HISTFILE="$HOME/.bash_history"
# sshd starts every session in the passwd home (/root); interactive shells
# move to the clean HOME so a test typing `touch x` never writes into /root.
case $- in *i*) cd "$HOME" ;; esac
"""

PROFILE = """# Written by the shellgate test harness.
[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"
"""


class TargetSshd:
    """A running OpenSSH server for tests. Use as a context manager, or call
    :meth:`start` and then :meth:`stop` (or :meth:`kill`) yourself.

    Attributes for a gateway's ``[[targets]]`` entry: ``host``, ``port``,
    ``login``, ``host_key_line`` (the ``host_key`` pin), ``known_hosts_path``,
    ``client_key.private`` (the ``identity``).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path | None = None,
        *,
        login: str = "root",
        extra_config: Sequence[str] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="shellgate-sshd-")).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.login = login
        self.extra_config = list(extra_config)
        self.start_timeout = start_timeout
        self.port = 0
        self._tracked: procs.Tracked | None = None

        self.home = self.directory / "home"
        self.home.mkdir(exist_ok=True)
        (self.home / ".bashrc").write_text(BASHRC)
        (self.home / ".profile").write_text(PROFILE)

        self.host_key = generate_key(self.directory, "ssh_host_ed25519_key", comment="target")
        self.client_key: KeyPair = generate_key(self.directory, "client_key", comment="gateway")
        self.authorized_keys_path = self.directory / "authorized_keys"
        self.authorized_keys_path.write_text(self.client_key.public_line + "\n")
        self.config_path = self.directory / "sshd_config"
        self.log_path = self.directory / "sshd.log"
        self.stderr_path = self.directory / "sshd.stderr"
        self.pid_path = self.directory / "sshd.pid"
        self.known_hosts_path = self.directory / "known_hosts"

    # -- what a gateway config needs -------------------------------------------------

    @property
    def host_key_line(self) -> str:
        """``ssh-ed25519 AAAA...``: the target's ``host_key`` pin."""
        return self.host_key.public_blob

    @property
    def known_hosts(self) -> str:
        """A known_hosts line for this target, ``[127.0.0.1]:PORT ssh-ed25519 AAAA...``."""
        return f"[{self.host}]:{self.port} {self.host_key_line}\n"

    @property
    def identity(self) -> Path:
        """The private key the gateway logs in with."""
        return self.client_key.private

    def target_toml(self, name: str = "web1", logins: Sequence[str] = ("root",)) -> str:
        """A ``[[targets]]`` table for a shellgate config pointing at this sshd."""
        logins_toml = ", ".join(f'"{x}"' for x in logins)
        return (
            "[[targets]]\n"
            f'name = "{name}"\n'
            f'host = "{self.host}"\n'
            f"port = {self.port}\n"
            f'host_key = "{self.host_key_line}"\n'
            f'identity = "{self.identity}"\n'
            f"logins = [{logins_toml}]\n"
        )

    def client(self, *, strict: bool = True) -> SshClient:
        """The OpenSSH client logging in here directly (no gateway) with the
        client key; ``strict`` checks the host key against :attr:`known_hosts_path`."""
        return SshClient(
            self.host,
            self.port,
            self.login,
            self.client_key.private,
            known_hosts=self.known_hosts_path if strict else None,
        )

    def authorize(self, public_line: str) -> None:
        """Let one more public key log in (read by sshd at every login)."""
        with self.authorized_keys_path.open("a") as f:
            f.write(public_line.strip() + "\n")

    # -- lifecycle -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._tracked.pid if self._tracked else None

    @property
    def running(self) -> bool:
        return self._tracked is not None and procs.is_alive(
            self._tracked.pid, self._tracked.start_time
        )

    def _write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key.private}",
            f"PidFile {self.pid_path}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitUserEnvironment no",
            f"SetEnv HOME={self.home}",
            "AcceptEnv LANG LC_* TERM SHELLGATE_*",
            "Subsystem sftp internal-sftp",
            "MaxSessions 20",
            # Tests open many connections at once; the default 10:30:100 would
            # randomly drop some of them before authentication.
            "MaxStartups 200",
            "LogLevel VERBOSE",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "X11Forwarding no",
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> TargetSshd:
        """Start sshd and return once it listens. A port taken between choosing
        and binding it makes sshd exit; then another port is tried."""
        if self.running:
            return self
        # sshd refuses to start without its privilege separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        reuse_port = self.port != 0  # a restart keeps its port, keys and known_hosts
        last_error = ""
        for _attempt in range(8):
            if not reuse_port:
                self.port = free_port(self.host)
            self._write_config()
            self.known_hosts_path.write_text(self.known_hosts)
            self.log_path.write_text("")
            ready = self._spawn_and_wait()
            if ready:
                return self
            last_error = self.log_text()
            if "Address already in use" not in last_error:
                break
            if reuse_port:
                time.sleep(0.2)
        raise RuntimeError(f"sshd did not start on {self.host}:{self.port}:\n{last_error}")

    def _spawn_and_wait(self) -> bool:
        with self.stderr_path.open("ab") as err:
            popen = subprocess.Popen(
                [SSHD, "-D", "-e", "-E", str(self.log_path), "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=clean_env(HOME=str(self.home)),
                start_new_session=True,  # a Ctrl-C in the terminal is not for it
            )
        self._tracked = procs.register(popen.pid, f"sshd :{self.port}", popen)
        listening = re.compile(rf"Server listening on {re.escape(self.host)} port {self.port}\b")
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                procs.unregister(popen.pid)
                self._tracked = None
                return False
            if listening.search(self.log_text()):
                return True
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"sshd did not listen within {self.start_timeout}s:\n{self.log_text()}")

    def stop(self, grace: float = 3.0) -> None:
        """End sshd and every session it serves: SIGTERM, then SIGKILL after ``grace``."""
        if self._tracked is not None:
            procs.kill(self._tracked, sig=signal.SIGTERM, grace=grace)
            self._tracked = None

    def kill(self) -> None:
        """SIGKILL sshd and every per-connection process at once: a target lost
        mid-session. :meth:`start` brings it back on the same port."""
        if self._tracked is not None:
            procs.kill(self._tracked, sig=signal.SIGKILL)
            self._tracked = None

    def session_pids(self) -> list[int]:
        """Live processes under the listener: per-connection sshds and their shells."""
        return procs.descendants(self._tracked.pid) if self._tracked else []

    def connection_pids(self) -> list[int]:
        """One pid per live client connection (the listener's direct children)."""
        if not self._tracked:
            return []
        pid = self._tracked.pid
        return [p for p in procs.descendants(pid) if procs.parent_pid(p) == pid]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def accepted_logins(self) -> int:
        """How many logins sshd accepted so far: a pooling test counts handshakes with it."""
        return len(re.findall(r"Accepted publickey for ", self.log_text()))

    def cleanup(self) -> None:
        """Kill whatever still runs and remove the directory if we made it."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> TargetSshd:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<TargetSshd {self.host}:{self.port} pid={self.pid}>"
