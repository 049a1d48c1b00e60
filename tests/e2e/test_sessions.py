"""Detach, reattach, named sessions, takeover, force-close, locks, reload and
timeouts, end to end through the real daemon, real ssh, real sshd."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest
from harness.gateway import GatewayProcess
from harness.sshd import TargetSshd
from harness.tmux import TmuxTerminal

pytestmark = pytest.mark.e2e


def _shell(
    tmux: Callable[..., TmuxTerminal],
    gw: GatewayProcess,
    user: str = "alice",
    login: str = "root@web1",
    cols: int = 100,
    rows: int = 30,
) -> TmuxTerminal:
    term = tmux(gw.client(user, login).ssh_args(tty=True), cols=cols, rows=rows)
    term.wait_for("root@target", timeout=15)
    return term


def _attach(
    tmux: Callable[..., TmuxTerminal],
    gw: GatewayProcess,
    cid: str,
    user: str = "alice",
    cols: int = 100,
    rows: int = 30,
) -> TmuxTerminal:
    return tmux(gw.control(user).ssh_args(f"attach {cid}", tty=True), cols=cols, rows=rows)


def _only_live_id(gw: GatewayProcess, user: str = "alice") -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = [c for c in gw.cli_json("connections", "--user", user) if c["state"] != "closed"]
        if len(rows) == 1:
            return str(rows[0]["id"])
        time.sleep(0.1)
    raise AssertionError(f"expected one live connection, have {rows}")


def _state(gw: GatewayProcess, cid: str) -> str:
    return str(gw.cli_json("connections", "--connection", cid)[0]["state"])


def _wait_state(gw: GatewayProcess, cid: str, state: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _state(gw, cid) != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"{cid} is {_state(gw, cid)}, not {state}")
        time.sleep(0.1)


def _kill_client(term: TmuxTerminal) -> None:
    pid = term.command_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    term.wait_exit(10)


def test_detach_then_reattach_redraws_the_screen(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = _shell(tmux, gateway)
    term.send_line("echo BEFORE-$((40+2)); (sleep 1; echo WHILE-DETACHED) &")
    term.wait_for("BEFORE-42")
    cid = _only_live_id(gateway)
    _kill_client(term)
    gateway.wait_events(cid, types=["open", "connected", "disconnected"])
    assert _state(gateway, cid) == "detached"
    time.sleep(1.5)  # the background job prints while nobody is attached

    again = _attach(tmux, gateway, cid, cols=90, rows=25)
    screen = again.wait_for("WHILE-DETACHED", timeout=15)
    assert "BEFORE-42" in screen
    again.send_line("stty size; echo REATTACHED-$((1+1))")
    again.wait_for("REATTACHED-2")
    assert "25 90" in again.screen()
    events = gateway.wait_events(cid, types=["open", "connected", "disconnected", "connected"])
    assert _state(gateway, cid) == "connected"
    commands = [c["command"] for c in gateway.cli_json("commands", "--connection", cid)]
    assert "stty size; echo REATTACHED-$((1+1))" in commands
    again.send_line("exit")
    assert again.wait_exit(10) == 0
    events = gateway.wait_events(cid, types=["closed"])
    assert events[-1]["reason"] == "client_exit"
    cast = (gateway.data_dir / "recordings" / f"{cid}.cast").read_text()
    assert '"m", "detached"' in cast.replace('","', '", "')
    assert "attached by alice" in cast


def test_reattach_redraws_a_full_screen_program(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = _shell(tmux, gateway)
    term.send_line("vim -u NONE -N /tmp/shellgate-e2e-vim.txt")
    term.wait_for("shellgate-e2e-vim.txt")
    term.send_text("iHELLO FROM VIM")
    term.wait_for("HELLO FROM VIM")
    cid = _only_live_id(gateway)
    _kill_client(term)
    gateway.wait_events(cid, types=["disconnected"])
    again = _attach(tmux, gateway, cid)
    again.wait_for("HELLO FROM VIM", timeout=15)
    again.send_keys("Escape")
    again.send_text(":q!\r")
    again.wait_for("root@target")
    again.send_line("exit")
    assert again.wait_exit(10) == 0


async def _agent_session(port: int, key: Path, name: str, script: bytes) -> bytes:
    async with asyncssh.connect(
        "127.0.0.1",
        port,
        username="root@web1",
        client_keys=[str(key)],
        known_hosts=None,
        config=None,
        agent_path=None,
    ) as conn:
        stdin, stdout, _stderr = await conn.open_session(
            env={"SHELLGATE_SESSION": name}, encoding=None
        )
        stdin.write(script)
        out = b""
        while b"DONE" not in out:
            chunk = await asyncio.wait_for(stdout.read(4096), 10)
            assert chunk, f"session ended early: {out!r}"
            out += chunk
        return out


async def test_named_session_for_an_agent_without_a_pty(gateway: GatewayProcess) -> None:
    key = gateway.user("alice").key.private
    first = await _agent_session(gateway.port, key, "build-42", b"echo PID=$$; X=kept; echo DONE\n")
    pid = re.search(rb"PID=(\d+)", first)
    assert pid
    second = await _agent_session(gateway.port, key, "build-42", b"echo PID=$$ X=$X; echo DONE\n")
    assert f"PID={pid.group(1).decode()} X=kept".encode() in second
    rows = gateway.cli_json("connections", "--user", "alice")
    named = [r for r in rows if r["name"] == "build-42"]
    assert len(named) == 1
    other = await _agent_session(gateway.port, key, "build-43", b"echo PID=$$; echo DONE\n")
    assert pid.group(0) not in other


def test_named_session_from_openssh(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    client = gateway.to("web1").with_options("SetEnv=SHELLGATE_SESSION=deploy-7")
    term = tmux(client.ssh_args(tty=True), cols=100, rows=30)
    term.wait_for("root@target", timeout=15)
    term.send_line("export MARK=named-$((3*3))")
    cid = _only_live_id(gateway)
    _kill_client(term)
    gateway.wait_events(cid, types=["disconnected"])
    again = tmux(client.ssh_args(tty=True), cols=100, rows=30)
    again.send_line("echo $MARK")
    again.wait_for("named-9", timeout=15)
    assert _only_live_id(gateway) == cid


def test_takeover_moves_the_session(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    first = _shell(tmux, gateway)
    cid = _only_live_id(gateway)
    second = _attach(tmux, gateway, cid)
    assert first.wait_exit(15) != 0
    assert "shellgate: session attached elsewhere" in first.screen(history=True)
    second.send_line("echo TAKEN-$((2+3))")
    second.wait_for("TAKEN-5")
    gateway.wait_events(cid, types=["connected", "disconnected", "connected"])


def test_only_owner_or_admin_may_attach(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    _shell(tmux, gateway)
    cid = _only_live_id(gateway)
    r = gateway.control("bob").ssh_sync(f"attach {cid}")
    assert r.returncode == 1
    assert r.stderr.decode().strip() == f"shellgate: connection {cid} is not yours"
    audit = gateway.cli_json("audit")
    assert any(a["action"] == "attach_refused" and a["actor"] == "bob" for a in audit)


def test_sessions_lists_own_connections(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    _shell(tmux, gateway)
    cid = _only_live_id(gateway)
    r = gateway.control("alice").ssh_sync("sessions --json")
    assert r.returncode == 0
    assert cid in r.stdout.decode()
    assert gateway.control("bob").ssh_sync("sessions").stdout.decode().count("\n") == 1
    table = gateway.control("alice").ssh_sync("sessions").stdout.decode()
    assert cid in table and "connected" in table


def test_admin_close_from_the_cli(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = _shell(tmux, gateway, user="bob")
    cid = _only_live_id(gateway, "bob")
    r = gateway.cli("close", cid, "--reason", "maintenance", "--as", "carol")
    assert r.returncode == 0, r.stderr
    assert term.wait_exit(10) != 0
    assert "shellgate: connection closed by admin carol: maintenance" in term.screen(history=True)
    closed = gateway.wait_events(cid, types=["closed"])[-1]
    assert (closed["reason"], closed["closed_by"]) == ("admin_closed", "carol")
    assert closed["message"] == "closed by admin carol: maintenance"
    again = gateway.cli("close", cid, "--reason", "again")
    assert again.returncode == 1
    assert again.stderr.decode().startswith("shellgate: no live connection")
    audit = gateway.cli_json("audit")
    assert any(a["action"] == "close" and a["actor"] == "carol" for a in audit)


def test_admin_close_over_ssh_and_user_close(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = _shell(tmux, gateway, user="bob")
    cid = _only_live_id(gateway, "bob")
    refused = gateway.control("bob").ssh_sync("connections")
    assert refused.returncode == 1
    r = gateway.control("alice").ssh_sync(f"close {cid} --reason 'disk full'")
    assert r.returncode == 0, r.stderr
    assert term.wait_exit(10) != 0
    closed = gateway.wait_events(cid, types=["closed"])[-1]
    assert (closed["reason"], closed["closed_by"]) == ("admin_closed", "alice")
    term2 = _shell(tmux, gateway, user="bob")
    cid2 = _only_live_id(gateway, "bob")
    r = gateway.control("bob").ssh_sync(f"close {cid2} --reason done")
    assert r.returncode == 0
    assert term2.wait_exit(10) != 0
    closed = gateway.wait_events(cid2, types=["closed"])[-1]
    assert (closed["reason"], closed["closed_by"]) == ("user_closed", "bob")


def test_lock_survives_restart_until_unlock(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = _shell(tmux, gateway, user="bob")
    cid = _only_live_id(gateway, "bob")
    r = gateway.cli("lock", "bob", "--reason", "left the company", "--as", "alice")
    assert r.returncode == 0, r.stderr
    assert term.wait_exit(10) != 0
    closed = gateway.wait_events(cid, types=["closed"])[-1]
    assert (closed["reason"], closed["closed_by"]) == ("user_locked", "alice")
    refused = gateway.to("web1", user="bob").ssh_sync("true")
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == "shellgate: user bob is locked"
    assert gateway.stop() == 0
    gateway.start()
    assert gateway.to("web1", user="bob").ssh_sync("true").returncode == 1
    assert gateway.cli("unlock", "bob", "--as", "alice").returncode == 0
    assert gateway.to("web1", user="bob").ssh_sync("true").returncode == 0


def test_reload_removes_a_target(
    make_gateway: Callable[..., GatewayProcess],
    target_sshd: TargetSshd,
    tmux: Callable[..., TmuxTerminal],
    tmp_path: Path,
) -> None:
    gw = make_gateway({"web1": target_sshd, "web2": target_sshd})
    term = tmux(gw.to("web2").ssh_args(tty=True), cols=100, rows=30)
    term.wait_for("root@target", timeout=15)
    keep = _shell(tmux, gw)
    del gw.targets["web2"]
    gw.write_config()
    r = gw.cli("reload", "--as", "alice")
    assert r.returncode == 0, r.stderr
    assert term.wait_exit(10) != 0
    closed = [e for e in gw.cli_json("events", "--target", "web2") if e["type"] == "closed"]
    assert closed and closed[0]["reason"] == "target_removed"
    assert closed[0]["message"] == "target web2 removed by alice"
    keep.send_line("echo STILL-$((1+1))")
    keep.wait_for("STILL-2")
    # A config that fails validation is refused and the old one stays.
    gw.config_path.write_text(gw.config_path.read_text() + "\n[gateway\n")
    bad = gw.cli("reload")
    assert bad.returncode == 1
    (Path(gw.config_path)).write_text("")  # leave nothing half-valid behind
    gw.write_config()
    assert (
        gw.to("web2").ssh_sync("true").stderr.decode().strip() == "shellgate: no such target: web2"
    )


def test_detach_timeout(
    make_gateway: Callable[..., GatewayProcess],
    target_sshd: TargetSshd,
    tmux: Callable[..., TmuxTerminal],
) -> None:
    gw = make_gateway({"web1": target_sshd}, gateway_toml='detach_timeout = "2s"')
    term = _shell(tmux, gw)
    cid = _only_live_id(gw)
    _kill_client(term)
    events = gw.wait_events(cid, types=["disconnected", "closed"], timeout=15)
    assert (events[-1]["reason"], events[-1]["closed_by"]) == ("detach_timeout", "system")


def test_idle_timeout_warns_then_closes(
    make_gateway: Callable[..., GatewayProcess],
    target_sshd: TargetSshd,
    tmux: Callable[..., TmuxTerminal],
) -> None:
    gw = make_gateway(
        {"web1": target_sshd}, gateway_toml='idle_timeout = "4s"\nidle_warning = "2s"'
    )
    term = _shell(tmux, gw)
    cid = _only_live_id(gw)
    assert term.wait_exit(20) != 0
    screen = term.screen(history=True)
    assert "shellgate: idle for" in screen
    assert "shellgate: connection no input for 4s" in screen
    closed = gw.wait_events(cid, types=["closed"])[-1]
    assert (closed["reason"], closed["closed_by"]) == ("idle_timeout", "system")


async def test_exec_client_gone_closes_user_closed(gateway: GatewayProcess) -> None:
    from harness.ssh_client import ClientTimeout

    with pytest.raises(ClientTimeout):
        await gateway.to("web1").ssh("sleep 60", timeout=2)
    rows = gateway.cli_json("connections", "--user", "alice")
    deadline = time.monotonic() + 10
    while rows[-1]["state"] != "closed" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        rows = gateway.cli_json("connections", "--user", "alice")
    assert (rows[-1]["reason"], rows[-1]["closed_by"]) == ("user_closed", "alice")


def _paramiko_round(port: int, key: Path, name: str, script: bytes, pty: bool) -> bytes:
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        port=port,
        username="root@web1",
        key_filename=str(key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        chan = client.get_transport().open_session()  # type: ignore[union-attr]
        chan.set_environment_variable("SHELLGATE_SESSION", name)
        if pty:
            chan.get_pty(term="xterm", width=80, height=24)
        chan.invoke_shell()
        chan.settimeout(10)
        chan.sendall(script)
        out = b""
        while b"DONE-" not in out.replace(b"DONE-$", b""):
            chunk = chan.recv(4096)
            assert chunk, out
            out += chunk
        return out
    finally:
        client.close()


@pytest.mark.parametrize("pty", [False, True], ids=["no-pty", "pty"])
def test_named_session_from_paramiko(gateway: GatewayProcess, pty: bool) -> None:
    key = gateway.user("alice").key.private
    first = _paramiko_round(gateway.port, key, "agent-p", b"echo PID=$$; echo DONE-$((1))\n", pty)
    pid = re.search(rb"PID=(\d+)", first)
    assert pid
    second = _paramiko_round(gateway.port, key, "agent-p", b"echo PID=$$; echo DONE-$((2))\n", pty)
    assert pid.group(0) in second


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(
    make_gateway: Callable[..., GatewayProcess], target_sshd: TargetSshd
) -> None:
    gw = make_gateway({"web1": target_sshd, "web2": target_sshd})
    assert gw.popen is not None
    good = gw.config_path.read_text()
    gw.config_path.write_text(good + "\n[gateway\n")  # broken TOML
    gw.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any(line.get("event") == "reload refused" for line in gw.log_lines()):
        assert time.monotonic() < deadline, "reload refusal not logged"
        time.sleep(0.2)
    assert gw.to("web2").ssh_sync("true").returncode == 0  # the old config stays
    gw.config_path.write_text(good)
    assert any(a["action"] == "reload_refused" for a in gw.cli_json("audit"))
    del gw.targets["web2"]
    gw.write_config()
    gw.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gw.to("web2").ssh_sync("true").returncode != 1:
        assert time.monotonic() < deadline, "web2 still reachable after SIGHUP"
        time.sleep(0.2)
    assert gw.to("web1").ssh_sync("true").returncode == 0
    assert gw.popen.poll() is None


def test_detach_timeout_overridden_per_target(
    make_gateway: Callable[..., GatewayProcess],
    target_sshd: TargetSshd,
    tmux: Callable[..., TmuxTerminal],
) -> None:
    """The gateway keeps detached shells 15 minutes; target web2 only 2 s."""
    web2 = target_sshd.target_toml("web2") + 'detach_timeout = "2s"\n'
    gw = make_gateway({"web1": target_sshd}, extra_toml=web2)
    term = _shell(tmux, gw, login="root@web2")
    cid = _only_live_id(gw)
    _kill_client(term)
    events = gw.wait_events(cid, types=["disconnected", "closed"], timeout=15)
    assert (events[-1]["reason"], events[-1]["closed_by"]) == ("detach_timeout", "system")
    kept = _shell(tmux, gw, login="root@web1")
    cid1 = next(c for c in gw.cli_json("connections") if c["state"] == "connected")["id"]
    _kill_client(kept)
    gw.wait_events(str(cid1), types=["disconnected"])
    time.sleep(3)
    assert _state(gw, str(cid1)) == "detached"
