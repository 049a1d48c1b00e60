"""Connection events and the store, end to end: the real OpenSSH client through
the real daemon to a real sshd, checked through the operator's CLI
(``shellgate events/connections/audit --json``). Issue 3, "How it is tested"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cast_validator import validate_cast
from harness import procs
from harness.gateway import SHELLGATE, GatewayProcess
from harness.keys import generate_key
from harness.net import free_port
from harness.sshd import TargetSshd
from harness.tmux import TmuxTerminal
from harness.waiting import poll

pytestmark = pytest.mark.e2e

CONTRACT_FIELDS = (
    "id",
    "time",
    "type",
    "connection_id",
    "user",
    "target",
    "target_user",
    "client_addr",
)
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|\+00:00)$")
STATE_AFTER = {
    "open": "open",
    "connected": "connected",
    "disconnected": "detached",
    "closed": "closed",
}


# -- helpers --------------------------------------------------------------------------


def shell_in_tmux(
    tmux: Callable[..., TmuxTerminal], gw: GatewayProcess, target: str = "web1"
) -> TmuxTerminal:
    term = tmux(gw.to(target).ssh_args(tty=True), cols=100, rows=30)
    term.wait_for("root@target", timeout=15)
    return term


def live_connection(gw: GatewayProcess, target: str = "web1", state: str = "connected") -> dict:
    """The one connection to ``target`` in ``state`` (polled: the store is batched)."""

    def find() -> list[dict]:
        return [c for c in gw.cli_json("connections", "--target", target) if c["state"] == state]

    found = poll(find, message=f"a {state} connection to {target}")
    assert isinstance(found, list) and len(found) == 1, found
    return found[0]


def closed_event(
    gw: GatewayProcess, connection_id: str, timeout: float = 10.0
) -> tuple[dict, list[str]]:
    """The connection's one ``closed`` event, and the types of all its events."""
    events = gw.wait_events(connection_id, types=["closed"], timeout=timeout)
    closed = [e for e in events if e["type"] == "closed"]
    assert len(closed) == 1, events  # closed exactly once
    return closed[0], [str(e["type"]) for e in events]


def check_contract(gw: GatewayProcess) -> list[dict]:
    """Every event has the contract's fields; every connection's state is the
    one its last event implies. Returns the events."""
    events = gw.cli_json("events")
    for e in events:
        for name in CONTRACT_FIELDS:
            assert name in e, (name, e)
        for name in ("id", "type", "connection_id", "user", "target", "target_user"):
            assert isinstance(e[name], str) and e[name], (name, e)
        assert isinstance(e["client_addr"], str) and e["client_addr"].startswith("127.0.0.1:"), e
        assert RFC3339_UTC.match(str(e["time"])), e["time"]
        assert e["type"] in STATE_AFTER, e
        if e["type"] == "closed":
            assert e["reason"] and e["closed_by"] and isinstance(e["message"], str), e
    assert len({e["id"] for e in events}) == len(events), "event ids are not unique"
    times = [e["time"] for e in events]
    assert times == sorted(times), "events are not oldest first"
    last: dict[str, dict] = {}
    for e in events:
        last[str(e["connection_id"])] = e
    conns = gw.cli_json("connections")
    assert {c["id"] for c in conns} == set(last), "connections without events (or vice versa)"
    for c in conns:
        assert c["state"] == STATE_AFTER[str(last[c["id"]]["type"])], (c, last[c["id"]])
    return events


@pytest.fixture
def second_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TargetSshd]:
    with TargetSshd(tmp_path_factory.mktemp("sshd2")) as sshd:
        yield sshd


# -- a shell and an exec ------------------------------------------------------------------


def test_shell_exit_status_in_closed_event(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = shell_in_tmux(tmux, gateway)
    conn = live_connection(gateway)
    term.send_line("echo hello-events")
    term.wait_for("hello-events\n")
    term.send_line("exit 3")
    assert term.wait_exit(15) == 3
    closed, types = closed_event(gateway, conn["id"])
    assert types == ["open", "connected", "closed"]
    assert closed["reason"] == "client_exit"
    assert closed["closed_by"] == "alice"
    assert re.search(r"\b3\b", str(closed["message"])), closed["message"]
    assert (closed["user"], closed["target"], closed["target_user"]) == ("alice", "web1", "root")
    (row,) = gateway.cli_json("connections", "--connection", conn["id"])
    assert row["state"] == "closed"
    assert (row["reason"], row["closed_by"]) == ("client_exit", "alice")
    assert row["bytes_in"] > 0 and row["bytes_out"] > 0, row
    assert row["cast_path"] and Path(row["cast_path"]).is_file(), row
    assert row["opened_at"] and row["closed_at"] and row["closed_at"] >= row["opened_at"]
    check_contract(gateway)


async def test_exec_events(gateway: GatewayProcess) -> None:
    r = await gateway.to("web1", user="bob").ssh("cat >/dev/null; echo out; exit 5", input=b"in\n")
    assert r.returncode == 5 and r.stdout == b"out\n"
    (conn,) = gateway.cli_json("connections", "--user", "bob")
    closed, types = closed_event(gateway, conn["id"])
    assert types == ["open", "connected", "closed"]
    assert (closed["reason"], closed["closed_by"]) == ("client_exit", "bob")
    assert re.search(r"\b5\b", str(closed["message"])), closed["message"]
    (row,) = gateway.cli_json("connections", "--connection", conn["id"])
    assert row["state"] == "closed"
    assert row["bytes_in"] == 3 and row["bytes_out"] == 4, row
    assert row["cast_path"]
    check_contract(gateway)


# -- the target goes away, or was never there ------------------------------------------


async def test_unreachable_target_is_open_then_closed(
    make_gateway: Callable[..., GatewayProcess], target_sshd: TargetSshd
) -> None:
    dead = (
        f'[[targets]]\nname = "dead"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'host_key = "{target_sshd.host_key_line}"\nidentity = "{target_sshd.identity}"\n'
        'logins = ["root"]\n'
    )
    gw = make_gateway({"web1": target_sshd}, extra_toml=dead)
    r = await gw.to("dead").ssh("true", timeout=30)
    assert r.returncode == 1 and r.stderr.startswith(b"shellgate: ")
    (conn,) = gw.cli_json("connections", "--target", "dead")
    closed, types = closed_event(gw, conn["id"])
    assert types == ["open", "closed"]
    assert (closed["reason"], closed["closed_by"]) == ("target_unreachable", "system")
    check_contract(gw)


def test_target_lost_mid_session(
    make_gateway: Callable[..., GatewayProcess],
    target_sshd: TargetSshd,
    second_sshd: TargetSshd,
    tmux: Callable[..., TmuxTerminal],
) -> None:
    gw = make_gateway({"web1": target_sshd, "web2": second_sshd})
    term = shell_in_tmux(tmux, gw, "web1")
    conn = live_connection(gw, "web1")
    target_sshd.kill()
    status = term.wait_exit(15)
    assert status != 0
    assert "shellgate: " in term.screen(history=True)
    closed, types = closed_event(gw, conn["id"])
    assert (closed["reason"], closed["closed_by"]) == ("target_lost", "system")
    assert types == ["open", "connected", "closed"]
    # The gateway serves another target at once, and the lost one once it is back.
    r = gw.to("web2").ssh_sync("echo still-serving")
    assert (r.returncode, r.stdout) == (0, b"still-serving\n"), r
    target_sshd.start()
    r = gw.to("web1").ssh_sync("echo web1-back", timeout=30)
    assert (r.returncode, r.stdout) == (0, b"web1-back\n"), r
    check_contract(gw)


# -- the daemon stops ---------------------------------------------------------------------


def test_sigterm_closes_live_shell_with_gateway_shutdown(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = shell_in_tmux(tmux, gateway)
    conn = live_connection(gateway)
    check_contract(gateway)  # while it is live too
    assert gateway.stop() == 0
    assert term.wait_exit(15) != 0
    closed, types = closed_event(gateway, conn["id"])
    assert (closed["reason"], closed["closed_by"]) == ("gateway_shutdown", "system")
    assert types == ["open", "connected", "closed"]
    _, events = validate_cast(conn["cast_path"])
    assert events[-1][1:] == ("m", "closed: gateway_shutdown")
    check_contract(gateway)


def test_kill_9_then_restart_closes_with_gateway_crashed(
    gateway: GatewayProcess, tmux: Callable[..., TmuxTerminal]
) -> None:
    term = shell_in_tmux(tmux, gateway)
    conn = live_connection(gateway)
    term.send_line("echo before-the-crash")
    term.wait_for("before-the-crash\n")
    cast = Path(conn["cast_path"])
    # Wait for a flush so the cast on disk holds that output (then the daemon dies).
    poll(lambda: b"before-the-crash" in cast.read_bytes(), timeout=5, message="a flush")
    gateway.kill()
    term.wait_exit(15)
    # Nothing closed it: the store still shows it live.
    (row,) = gateway.cli_json("connections", "--connection", conn["id"])
    assert row["state"] == "connected"
    gateway.start()
    closed, types = closed_event(gateway, conn["id"])
    assert (closed["reason"], closed["closed_by"]) == ("gateway_crashed", "system")
    assert types == ["open", "connected", "closed"]
    (row,) = gateway.cli_json("connections", "--connection", conn["id"])
    assert (row["state"], row["reason"]) == ("closed", "gateway_crashed")
    _, events = validate_cast(cast)
    assert any(code == "o" and "before-the-crash" in data for _, code, data in events)
    assert events[-1][1:] == ("m", "closed: gateway_crashed")
    check_contract(gateway)
    # And the restarted daemon serves.
    r = gateway.to("web1").ssh_sync("echo after-restart")
    assert (r.returncode, r.stdout) == (0, b"after-restart\n"), r


def test_restart_repairs_a_torn_cast_that_has_no_connection_row(gateway: GatewayProcess) -> None:
    """A kill -9 after a connection's first cast write but before its open
    event was committed leaves a cast the store does not know: start-up
    repairs it too, and says so in the audit log."""
    r = gateway.to("web1").ssh_sync("echo committed")
    assert (r.returncode, r.stdout) == (0, b"committed\n"), r
    (row,) = poll(lambda: gateway.cli_json("connections") or None, message="a connection row")
    header = Path(row["cast_path"]).read_bytes().split(b"\n", 1)[0]
    gateway.kill()
    orphan = gateway.data_dir / "recordings" / "0b9d7c1e-5f7a-4d7e-9c1e-000000000001.cast"
    orphan.write_bytes(header + b'\n[0.25, "o", "whole line\\r\\n"]\n[0.5, "o", "torn li')
    gateway.start()
    audit = poll(
        lambda: (
            [a for a in gateway.cli_json("audit") if a["action"] == "recording_repaired"] or None
        ),
        message="a recording_repaired audit entry",
    )
    assert isinstance(audit, list) and len(audit) == 1, audit
    assert (audit[0]["actor"], audit[0]["connection_id"]) == ("system", orphan.stem)
    _, events = validate_cast(orphan)
    assert events == [(0.25, "o", "whole line\r\n"), (0.25, "m", "closed: gateway_crashed")]
    # The committed connection's cast was whole: left as it was.
    _, events = validate_cast(row["cast_path"])
    assert events[-1][1:] != ("m", "closed: gateway_crashed")
    check_contract(gateway)


# -- audit ----------------------------------------------------------------------------------


async def test_auth_failure_and_policy_refusal_are_audited(
    make_gateway: Callable[..., GatewayProcess], target_sshd: TargetSshd, tmp_path: Path
) -> None:
    policies = (
        '[[policies]]\nusers = ["alice"]\ntargets = ["*"]\nlogins = ["root"]\n'
        '[[policies]]\nusers = ["bob"]\ntargets = ["web1"]\nlogins = ["nobody"]\n'
    )
    gw = make_gateway({"web1": target_sshd}, policies_toml=policies)
    stranger = generate_key(tmp_path / "stranger", "mallory")
    r = await gw.to("web1").with_key(stranger.private).ssh("true")
    assert r.returncode == 255
    r = await gw.to("web1", user="bob").ssh("true")
    assert r.returncode == 1
    assert r.stderr.startswith(b"shellgate: access denied")

    def two_entries() -> list[dict] | None:
        rows = gw.cli_json("audit")
        return rows if len(rows) >= 2 else None

    audit = poll(two_entries, message="two audit entries")
    assert isinstance(audit, list)
    for a in audit:
        for name in ("time", "actor", "action", "client_addr", "detail"):
            assert name in a, (name, a)
        assert RFC3339_UTC.match(str(a["time"])), a
    failed = [a for a in audit if a["action"] == "auth_failed"]
    assert len(failed) >= 1
    assert stranger.fingerprint() in str(failed[0]["detail"])
    assert str(failed[0]["client_addr"]).startswith("127.0.0.1:")
    denied = [a for a in audit if a["actor"] == "bob"]
    assert len(denied) == 1, audit
    assert denied[0]["target"] == "web1" and "denied" in str(denied[0]["detail"])
    assert str(denied[0]["client_addr"]).startswith("127.0.0.1:")
    # Refusals are audit entries only: no connection row, no events.
    assert gw.cli_json("connections") == []
    assert gw.cli_json("events") == []


# -- follow -----------------------------------------------------------------------------------


async def test_events_follow_prints_new_events(gateway: GatewayProcess) -> None:
    follow = subprocess.Popen(
        [*SHELLGATE, "events", "--follow", "--json", "--config", str(gateway.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tracked = procs.register(follow.pid, "shellgate events --follow", follow)
    try:
        time.sleep(0.5)  # let it start following (it shows nothing: the store is empty)
        r = await gateway.to("web1").ssh("echo followed")
        assert r.returncode == 0
        assert follow.stdout is not None
        os.set_blocking(follow.stdout.fileno(), False)
        buf = b""
        deadline = time.monotonic() + 10
        while buf.count(b"\n") < 3 and time.monotonic() < deadline:
            chunk = follow.stdout.read()
            if chunk:
                buf += chunk
            else:
                time.sleep(0.05)
        seen = [json.loads(line) for line in buf.splitlines()]
        assert [e["type"] for e in seen] == ["open", "connected", "closed"], (
            seen,
            follow.poll(),
        )
        assert all(e["target"] == "web1" for e in seen)
        assert follow.poll() is None  # still following
    finally:
        follow.kill()
        follow.wait(5)
        procs.unregister(tracked.pid)
