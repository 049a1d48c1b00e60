"""Schema migrations: a fresh file, an upgrade from v1 (and its event rows,
written with the full body of steps 1-2), and a file too new."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import aiosqlite
import pytest
from store_helpers import at, who

from store import QueryFilter, SqliteStore, StoreError
from store.events import (
    AnyEvent,
    ClosedEvent,
    CloseReason,
    CommandRecord,
    ConnectedEvent,
    ConnectionKind,
    DisconnectedEvent,
    OpenEvent,
)
from store.migrations import MIGRATIONS, SCHEMA_VERSION
from store.sqlite import _EVENT_BODY_FIELDS, migrate


def _version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT version FROM schema_version").fetchone()[0])


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def test_there_is_a_real_upgrade_step() -> None:
    assert SCHEMA_VERSION >= 2
    assert [v for v, _ in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


async def test_fresh_store_gets_every_step_and_wal(db_path: Path) -> None:
    s = SqliteStore(db_path)
    await s.open()
    await s.close()
    assert _version(db_path) == SCHEMA_VERSION
    assert "commands_user" in _indexes(db_path)
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "connections", "commands", "audit", "locks", "schema_version"} <= tables


async def test_reopening_is_a_no_op(db_path: Path) -> None:
    for _ in range(2):
        s = SqliteStore(db_path)
        await s.open()
        await s.close()
    assert _version(db_path) == SCHEMA_VERSION
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1


async def test_upgrade_from_v1_keeps_data_and_adds_indexes(db_path: Path) -> None:
    # A v1 database as the first release left it, with a row in it.
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        assert await migrate(db, db_path, target=1) == 1
        await db.execute(
            "INSERT INTO commands (time, connection_id, user_name, target, target_user, command)"
            " VALUES ('2025-03-01T12:00:00.000000Z', 'c1', 'alice', 'web1', 'deploy', 'ls')"
        )
    assert _version(db_path) == 1
    assert "commands_user" not in _indexes(db_path)

    # the CLI of this release reads a v1 store without upgrading it
    async with SqliteStore(db_path, readonly=True) as ro:
        assert [c.command for c in await ro.commands(QueryFilter())] == ["ls"]
    assert _version(db_path) == 1

    s = SqliteStore(db_path)
    await s.open()
    try:
        assert [c.command for c in await s.commands(QueryFilter(user="alice"))] == ["ls"]
        s.emit(OpenEvent(connection_id="c2", time=at(1), **who()))
        s.emit(ConnectedEvent(connection_id="c2", time=at(2), **who()))
        s.emit(
            CommandRecord(
                time=at(3),
                connection_id="c2",
                user="alice",
                target="web1",
                target_user="deploy",
                command="uptime",
            )
        )
        await s.flush()
        assert [e.type for e in await s.events(QueryFilter())] == ["open", "connected"]
        assert [c.command for c in await s.commands(QueryFilter())] == ["ls", "uptime"]
    finally:
        await s.close()
    assert _version(db_path) == SCHEMA_VERSION
    assert "commands_user" in _indexes(db_path)


# Event rows as the writer of steps 1 and 2 left them: every field in the body,
# as pydantic_core.to_json wrote it (a whole-second time without a fraction).
_OLD_ROWS = [
    (
        "0a5c7a49-5a3e-4bde-9a53-7a4f1c6e0001", "2025-03-01T12:00:00.000000Z", "open", "c1",
        "alice", "web1",
        '{"id":"0a5c7a49-5a3e-4bde-9a53-7a4f1c6e0001","time":"2025-03-01T12:00:00Z",'
        '"connection_id":"c1","user":"alice","target":"web1","target_user":"deploy",'
        '"client_addr":"192.0.2.7:50522","type":"open","kind":"exec","name":"build-42",'
        '"cast_path":"/rec/c1.cast"}',
    ),
    (
        "0a5c7a49-5a3e-4bde-9a53-7a4f1c6e0002", "2025-03-01T12:00:01.250000Z", "closed", "c1",
        "alice", "web1",
        '{"id":"0a5c7a49-5a3e-4bde-9a53-7a4f1c6e0002","time":"2025-03-01T12:00:01.250000Z",'
        '"connection_id":"c1","user":"alice","target":"web1","target_user":"deploy",'
        '"client_addr":"192.0.2.7:50522","type":"closed","reason":"client_exit",'
        '"closed_by":"alice","message":"exit status 0","bytes_in":5,"bytes_out":70}',
    ),
]  # fmt: skip
_OLD_EVENTS: list[AnyEvent] = [
    OpenEvent(
        id="0a5c7a49-5a3e-4bde-9a53-7a4f1c6e0001", connection_id="c1", time=at(0),
        kind=ConnectionKind.EXEC, name="build-42", cast_path="/rec/c1.cast", **who(),
    ),
    ClosedEvent(
        id="0a5c7a49-5a3e-4bde-9a53-7a4f1c6e0002", connection_id="c1", time=at(1.25),
        reason=CloseReason.CLIENT_EXIT, closed_by="alice", message="exit status 0",
        bytes_in=5, bytes_out=70, **who(),
    ),
]  # fmt: skip


def _raw_bodies(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as db:
        return [json.loads(b) for (b,) in db.execute("SELECT body FROM events ORDER BY seq")]


@pytest.mark.parametrize("old_version", [1, 2])
async def test_event_rows_of_older_steps_read_the_same_after_the_upgrade(
    db_path: Path, old_version: int
) -> None:
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        assert await migrate(db, db_path, target=old_version) == old_version
        await db.executemany(
            "INSERT INTO events (id, time, type, connection_id, user_name, target, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            _OLD_ROWS,
        )
    # this release's CLI reads the old store as it is
    async with SqliteStore(db_path, readonly=True) as ro:
        assert await ro.events(QueryFilter()) == _OLD_EVENTS
    assert _version(db_path) == old_version

    s = SqliteStore(db_path)
    await s.open()
    try:
        assert _version(db_path) == SCHEMA_VERSION
        new: list[AnyEvent] = [
            OpenEvent(connection_id="c2", time=at(2), **who("bob", "web2")),
            ConnectedEvent(connection_id="c2", time=at(3), **who("bob", "web2")),
        ]
        for e in new:
            s.emit(e)
        await s.flush()
        assert await s.events(QueryFilter()) == [*_OLD_EVENTS, *new]
        assert await s.events(QueryFilter(connection="c1")) == _OLD_EVENTS
        assert await s.events(QueryFilter(user="bob")) == new
    finally:
        await s.close()
    # the old rows keep their full body; the new ones hold only what has no column
    bodies = _raw_bodies(db_path)
    assert [b.get("id") for b in bodies[:2]] == [e.id for e in _OLD_EVENTS]
    assert bodies[2:] == [
        {"target_user": "deploy", "client_addr": "192.0.2.7:50522", "kind": "shell",
         "name": None, "cast_path": None},
        {"target_user": "deploy", "client_addr": "192.0.2.7:50522"},
    ]  # fmt: skip


async def test_event_body_holds_exactly_the_fields_without_a_column(db_path: Path) -> None:
    # the writer builds each body by hand (it is cheaper); a field added to an
    # event model must reach the body, or reading would lose it
    events: list[AnyEvent] = [
        OpenEvent(connection_id="c", time=at(0), kind=ConnectionKind.EXEC, name="n",
                  cast_path="/rec/c.cast", **who()),
        ConnectedEvent(connection_id="c", time=at(1), **who()),
        DisconnectedEvent(connection_id="c", time=at(2), **who()),
        ClosedEvent(connection_id="c", time=at(3), reason=CloseReason.ADMIN_CLOSED,
                    closed_by="bob", message="m", bytes_in=1, bytes_out=2, **who()),
    ]  # fmt: skip
    async with SqliteStore(db_path) as s:
        for e in events:
            s.emit(e)
        await s.flush()
        assert await s.events(QueryFilter()) == events
    columns = {"id", "time", "type", "connection_id", "user", "target"}
    for e, body in zip(events, _raw_bodies(db_path), strict=True):
        assert set(body) == set(type(e).model_fields) - columns == _EVENT_BODY_FIELDS[type(e)]


async def test_too_new_refuses_to_open(db_path: Path) -> None:
    s = SqliteStore(db_path)
    await s.open()
    await s.close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 5,))
    for readonly in (False, True):
        with pytest.raises(StoreError) as e:
            await SqliteStore(db_path, readonly=readonly).open()
        assert str(e.value) == (
            f"store {db_path} has schema version {SCHEMA_VERSION + 5}, newer than this "
            f"shellgate ({SCHEMA_VERSION}); upgrade shellgate"
        )


async def test_readonly_open_of_a_missing_store(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "shellgate.db"
    with pytest.raises(StoreError) as e:
        await SqliteStore(path, readonly=True).open()
    assert str(e.value) == f"no store at {path} (has the gateway run?)"
    assert not path.exists()


async def test_not_a_database_is_a_store_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"shellgate\.db"):
        await SqliteStore(db_path).open()
