"""Gateway core, end to end: the real ssh/scp/sftp clients through a real
shellgate daemon to a real sshd. Issue: gateway core."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import procs
from harness.gateway import GatewayProcess
from harness.keys import generate_key
from harness.net import free_port
from harness.sshd import TargetSshd
from harness.tmux import TmuxTerminal
from harness.waiting import poll_async

pytestmark = pytest.mark.e2e


async def test_exec_exit_status_and_streams_kept_apart(gateway: GatewayProcess) -> None:
    r = await gateway.to("web1").ssh("echo out; echo err >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == b"out\n"
    assert r.stderr == b"err\n"


async def test_exec_exit_signal_matches_direct(
    gateway: GatewayProcess, target_sshd: TargetSshd
) -> None:
    direct = await target_sshd.client(strict=False).ssh("kill -TERM $$")
    via = await gateway.to("web1").ssh("kill -TERM $$")
    assert direct.returncode == via.returncode != 0


async def test_stdin_eof_reaches_target(gateway: GatewayProcess) -> None:
    r = await gateway.to("web1").ssh("cat; echo done", input=b"abc")
    assert r.returncode == 0
    assert r.stdout == b"abcdone\n"


async def test_binary_round_trip_10mb(gateway: GatewayProcess, tmp_path: Path) -> None:
    blob = os.urandom(10 * 1024 * 1024)
    digest = hashlib.sha256(blob).hexdigest()
    remote = tmp_path / "remote.bin"
    up = await gateway.to("web1").ssh(f"cat > {remote}; sha256sum {remote}", input=blob, timeout=60)
    assert up.returncode == 0, up.stderr
    assert up.stdout.split()[0].decode() == digest
    down = await gateway.to("web1").ssh(f"cat {remote}", timeout=60)
    assert hashlib.sha256(down.stdout).hexdigest() == digest
    # Binary exec output is not put in the cast, only its size.
    conn = gateway.cli_json("connections")[-1]
    assert conn["bytes_out"] == len(blob)
    cast = gateway.cli("export", str(conn["id"])).stdout.decode()
    assert f"binary output: {len(blob)} bytes" in cast
    assert len(cast) < 10_000


async def test_binary_round_trip_across_client_rekeys(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """OpenSSH re-keys with the gateway every 256 KiB each way while 4 MB go up
    and come back: the relay's direct data path (gateway/sshtune.py) must hand
    every key exchange to asyncssh and pick the new keys up after it."""
    blob = os.urandom(4 * 1024 * 1024)
    digest = hashlib.sha256(blob).hexdigest()
    remote = tmp_path / "rekeyed.bin"
    client = gateway.to("web1").with_options("RekeyLimit=256K")
    up = await client.ssh(f"cat > {remote}; sha256sum {remote}", input=blob, timeout=60)
    assert up.returncode == 0, up.stderr
    assert up.stdout.split()[0].decode() == digest
    down = await client.ssh(f"cat {remote}", timeout=60)
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(down.stdout).hexdigest() == digest


async def test_tar_pipe_through_exec(gateway: GatewayProcess, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "b.txt").write_text("hello\n" * 1000)
    from harness.ssh_client import run

    dest = tmp_path / "dest"
    ssh = shlex.join(gateway.to("web1").ssh_args(f"mkdir -p {dest} && tar x -C {dest}"))
    r = await run(["sh", "-c", f"tar c -C {src} . | {ssh}"], timeout=60)
    assert r.returncode == 0, r.stderr
    assert (dest / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert (dest / "sub" / "b.txt").read_text() == "hello\n" * 1000


@pytest.mark.parametrize("legacy", [False, True], ids=["scp-sftp", "scp-O"])
async def test_scp_both_ways(gateway: GatewayProcess, tmp_path: Path, legacy: bool) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(2 * 1024 * 1024 + 17))
    client = gateway.to("web1")
    remote = tmp_path / "remote.bin"
    up = await client.scp(str(local), client.remote(remote), legacy=legacy)
    assert up.returncode == 0, up.stderr
    assert remote.read_bytes() == local.read_bytes()
    back = tmp_path / "back.bin"
    down = await client.scp(client.remote(remote), str(back), legacy=legacy)
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == local.read_bytes()


async def test_sftp_put_and_get(gateway: GatewayProcess, tmp_path: Path) -> None:
    local = tmp_path / "f.txt"
    local.write_bytes(b"sftp through the gateway\n" * 5000)
    remote = tmp_path / "remote.txt"
    back = tmp_path / "back.txt"
    r = await gateway.to("web1").sftp([f"put {local} {remote}", f"get {remote} {back}"])
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == local.read_bytes()
    audit = gateway.cli_json("audit")
    assert any(a["action"] == "transfer_opened" and "sftp" in str(a["detail"]) for a in audit)


async def test_second_session_reuses_the_pooled_target_connection(
    gateway: GatewayProcess, target_sshd: TargetSshd
) -> None:
    before = target_sshd.accepted_logins()
    for _ in range(3):
        r = await gateway.to("web1").ssh("true")
        assert r.returncode == 0
    assert target_sshd.accepted_logins() - before == 1


# -- refusals -------------------------------------------------------------------------


@pytest.fixture
def refusing_gateway(
    make_gateway: Callable[..., GatewayProcess], target_sshd: TargetSshd, tmp_path: Path
) -> GatewayProcess:
    """web1 (alice: root; bob: nothing), dead (nothing listens), liar (wrong pinned key)."""
    other = generate_key(tmp_path / "other", "other")
    dead_port = free_port()
    liar_key = " ".join(other.public_line.split()[:2])
    extra = (
        f'[[targets]]\nname = "dead"\nhost = "127.0.0.1"\nport = {dead_port}\n'
        f'host_key = "{target_sshd.host_key_line}"\nidentity = "{target_sshd.identity}"\n'
        'logins = ["root"]\n'
        f'[[targets]]\nname = "liar"\nhost = "127.0.0.1"\nport = {target_sshd.port}\n'
        f'host_key = "{liar_key}"\nidentity = "{target_sshd.identity}"\nlogins = ["root"]\n'
    )
    policies = (
        '[[policies]]\nusers = ["alice"]\ntargets = ["*"]\nlogins = ["root"]\n'
        '[[policies]]\nusers = ["bob"]\ntargets = ["web1"]\nlogins = ["nobody"]\n'
    )
    return make_gateway({"web1": target_sshd}, extra_toml=extra, policies_toml=policies)


@pytest.mark.parametrize(
    ("user", "login", "line"),
    [
        ("alice", "root@web9", "shellgate: no such target: web9"),
        ("bob", "root@web1", "shellgate: access denied: bob may not log in to web1 as root"),
        (
            "alice",
            "postgres@web1",
            "shellgate: access denied: alice may not log in to web1 as postgres",
        ),
    ],
)
async def test_refusals_are_one_plain_line(
    refusing_gateway: GatewayProcess, user: str, login: str, line: str
) -> None:
    for tty in (False, True):
        r = await refusing_gateway.client(user, login).ssh(
            "true" if not tty else None, tty=tty, timeout=20
        )
        assert r.returncode == 1
        assert r.stderr.decode().replace("\r\n", "\n") == line + "\n"
        assert b"\x1b" not in r.stderr
    audit = refusing_gateway.cli_json("audit")
    assert any(
        a["actor"] == user and line.removeprefix("shellgate: ") in str(a["detail"]) for a in audit
    )


async def test_unreachable_target(refusing_gateway: GatewayProcess) -> None:
    r = await refusing_gateway.to("dead").ssh("true", timeout=30)
    assert r.returncode == 1
    text = r.stderr.decode()
    assert text.startswith("shellgate: cannot reach target dead") and text.count("\n") == 1
    conns = refusing_gateway.cli_json("connections", "--target", "dead")
    assert [(c["state"], c["reason"], c["closed_by"]) for c in conns] == [
        ("closed", "target_unreachable", "system")
    ]


async def test_host_key_mismatch_is_refused(refusing_gateway: GatewayProcess) -> None:
    r = await refusing_gateway.to("liar").ssh("true", timeout=30)
    assert r.returncode == 1
    text = r.stderr.decode()
    assert text.startswith("shellgate: host key of target liar does not match")
    assert text.count("\n") == 1
    conns = refusing_gateway.cli_json("connections", "--target", "liar")
    assert [(c["state"], c["reason"]) for c in conns] == [("closed", "target_untrusted")]


async def test_wrong_key_is_refused_at_authentication(
    refusing_gateway: GatewayProcess, tmp_path: Path
) -> None:
    stranger = generate_key(tmp_path / "stranger", "mallory")
    r = await refusing_gateway.to("web1").with_key(stranger.private).ssh("true")
    assert r.returncode == 255
    assert b"Permission denied" in r.stderr
    audit = refusing_gateway.cli_json("audit")
    assert any(
        a["action"] == "auth_failed" and stranger.fingerprint() in str(a["detail"]) for a in audit
    )


# -- interactive --------------------------------------------------------------------


def _ssh_in_tmux(
    tmux: Callable[..., TmuxTerminal],
    gw: GatewayProcess,
    login: str = "root@web1",
    user: str = "alice",
    cols: int = 100,
    rows: int = 30,
) -> TmuxTerminal:
    return tmux(gw.client(user, login).ssh_args(tty=True), cols=cols, rows=rows)


def test_interactive_shell(gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]) -> None:
    term = _ssh_in_tmux(tmux, gateway)
    term.wait_for("root@target", timeout=15)
    term.send_line("echo $((6*7)); stty size")
    term.wait_for("30 100")
    assert "42" in term.screen()
    term.resize(120, 40)
    time.sleep(0.3)
    term.send_line("stty size")
    term.wait_for("40 120")
    term.send_line("sleep 30")
    time.sleep(0.5)
    term.send_keys("C-c")
    term.wait_for("^C")
    term.send_line("exit 7")
    assert term.wait_exit(15) == 7


def test_sigterm_closes_everything_cleanly(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = _ssh_in_tmux(tmux, gateway)
    term.wait_for("root@target", timeout=15)
    assert gateway.popen is not None
    pid = gateway.popen.pid
    assert gateway.stop() == 0
    assert term.wait_exit(15) != 0
    assert "shellgate: connection gateway shutting down" in term.screen(history=True)
    assert not procs.is_alive(pid)
    assert not procs.descendants(pid)
    assert not (gateway.data_dir / "control.sock").exists()


def test_sigint_also_stops(gateway: GatewayProcess) -> None:
    assert gateway.popen is not None
    gateway.popen.send_signal(signal.SIGINT)
    assert gateway.popen.wait(15) == 0


async def test_a_stalled_daemon_says_so_in_its_log_and_serves_on(gateway: GatewayProcess) -> None:
    # A stopped process is the plainest stall: its loop runs late by the stop.
    assert gateway.popen is not None
    gateway.popen.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.6)
    finally:
        gateway.popen.send_signal(signal.SIGCONT)
    r = await gateway.to("web1").ssh("echo after")
    assert r.stdout == b"after\n"

    def told() -> bool:
        # Within 10 s of an earlier stall (a loaded machine) it is in the next line.
        return any(
            e.get("event") == "loop stalled" and e["level"] == "warning" and e["worst_ms"] >= 500  # type: ignore[operator]
            for e in gateway.log_lines()
        )

    await poll_async(told, 15, "a 'loop stalled' line of at least 500 ms")


async def test_user_certificate_identifies_its_principal(
    make_gateway: Callable[..., GatewayProcess], target_sshd: TargetSshd, tmp_path: Path
) -> None:
    from harness.keys import UserCA

    ca = UserCA.create(tmp_path / "ca")
    gw = make_gateway(
        {"web1": target_sshd}, start=False, gateway_toml=f'user_ca_keys = ["{ca.public_line}"]'
    )
    gw.start()
    # carol's key is not in the config: only the certificate (principal bob) lets her in.
    carol = generate_key(tmp_path / "carol", "carol")
    ca.sign(carol, ["bob"])
    r = await gw.to("web1").with_key(carol.private).ssh("echo via-cert")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"via-cert\n"
    assert gw.cli_json("connections")[-1]["user"] == "bob"
    mallory = generate_key(tmp_path / "mallory", "mallory")
    ca.sign(mallory, ["nobody"])
    refused = await gw.to("web1").with_key(mallory.private).ssh("true")
    assert refused.returncode == 255
