"""``make demo``: the gateway in front of a throwaway local target, ready to try.

Starts a real OpenSSH sshd on a free loopback port as the demo target (its
own host key, a clean HOME for its shells), writes a demo user key and config
under ``./demo``, runs the gateway in this process, and prints the exact ssh
command to paste. Ctrl-C stops both.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import asyncssh

from config.loader import ConfigError, load_config
from gateway.daemon import Gateway, StartError
from gateway.logs import configure_logging
from store.base import StoreError
from store.sqlite import SqliteStore

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port(preferred: int = 0) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def _key(path: Path) -> asyncssh.SSHKey:
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment=path.name)
        key.write_private_key(path)
        key.write_public_key(path.with_name(path.name + ".pub"))
        path.chmod(0o600)
    return asyncssh.read_private_key(path)


def _start_target(root: Path, login: str) -> tuple[subprocess.Popen[bytes], int, asyncssh.SSHKey]:
    host_key = _key(root / "target_host_key")
    gateway_identity = _key(root / "gateway_identity")
    (root / "authorized_keys").write_bytes(gateway_identity.export_public_key())
    home = root / "home"
    home.mkdir(exist_ok=True)
    (home / ".bashrc").write_text("PS1='\\u@demo-target:\\w\\$ '\n")
    (home / ".profile").write_text(". ~/.bashrc\n")
    port = _free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'target_host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        f"PidFile {root / 'sshd.pid'}\nSetEnv HOME={home}\nAcceptEnv LANG LC_*\n"
        "Subsystem sftp internal-sftp\nPrintMotd no\nPrintLastLog no\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)],
        stderr=open(root / "sshd.log", "ab"),  # noqa: SIM115 (the child owns it)
    )
    del login
    return proc, port, host_key


def _write_config(root: Path, login: str, target_port: int, host_key: asyncssh.SSHKey) -> Path:
    user_key = _key(root / "user_ed25519")
    listen = _free_port(2222)
    public = user_key.export_public_key().decode().strip()
    pinned = host_key.export_public_key().decode().split()[:2]
    path = root / "shellgate.toml"
    path.write_text(f"""\
# Written by `make demo`. Try: shellgate check-config --config {path}
[gateway]
listen = "127.0.0.1:{listen}"
host_keys = ["var/ssh_host_ed25519_key"]
data_dir = "var"
detach_timeout = "15m"

[recording]
input = "redacted"

[[users]]
name = "demo"
keys = ["{public}"]
roles = ["admin"]

[[targets]]
name = "demo"
host = "127.0.0.1"
port = {target_port}
host_key = "{" ".join(pinned)}"
identity = "gateway_identity"
logins = ["{login}"]

[[policies]]
users = ["demo"]
targets = ["*"]
logins = ["{login}"]
""")
    return path


async def _run(root: Path) -> int:
    login = getpass.getuser()
    target, target_port, host_key = _start_target(root, login)
    try:
        config_path = _write_config(root, login, target_port, host_key)
        try:
            config = load_config(config_path)
        except ConfigError as e:
            for line in e.problems:
                print(f"shellgate demo: {line}", file=sys.stderr)
            return 1
        configure_logging("warning")
        gateway = Gateway(
            config, str(config_path), SqliteStore(config.gateway.data_dir / "shellgate.db")
        )
        try:
            await gateway.start()
        except (StartError, StoreError) as e:
            print(f"shellgate demo: {e} (remove ./demo to start afresh)", file=sys.stderr)
            await gateway.store.close()
            return 1
        gw_key = asyncssh.read_private_key(config.gateway.host_keys[0])
        known = root / "known_hosts"
        known.write_text(f"[127.0.0.1]:{gateway.port} {gw_key.export_public_key().decode()}")
        key = root / "user_ed25519"
        base = f"ssh -i {key} -o UserKnownHostsFile={known} -p {gateway.port}"
        print(
            f"""
shellgate demo is running (gateway 127.0.0.1:{gateway.port} -> target sshd 127.0.0.1:{target_port}).

  Open a recorded shell:      {base} {login}@demo@127.0.0.1
  Run one command:            {base} {login}@demo@127.0.0.1 uptime
  Your sessions:              {base} demo@127.0.0.1 sessions
  What was recorded:          .venv/bin/shellgate commands --config {config_path}
                              .venv/bin/shellgate connections --config {config_path}

Ctrl-C stops the gateway and the demo target.
""",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        print("\nstopping...", flush=True)
        await gateway.stop()
        return 0
    finally:
        target.terminate()
        try:
            target.wait(5)
        except subprocess.TimeoutExpired:
            target.kill()


def main() -> int:
    root = Path("demo").resolve()
    root.mkdir(exist_ok=True, mode=0o700)
    try:
        import uvloop

        return uvloop.run(_run(root))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
