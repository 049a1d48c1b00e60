"""The harness proves itself against a real sshd with the real OpenSSH client,
no gateway in between: if these fail, an end-to-end failure says nothing about
the gateway."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    ClientTimeout,
    SshClient,
    TargetSshd,
    TmuxTerminal,
    UserCA,
    certificate_principals,
    free_port,
    generate_key,
    procs,
    read_banner,
)

PROMPT = re.compile(r"root@target:~# $", re.M)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait_dead(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if procs.is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive


# -- sshd and the exec path ----------------------------------------------------------


async def test_exec_gets_clean_home_and_exit_status(target_sshd: TargetSshd) -> None:
    code, out, err = await target_sshd.client().ssh("echo $HOME; exit 3")
    assert (code, out, err) == (3, f"{target_sshd.home}\n".encode(), b"")
    assert target_sshd.home != Path("/root")


async def test_stdout_and_stderr_stay_apart(target_sshd_module: TargetSshd) -> None:
    done = await target_sshd_module.client().ssh("echo out; echo err >&2")
    assert done.returncode == 0
    assert done.stdout == b"out\n"
    assert done.stderr == b"err\n"


async def test_exec_is_binary_safe(target_sshd_module: TargetSshd) -> None:
    blob = os.urandom(256 * 1024)
    done = await target_sshd_module.client().ssh("cat", input=blob)
    assert done.returncode == 0
    assert done.stdout == blob


async def test_strict_host_key_check_uses_the_harness_known_hosts(
    target_sshd_module: TargetSshd, tmp_path: Path
) -> None:
    client = target_sshd_module.client(strict=True)
    assert (await client.ssh("true")).returncode == 0
    # The same port pinned to some other key: the client must refuse.
    other = generate_key(tmp_path, "other_host")
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{target_sshd_module.port} {other.public_blob}\n")
    done = await SshClient(
        client.host, client.port, client.login, client.key, known_hosts=wrong
    ).ssh("true")
    assert done.returncode == 255
    assert b"host key" in done.stderr.lower()


async def test_unknown_key_is_refused(target_sshd_module: TargetSshd, tmp_path: Path) -> None:
    stranger = generate_key(tmp_path, "stranger")
    done = await target_sshd_module.client().with_key(stranger.private).ssh("true")
    assert done.returncode == 255
    assert b"Permission denied" in done.stderr


async def test_env_is_accepted_for_shellgate_variables(target_sshd_module: TargetSshd) -> None:
    client = target_sshd_module.client().with_options("SetEnv=SHELLGATE_SESSION=build-42")
    done = await client.ssh("echo $SHELLGATE_SESSION")
    assert done.stdout == b"build-42\n"


async def test_timeout_kills_the_client(target_sshd_module: TargetSshd) -> None:
    with pytest.raises(ClientTimeout) as caught:
        await target_sshd_module.client().ssh("echo started; sleep 30", timeout=1.5)
    assert b"started" in caught.value.stdout
    assert not [t for t in procs.registered() if t.what == "ssh"]


def test_banner_and_log(target_sshd_module: TargetSshd) -> None:
    assert read_banner(target_sshd_module.host, target_sshd_module.port).startswith(b"SSH-2.0-")
    assert f"port {target_sshd_module.port}" in target_sshd_module.log_text()
    assert target_sshd_module.known_hosts.startswith(f"[127.0.0.1]:{target_sshd_module.port} ")


def test_target_toml_names_the_pins(target_sshd_module: TargetSshd) -> None:
    toml = target_sshd_module.target_toml("web1")
    assert f"port = {target_sshd_module.port}" in toml
    assert target_sshd_module.host_key_line in toml
    assert str(target_sshd_module.identity) in toml


# -- interactive shell in tmux --------------------------------------------------------


def test_interactive_shell_prompt_command_resize_exit(
    target_sshd: TargetSshd, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = tmux(target_sshd.client().ssh_args(), cols=100, rows=30)
    term.wait_for(PROMPT)
    term.send_line("echo hello-$((6*7))")
    term.wait_for("\nhello-42\n")
    term.send_line("stty size")
    term.wait_for("30 100")
    term.resize(120, 40)
    assert term.size == (120, 40)
    term.send_line("stty size")
    term.wait_for("40 120")
    # Ctrl-C interrupts the foreground command and the shell lives on.
    term.send_line("sleep 30")
    time.sleep(0.3)
    term.send_keys("C-c")
    term.send_line("echo after-$((1+1))")
    term.wait_for("after-2")
    assert term.exit_status is None
    term.send_line("exit 5")
    assert term.wait_exit() == 5


async def test_wait_for_async(target_sshd: TargetSshd, tmux: Callable[..., TmuxTerminal]) -> None:
    term = tmux(target_sshd.client().ssh_args())
    await term.wait_for_async(PROMPT)
    term.send_line("exit 4")
    assert await term.wait_exit_async() == 4


def test_tmux_reports_exit_status_and_signal(tmux: Callable[..., TmuxTerminal]) -> None:
    assert tmux(["sh", "-c", "exit 7"]).wait_exit() == 7
    killed = tmux(["sleep", "30"])
    deadline = time.monotonic() + 5
    while (pid := killed.command_pid) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pid is not None and pid != killed.pane_pid
    os.kill(pid, signal.SIGTERM)
    assert killed.wait_exit() == 128 + signal.SIGTERM
    assert killed.command_pid is None


def test_tmux_pane_has_clean_home(tmux: Callable[..., TmuxTerminal]) -> None:
    term = tmux("echo HOME=$HOME; echo AGENT=${SSH_AUTH_SOCK:-none}")
    assert term.wait_exit() == 0
    screen = term.screen()
    assert "HOME=/root\n" not in screen
    assert "AGENT=none" in screen


def test_tmux_wait_for_times_out_with_the_screen(tmux: Callable[..., TmuxTerminal]) -> None:
    term = tmux("echo something-else; sleep 30")
    term.wait_for("something-else")
    with pytest.raises(TimeoutError, match="something-else"):
        term.wait_for("never-there", timeout=0.3)


# -- file transfer --------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp-mode", "scp-O"])
async def test_scp_both_ways(target_sshd_module: TargetSshd, tmp_path: Path, legacy: bool) -> None:
    client = target_sshd_module.client()
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    remote = target_sshd_module.home / f"copy-{legacy}.bin"
    up = await client.scp(src, client.remote(remote), legacy=legacy)
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back.bin"
    down = await client.scp(client.remote(remote), back, legacy=legacy)
    assert down.returncode == 0, down.stderr
    assert _sha256(back) == _sha256(src) == _sha256(remote)


async def test_sftp_batch_both_ways(target_sshd_module: TargetSshd, tmp_path: Path) -> None:
    client = target_sshd_module.client()
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    remote = target_sshd_module.home / "sftp.bin"
    back = tmp_path / "back.bin"
    done = await client.sftp([f"put {src} {remote}", f"get {remote} {back}"])
    assert done.returncode == 0, done.stderr
    assert _sha256(back) == _sha256(src)
    failed = await client.sftp(["get /does/not/exist /tmp/x"])
    assert failed.returncode != 0


# -- keys and certificates ------------------------------------------------------------


def test_key_pair_files(tmp_path: Path) -> None:
    key = generate_key(tmp_path, "bob", comment="bob@test")
    assert key.private.stat().st_mode & 0o777 == 0o600
    assert key.public_line.startswith("ssh-ed25519 ") and key.public_line.endswith(" bob@test")
    assert key.public_blob == " ".join(key.public_line.split()[:2])
    assert key.fingerprint().startswith("SHA256:")
    assert generate_key(tmp_path, "r", key_type="rsa").public_line.startswith("ssh-rsa ")


async def test_user_certificate_logs_in_where_the_ca_is_trusted(tmp_path: Path) -> None:
    ca = UserCA.create(tmp_path / "ca")
    key = generate_key(tmp_path / "u", "carol")
    cert = ca.sign(key, ["root", "carol"], identity="carol@test", validity="-5m:+1h")
    assert cert == key.certificate and cert.exists()
    assert certificate_principals(cert) == ["root", "carol"]
    trusted = tmp_path / "trusted_ca"
    trusted.write_text(ca.public_line + "\n")
    with TargetSshd(tmp_path / "sshd", extra_config=[f"TrustedUserCAKeys {trusted}"]) as sshd:
        # The key is in no authorized_keys file: only its certificate lets it in.
        done = await sshd.client().with_key(key.private).ssh("echo via-cert")
        assert (done.returncode, done.stdout) == (0, b"via-cert\n")
        bare = generate_key(tmp_path / "u", "dave")
        assert (await sshd.client().with_key(bare.private).ssh("true")).returncode == 255


# -- process lifecycle ----------------------------------------------------------------


def test_kill_drops_live_sessions_and_refuses_new_ones(
    tmp_path: Path, tmux: Callable[..., TmuxTerminal]
) -> None:
    sshd = TargetSshd(tmp_path / "sshd").start()
    try:
        term = tmux(sshd.client().ssh_args())
        term.wait_for(PROMPT)
        listener = sshd.pid
        assert listener is not None
        sessions = sshd.session_pids()
        assert len(sshd.connection_pids()) == 1
        assert len(sessions) >= 2  # the per-connection sshd(s) and the shell
        sshd.kill()
        assert _wait_dead([listener, *sessions]) == []
        # The live client sees its connection drop.
        assert term.wait_exit() == 255
        done = sshd.client().ssh_sync("true", timeout=15)
        assert done.returncode == 255
        # start() brings it back on the same port with the same host key.
        port = sshd.port
        sshd.start()
        assert sshd.port == port
        assert sshd.client().ssh_sync("echo back").stdout == b"back\n"
    finally:
        sshd.cleanup()
    assert not sshd.running


def test_context_exit_kills_everything(tmp_path: Path) -> None:
    before = {t.pid for t in procs.registered()}
    with TargetSshd(tmp_path / "sshd") as sshd, TmuxTerminal(sshd.client().ssh_args()) as term:
        term.wait_for(PROMPT)
        pids = [p for p in (sshd.pid, term.server_pid) if p is not None]
        pids += sshd.session_pids() + procs.descendants(term.server_pid or 0)
        assert len(pids) >= 5
    assert _wait_dead(pids) == []
    assert {t.pid for t in procs.registered()} == before


def test_stop_ends_open_sessions_too(target_sshd: TargetSshd) -> None:
    client = target_sshd.client()
    popen = subprocess.Popen(
        client.ssh_args("sleep 60"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tracked = procs.register(popen.pid, "ssh sleep", popen)
    try:
        deadline = time.monotonic() + 10
        while not target_sshd.connection_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        sessions = target_sshd.session_pids()
        assert sessions
        target_sshd.stop()
        assert _wait_dead(sessions) == []
        assert popen.wait(timeout=10) != 0
    finally:
        procs.kill(tracked)


def test_kill_tree_reaches_grandchildren_in_other_sessions() -> None:
    # setsid makes the grandchild leave our process group, as sshd's children do.
    popen = subprocess.Popen(["sh", "-c", "setsid sleep 60 & sleep 60"], start_new_session=True)
    tracked = procs.register(popen.pid, "sh", popen)
    deadline = time.monotonic() + 5
    while len(procs.descendants(popen.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    tree = procs.descendants(popen.pid)
    assert len(tree) >= 2
    killed = procs.kill(tracked)
    assert set(tree) <= set(killed)
    assert _wait_dead([popen.pid, *tree]) == []
    assert tracked not in procs.registered()


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_fixture_free_port(free_port: Callable[[], int]) -> None:
    assert 1024 <= free_port() <= 65535
