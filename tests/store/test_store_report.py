"""The query CLI (gateway/report.py), run in-process through its own parser:
JSON Lines round trips, tables, escaping, filters, export and errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from store_helpers import at, who

from config import ConfigError, GatewayConfig
from gateway.report import add_query_commands, parse_when, safe_text
from store import SqliteStore
from store.events import (
    AuditEntry,
    ClosedEvent,
    CloseReason,
    CommandRecord,
    ConnectedEvent,
    Connection,
    OpenEvent,
    StoreRecord,
)

Cli = Callable[..., Awaitable[tuple[int, str, str]]]

EVIL = "echo \x1b]0;pwned\x07\x1b[2J\x9b31m \u202egnp.exe\nrm -rf /tmp/x\tdone"

OPEN = OpenEvent(connection_id="c1", time=at(0), cast_path=None, **who())
CLOSED = ClosedEvent(
    connection_id="c1",
    time=at(30),
    reason=CloseReason.ADMIN_CLOSED,
    closed_by="bob",
    message="closed by admin bob: \x1b[31mmaint",
    **who(),
)
COMMANDS = [
    CommandRecord(
        time=at(10),
        connection_id="c1",
        user="alice",
        target="web1",
        target_user="deploy",
        command="ls",
    ),
    CommandRecord(
        time=at(20),
        connection_id="c1",
        user="alice",
        target="web1",
        target_user="deploy",
        command=EVIL,
    ),
    CommandRecord(
        time=at(25),
        connection_id="c2",
        user="bob",
        target="web2",
        target_user="root",
        command="uptime",
    ),
]
AUDIT = AuditEntry(
    time=at(5),
    actor="mallory",
    action="auth_failed",
    client_addr="203.0.113.9:4",
    detail="publickey SHA256:abc",
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
async def filled(data_dir: Path) -> None:
    async with SqliteStore(data_dir / "shellgate.db") as s:
        records: list[StoreRecord] = [
            OPEN,
            ConnectedEvent(connection_id="c1", time=at(1), **who()),
            *COMMANDS,
            AUDIT,
            CLOSED,
        ]
        for r in records:
            s.emit(r)


@pytest.fixture
def cli(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    def loader(path: str | None) -> GatewayConfig:
        if path == "bad.toml":
            raise ConfigError(["bad.toml: gateway.listen: not a host:port"])
        return GatewayConfig.model_validate({"gateway": {"data_dir": data_dir}})

    parser = argparse.ArgumentParser(prog="shellgate")
    add_query_commands(parser.add_subparsers(dest="command", required=True), loader)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        args = parser.parse_args(argv)
        code = await args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    return run


async def test_json_lines_round_trip(cli: Cli, filled: None) -> None:
    code, out, err = await cli("commands", "--json")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [CommandRecord.model_validate_json(line) for line in lines] == COMMANDS
    first = json.loads(lines[0])
    assert first == {
        "type": "command",
        "time": "2025-03-01T12:00:10.000000Z",
        "connection_id": "c1",
        "user": "alice",
        "target": "web1",
        "target_user": "deploy",
        "command": "ls",
    }

    code, out, _ = await cli("audit", "--json")
    assert [AuditEntry.model_validate_json(line) for line in out.splitlines()] == [AUDIT]

    code, out, _ = await cli("events", "--json", "--connection", "c1")
    types = [json.loads(line)["type"] for line in out.splitlines()]
    assert types == ["open", "connected", "closed"]
    assert ClosedEvent.model_validate_json(out.splitlines()[-1]) == CLOSED

    code, out, _ = await cli("connections", "--json")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert set(row) == {
        "id",
        "user",
        "target",
        "target_user",
        "client_addr",
        "kind",
        "name",
        "state",
        "opened_at",
        "closed_at",
        "reason",
        "closed_by",
        "message",
        "bytes_in",
        "bytes_out",
        "cast_path",
    }
    assert (row["state"], row["reason"], row["closed_by"]) == ("closed", "admin_closed", "bob")
    assert row["closed_at"] == "2025-03-01T12:00:30.000000Z"
    assert Connection.model_validate(row).message == CLOSED.message


async def test_nothing_printed_can_reach_the_terminal_raw(cli: Cli, filled: None) -> None:
    for argv in (("commands",), ("commands", "--json"), ("events",), ("connections",)):
        code, out, _ = await cli(*argv)
        assert code == 0
        for ch in ("\x1b", "\x07", "\x9b", "\u202e", "\t"):
            assert ch not in out, (argv, ch)
    _, table, _ = await cli("commands")
    assert safe_text(EVIL) in table
    assert "echo \\x1b]0;pwned\\x07\\x1b[2J\\x9b31m \\u202egnp.exe\\nrm -rf /tmp/x\\tdone" in table
    _, jsonl, _ = await cli("commands", "--json")
    # still the same JSON: a program gets the command back exactly
    assert json.loads(jsonl.splitlines()[1])["command"] == EVIL


async def test_table_is_aligned_with_a_header(cli: Cli, filled: None) -> None:
    code, out, _ = await cli("commands", "--user", "alice")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "CONNECTION", "USER", "TARGET", "LOGIN", "COMMAND"]
    assert len(lines) == 3
    col = lines[0].index("USER")
    assert all(line[col:].startswith("alice") for line in lines[1:])
    assert lines[1].startswith("2025-03-01T12:00:10Z")


async def test_filters_on_the_command_line(cli: Cli, filled: None) -> None:
    async def commands(*argv: str) -> list[str]:
        _, out, _ = await cli("commands", "--json", *argv)
        return [json.loads(line)["command"] for line in out.splitlines()]

    assert await commands("--user", "bob") == ["uptime"]
    assert await commands("--target", "web1", "--limit", "1") == [EVIL]
    assert await commands("--connection", "c2") == ["uptime"]
    assert await commands("--since", "2025-03-01T12:00:15Z") == [EVIL, "uptime"]
    assert await commands("--until", "2025-03-01T12:00:15+00:00") == ["ls"]
    assert await commands("--since", "15m") == []  # the fixture's times are long past
    _, out, _ = await cli("commands", "--user", "nobody")
    assert out == ""


def test_parse_when() -> None:
    now = datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
    assert parse_when("15m", now=now) == now - timedelta(minutes=15)
    assert parse_when("1h30m", now=now) == now - timedelta(minutes=90)
    assert parse_when("2025-05-01T08:00:00+02:00") == datetime(2025, 5, 1, 6, tzinfo=UTC)
    assert parse_when("2025-05-01T08:00:00") == datetime(2025, 5, 1, 8, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="not a time or duration"):
        parse_when("yesterday")


async def test_a_bad_since_is_a_usage_error(cli: Cli) -> None:
    with pytest.raises(SystemExit) as e:
        await cli("commands", "--since", "yesterday")
    assert e.value.code == 2


async def test_missing_store(cli: Cli, data_dir: Path) -> None:
    for argv in (
        ("connections",),
        ("events",),
        ("commands", "--json"),
        ("audit",),
        ("export", "c1"),
    ):
        code, out, err = await cli(*argv)
        assert (code, out) == (1, "")
        assert err == f"shellgate: no store at {data_dir / 'shellgate.db'} (has the gateway run?)\n"
    assert not data_dir.exists()


async def test_bad_config_is_one_line_per_problem(cli: Cli) -> None:
    code, out, err = await cli("commands", "--config", "bad.toml")
    assert (code, out) == (1, "")
    assert err == "shellgate: bad.toml: gateway.listen: not a host:port\n"


async def test_export(cli: Cli, filled: None, data_dir: Path, tmp_path: Path) -> None:
    code, out, err = await cli("export", "nope")
    assert (code, out, err) == (1, "", "shellgate: no connection nope\n")

    cast = data_dir / "recordings" / "c1.cast"
    code, out, err = await cli("export", "c1")
    assert (code, err) == (1, f"shellgate: connection c1 has no recording at {cast}\n")

    cast.parent.mkdir(parents=True)
    body = b'{"version": 2, "width": 80, "height": 24}\n[0.5, "o", "hi\\r\\n"]\n'
    cast.write_bytes(body)
    target = tmp_path / "out.cast"
    code, _, err = await cli("export", "c1", "-o", str(target))
    assert (code, err) == (0, "")
    assert target.read_bytes() == body
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600

    code, out, err = await cli("export", "c1")  # no -o: the cast on stdout
    assert (code, out, err) == (0, body.decode(), "")


async def test_export_uses_the_rows_cast_path(cli: Cli, data_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.cast"
    elsewhere.write_bytes(b"cast\n")
    async with SqliteStore(data_dir / "shellgate.db") as s:
        s.emit(OpenEvent(connection_id="c5", time=at(0), cast_path=str(elsewhere), **who()))
    out = tmp_path / "copy.cast"
    code, _, err = await cli("export", "c5", "-o", str(out))
    assert (code, err) == (0, "")
    assert out.read_bytes() == b"cast\n"


async def test_events_follow(
    cli: Cli, filled: None, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="shellgate")
    add_query_commands(
        parser.add_subparsers(dest="command", required=True),
        lambda _: GatewayConfig.model_validate({"gateway": {"data_dir": data_dir}}),
    )
    args = parser.parse_args(["events", "--follow", "--json", "--limit", "1"])
    capsys.readouterr()
    task = asyncio.ensure_future(args.func(args))
    out = ""
    for _ in range(50):  # the backlog line first: then the follow is live
        await asyncio.sleep(0.05)
        out += capsys.readouterr().out
        if out:
            break
    async with SqliteStore(data_dir / "shellgate.db") as s:
        s.emit(OpenEvent(connection_id="c7", time=at(100), **who("carol")))
    for _ in range(50):
        await asyncio.sleep(0.1)
        out += capsys.readouterr().out
        if '"connection_id": "c7"' in out:  # (a bare "c7" can be in a UUID)
            break
    task.cancel()
    assert await task == 0  # Ctrl-C ends a follow quietly
    lines = [json.loads(line) for line in out.splitlines()]
    # the newest existing event first (--limit 1), then the new one
    assert [(e["type"], e["connection_id"]) for e in lines] == [("closed", "c1"), ("open", "c7")]
