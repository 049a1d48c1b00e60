"""Queries and their filters, model round trips, start-up recovery, locks and follow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_helpers import at, who

from store import QueryFilter, SqliteStore
from store.events import (
    AnyEvent,
    AuditEntry,
    ClosedEvent,
    CloseReason,
    CommandRecord,
    ConnectedEvent,
    ConnectionKind,
    DisconnectedEvent,
    OpenEvent,
    StoreRecord,
    UserLock,
)

EVENTS: list[AnyEvent] = [
    OpenEvent(connection_id="c1", time=at(0), cast_path="/rec/c1.cast", **who()),
    ConnectedEvent(connection_id="c1", time=at(1), **who()),
    OpenEvent(connection_id="c2", time=at(50), **who("bob", "web2")),
    ConnectedEvent(connection_id="c2", time=at(55), **who("bob", "web2")),
    ClosedEvent(
        connection_id="c1",
        time=at(100),
        reason=CloseReason.CLIENT_EXIT,
        closed_by="alice",
        message="exit status 3",
        bytes_in=12,
        bytes_out=3456,
        **who(),
    ),
    OpenEvent(
        connection_id="c3",
        time=at(200),
        kind=ConnectionKind.EXEC,
        name="build-42",
        **who("alice", "web2"),
    ),
    ConnectedEvent(connection_id="c3", time=at(205), **who("alice", "web2")),
    DisconnectedEvent(connection_id="c3", time=at(220), **who("alice", "web2")),
]


def _cmd(t: float, cid: str, user: str, target: str, command: str) -> CommandRecord:
    return CommandRecord(
        time=at(t),
        connection_id=cid,
        user=user,
        target=target,
        target_user="deploy",
        command=command,
    )


COMMANDS = [
    _cmd(10, "c1", "alice", "web1", "ls -la"),
    _cmd(20, "c1", "alice", "web1", "printf '\\033[2J'\necho continued"),
    _cmd(60, "c2", "bob", "web2", "whoami"),
    _cmd(210, "c3", "alice", "web2", "make"),
]
AUDIT = [
    AuditEntry(
        time=at(5),
        actor="mallory",
        action="auth_failed",
        client_addr="203.0.113.9:4",
        detail="publickey SHA256:abc",
    ),
    AuditEntry(
        time=at(70),
        actor="alice",
        action="close",
        detail="maintenance",
        connection_id="c2",
        target="web2",
    ),
    AuditEntry(
        time=at(300), actor="bob", action="policy_denied", target="db1", client_addr="192.0.2.8:1"
    ),
]


@pytest.fixture
async def filled(store: SqliteStore) -> SqliteStore:
    records: list[StoreRecord] = [*EVENTS, *COMMANDS, *AUDIT]
    for r in records:
        store.emit(r)
    await store.flush()
    return store


async def test_round_trip_of_every_record(filled: SqliteStore, db_path: Path) -> None:
    for s in (filled, SqliteStore(db_path, readonly=True)):
        if s is not filled:
            await s.open()
        assert await s.events(QueryFilter()) == EVENTS
        assert await s.commands(QueryFilter()) == COMMANDS
        assert await s.audit(QueryFilter()) == AUDIT
        if s is not filled:
            await s.close()


async def test_connection_rows(filled: SqliteStore) -> None:
    rows = {c.id: c for c in await filled.connections(QueryFilter())}
    assert list(rows) == ["c1", "c2", "c3"]
    c1, c2, c3 = rows["c1"], rows["c2"], rows["c3"]
    assert c1.model_dump() == {
        "id": "c1",
        "user": "alice",
        "target": "web1",
        "target_user": "deploy",
        "client_addr": "192.0.2.7:50522",
        "kind": "shell",
        "name": None,
        "state": "closed",
        "opened_at": at(0),
        "closed_at": at(100),
        "reason": "client_exit",
        "closed_by": "alice",
        "message": "exit status 3",
        "bytes_in": 12,
        "bytes_out": 3456,
        "cast_path": "/rec/c1.cast",
    }
    assert (c2.state, c2.closed_at, c2.reason) == ("connected", None, None)
    assert (c3.state, c3.kind, c3.name) == ("detached", "exec", "build-42")
    assert await filled.connection("c3") == c3
    assert await filled.connection("nope") is None


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (QueryFilter(), [0, 1, 2, 3]),
        (QueryFilter(user="alice"), [0, 1, 3]),
        (QueryFilter(target="web2"), [2, 3]),
        (QueryFilter(connection="c1"), [0, 1]),
        (QueryFilter(since=at(20)), [1, 2, 3]),  # since is inclusive
        (QueryFilter(until=at(60)), [0, 1]),  # until is exclusive
        (QueryFilter(since=at(15), until=at(61)), [1, 2]),
        (QueryFilter(limit=2), [2, 3]),  # the newest two, oldest first
        (QueryFilter(user="alice", limit=1), [3]),
        (QueryFilter(limit=0), []),
        (QueryFilter(user="alice", target="web2"), [3]),
        (QueryFilter(user="nobody"), []),
    ],
)
async def test_command_filters(filled: SqliteStore, f: QueryFilter, expected: list[int]) -> None:
    assert await filled.commands(f) == [COMMANDS[i] for i in expected]


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (QueryFilter(), [0, 1, 2, 3, 4, 5, 6, 7]),
        (QueryFilter(user="bob"), [2, 3]),
        (QueryFilter(target="web2"), [2, 3, 5, 6, 7]),
        (QueryFilter(connection="c3"), [5, 6, 7]),
        (QueryFilter(since=at(55), until=at(205)), [3, 4, 5]),
        (QueryFilter(limit=3), [5, 6, 7]),
        (QueryFilter(connection="c1", limit=1), [4]),
    ],
)
async def test_event_filters(filled: SqliteStore, f: QueryFilter, expected: list[int]) -> None:
    assert await filled.events(f) == [EVENTS[i] for i in expected]


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (QueryFilter(), [0, 1, 2]),
        (QueryFilter(user="alice"), [1]),  # --user matches the actor
        (QueryFilter(target="db1"), [2]),
        (QueryFilter(connection="c2"), [1]),
        (QueryFilter(since=at(6)), [1, 2]),
        (QueryFilter(until=at(70)), [0]),
        (QueryFilter(limit=1), [2]),
    ],
)
async def test_audit_filters(filled: SqliteStore, f: QueryFilter, expected: list[int]) -> None:
    assert await filled.audit(f) == [AUDIT[i] for i in expected]


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (QueryFilter(), ["c1", "c2", "c3"]),
        (QueryFilter(user="alice"), ["c1", "c3"]),
        (QueryFilter(target="web2"), ["c2", "c3"]),
        (QueryFilter(connection="c2"), ["c2"]),
        # a time window matches the connections live at any point in it
        (QueryFilter(since=at(101)), ["c2", "c3"]),
        (QueryFilter(since=at(100)), ["c1", "c2", "c3"]),
        (QueryFilter(until=at(50)), ["c1"]),
        (QueryFilter(since=at(60), until=at(70)), ["c1", "c2"]),
        (QueryFilter(limit=1), ["c3"]),
    ],
)
async def test_connection_filters(filled: SqliteStore, f: QueryFilter, expected: list[str]) -> None:
    assert [c.id for c in await filled.connections(f)] == expected


async def test_recover_crashed_closes_what_was_left_live(filled: SqliteStore) -> None:
    closed = await filled.recover_crashed()
    assert [(e.connection_id, e.time) for e in closed] == [("c2", at(55)), ("c3", at(220))]
    for e in closed:
        assert (e.reason, e.closed_by) == ("gateway_crashed", "system")
        assert e.message == "gateway stopped uncleanly; found at start-up"
    c3 = closed[1]
    assert (c3.user, c3.target, c3.target_user, c3.client_addr) == (
        "alice",
        "web2",
        "deploy",
        "192.0.2.7:50522",
    )
    rows = {c.id: c for c in await filled.connections(QueryFilter())}
    assert {c.state for c in rows.values()} == {"closed"}
    assert (rows["c3"].reason, rows["c3"].closed_at) == ("gateway_crashed", at(220))
    assert rows["c1"].reason == "client_exit"  # untouched
    assert (await filled.events(QueryFilter(connection="c2")))[-1] == closed[0]
    assert await filled.recover_crashed() == []


async def test_recover_crashed_on_an_empty_store(store: SqliteStore) -> None:
    assert await store.recover_crashed() == []


async def test_locks(store: SqliteStore, db_path: Path) -> None:
    assert await store.locks() == []
    first = UserLock(user="bob", time=at(1), actor="alice", reason="left the company")
    await store.lock_user(first)
    await store.lock_user(UserLock(user="carol", time=at(2), actor="alice"))
    again = UserLock(user="bob", time=at(3), actor="dave", reason="still gone")
    await store.lock_user(again)  # locking again replaces, does not duplicate
    assert await store.locks() == [UserLock(user="carol", time=at(2), actor="alice"), again]
    assert await store.unlock_user("carol") is True
    assert await store.unlock_user("carol") is False
    async with SqliteStore(db_path, readonly=True) as ro:  # stored: survives a restart
        assert await ro.locks() == [again]


async def _collect(it: AsyncIterator[AnyEvent], n: int) -> list[AnyEvent]:
    out = []
    async for e in it:
        out.append(e)
        if len(out) == n:
            break
    return out


async def test_follow_from_another_connection(filled: SqliteStore, db_path: Path) -> None:
    # the CLI's situation: its own read-only connection on the daemon's file
    async with SqliteStore(db_path, readonly=True, poll_interval=0.02) as ro:
        new: list[AnyEvent] = [
            ConnectedEvent(connection_id="c3", time=at(400), **who("alice", "web2")),
            ClosedEvent(
                connection_id="c2",
                time=at(401),
                reason=CloseReason.TARGET_LOST,
                closed_by="system",
                **who("bob", "web2"),
            ),
            ClosedEvent(
                connection_id="c3",
                time=at(402),
                reason=CloseReason.USER_CLOSED,
                closed_by="alice",
                **who("alice", "web2"),
            ),
        ]
        it = ro.follow_events(QueryFilter(limit=2))
        # the backlog (the newest two) comes first; after it the follow is live
        backlog = [await anext(it), await anext(it)]
        assert backlog == EVENTS[-2:]
        for e in new:
            filled.emit(e)
            await filled.flush()
        assert await asyncio.wait_for(_collect(it, 3), 5) == new
        await it.aclose()  # type: ignore[attr-defined]

        # limit=0: only what comes next; filters apply to new events too
        task = asyncio.ensure_future(
            _collect(ro.follow_events(QueryFilter(user="bob", limit=0)), 1)
        )
        await asyncio.sleep(0.3)  # let it take its starting point
        alice = OpenEvent(connection_id="c9", time=at(500), **who())
        bob = OpenEvent(connection_id="c8", time=at(501), **who("bob"))
        filled.emit(alice)
        filled.emit(bob)
        assert await asyncio.wait_for(task, 5) == [bob]
