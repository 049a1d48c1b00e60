"""Schema migrations: a fresh file, an upgrade from v1, and a file too new."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest
from store_helpers import at, who

from store import QueryFilter, SqliteStore, StoreError
from store.events import CommandRecord, ConnectedEvent, OpenEvent
from store.migrations import MIGRATIONS, SCHEMA_VERSION
from store.sqlite import migrate


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
