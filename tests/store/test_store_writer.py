"""The batched writer: volume and order, bad records, a locked database,
backpressure, flush and close."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import structlog
from store_helpers import at, who

from store import QueryFilter, SqliteStore, StoreError
from store.events import (
    AnyEvent,
    AuditEntry,
    ClosedEvent,
    CloseReason,
    CommandRecord,
    ConnectedEvent,
    DisconnectedEvent,
    OpenEvent,
    UserLock,
)


@pytest.mark.parametrize("batch_size", [1000, None])  # None: the default, one batch
async def test_ten_thousand_events_in_ten_thousand_rows_out_in_order(
    db_path: Path, batch_size: int | None
) -> None:
    s = SqliteStore(db_path) if batch_size is None else SqliteStore(db_path, batch_size=batch_size)
    await s.open()
    sent: list[AnyEvent] = []
    for i in range(2500):
        cid = f"conn-{i:05d}"
        sent += [
            OpenEvent(connection_id=cid, time=at(4 * i), **who()),
            ConnectedEvent(connection_id=cid, time=at(4 * i + 1), **who()),
            DisconnectedEvent(connection_id=cid, time=at(4 * i + 2), **who()),
            ClosedEvent(
                connection_id=cid,
                time=at(4 * i + 3),
                reason=CloseReason.CLIENT_EXIT,
                closed_by="alice",
                message="exit status 0",
                **who(),
            ),
        ]
    for e in sent:
        s.emit(e)
    await s.close()  # close drains: nothing emitted is lost

    async with SqliteStore(db_path, readonly=True) as ro:
        got = await ro.events(QueryFilter())
        assert len(got) == 10_000
        assert got == sent
        conns = await ro.connections(QueryFilter())
    assert len(conns) == 2500
    assert {c.state for c in conns} == {"closed"}
    with sqlite3.connect(db_path) as db:
        seq_order = [r[0] for r in db.execute("SELECT id FROM events ORDER BY seq")]
    assert seq_order == [e.id for e in sent]


async def test_state_follows_the_last_event_across_batches(db_path: Path) -> None:
    # batch_size=1: every event in its own transaction (the coalescing path
    # within one batch is covered by the 10,000-event test)
    for batch_size in (1, 1000):
        s = SqliteStore(db_path.with_name(f"b{batch_size}.db"), batch_size=batch_size)
        await s.open()
        s.emit(OpenEvent(connection_id="a", time=at(0), **who()))
        await s.flush()
        assert (await s.connection("a")).state == "open"  # type: ignore[union-attr]
        s.emit(ConnectedEvent(connection_id="a", time=at(1), **who()))
        await s.flush()
        assert (await s.connection("a")).state == "connected"  # type: ignore[union-attr]
        s.emit(DisconnectedEvent(connection_id="a", time=at(2), **who()))
        await s.flush()
        assert (await s.connection("a")).state == "detached"  # type: ignore[union-attr]
        s.emit(ConnectedEvent(connection_id="a", time=at(3), **who()))
        s.emit(
            ClosedEvent(
                connection_id="a",
                time=at(4),
                reason=CloseReason.ADMIN_CLOSED,
                closed_by="bob",
                message="closed by admin bob: maint",
                bytes_in=10,
                bytes_out=20,
                **who(),
            )
        )
        # a second close and a late attach must not change the record
        s.emit(
            ClosedEvent(
                connection_id="a", time=at(5), reason=CloseReason.ERROR, closed_by="system", **who()
            )
        )
        s.emit(ConnectedEvent(connection_id="a", time=at(6), **who()))
        await s.flush()
        c = await s.connection("a")
        assert c is not None
        assert (c.state, c.reason, c.closed_by, c.closed_at, c.bytes_in, c.bytes_out) == (
            "closed",
            "admin_closed",
            "bob",
            at(4),
            10,
            20,
        )
        assert c.message == "closed by admin bob: maint"
        await s.close()


async def test_writer_survives_bad_records(store: SqliteStore) -> None:
    good1 = OpenEvent(connection_id="a", time=at(0), **who())
    # an int sqlite cannot hold fails inside executemany, for the whole batch
    too_big = ClosedEvent(
        connection_id="a",
        time=at(1),
        reason=CloseReason.ERROR,
        closed_by="system",
        bytes_in=2**70,
        **who(),
    )
    # something that is not a record at all fails before the database
    not_a_record = {"type": "open"}
    # a model built without validation, with no usable time
    broken = CommandRecord.model_construct(time=None, connection_id="a", user="alice")
    good2 = AuditEntry(time=at(2), actor="alice", action="lock", detail="bob")
    with structlog.testing.capture_logs() as logs:
        for r in (good1, too_big, not_a_record, broken, good2):
            store.emit(r)  # type: ignore[arg-type]
        await store.flush()
    assert await store.events(QueryFilter()) == [good1]
    assert await store.audit(QueryFilter()) == [good2]
    skipped = [e for e in logs if e["event"] == "store skipped a bad record"]
    assert len(skipped) == 3
    assert any("not a store record: dict" in e["error"] for e in skipped)
    # and it keeps going
    store.emit(ConnectedEvent(connection_id="a", time=at(3), **who()))
    await store.flush()
    assert (await store.connection("a")).state == "connected"  # type: ignore[union-attr]


async def test_a_bad_record_in_a_big_batch_is_found_by_halving(store: SqliteStore) -> None:
    def command(i: int, **extra: object) -> CommandRecord:
        return CommandRecord(
            time=at(i), connection_id="c", user="u", target="t", target_user="l",
            command=f"echo {i}", **extra,
        )  # fmt: skip

    sent = [command(i) for i in range(1000)]
    # passes the model, fails in sqlite: an int too big for its INTEGER column
    bad = ClosedEvent(
        connection_id="c", time=at(500), reason=CloseReason.ERROR, closed_by="system",
        bytes_out=2**70, **who(),
    )  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        for r in sent[:700]:
            store.emit(r)
        store.emit(bad)
        for r in sent[700:]:
            store.emit(r)
        await store.flush()
    assert await store.commands(QueryFilter()) == sent  # all the others, in order
    assert await store.events(QueryFilter()) == []
    skipped = [e for e in logs if e["event"] == "store skipped a bad record"]
    assert len(skipped) == 1 and "ClosedEvent" in skipped[0]["record"]
    halvings = [e for e in logs if e["event"] == "store batch failed; writing it in halves"]
    assert len(halvings) <= 11  # log2(1001) rounds, not 1001 transactions


async def test_building_a_big_batch_yields_to_the_event_loop(db_path: Path) -> None:
    # the rows of one big batch are built on the loop; the relay must not
    # wait for all of them
    s = SqliteStore(db_path, batch_size=5000)
    await s.open()
    ticks = 0
    at_execute: list[int] = []
    execute = s._execute

    async def spy(rows: object) -> object:
        at_execute.append(ticks)
        return await execute(rows)  # type: ignore[arg-type]

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    s._execute = spy  # type: ignore[method-assign]
    for i in range(5000):
        s.emit(AuditEntry(time=at(i), actor="alice", action="lock", detail=str(i)))
    t = asyncio.create_task(ticker())
    try:
        await s.flush()
    finally:
        t.cancel()
        await s.close()
    assert len(at_execute) == 1  # one batch, one transaction
    assert at_execute[0] >= 4  # the loop ran between the 5 slices of 1,000 rows


def _command(i: int) -> CommandRecord:
    return CommandRecord(
        time=at(i), connection_id="a", user="alice", target="web1", target_user="deploy",
        command=str(i),
    )  # fmt: skip


async def test_the_next_batch_is_built_while_a_commit_runs(db_path: Path) -> None:
    # batch N's COMMIT is left running in aiosqlite's thread while the loop
    # builds batch N+1; N+1's inserts begin only after N is committed
    s = SqliteStore(db_path, batch_size=1000)
    await s.open()
    steps: list[str] = []
    build, execute, commit = s._build, s._execute, s._commit

    async def spy_build(batch: list) -> object:  # type: ignore[type-arg]
        steps.append("build")
        return await build(batch)

    async def spy_execute(rows: object) -> object:
        steps.append("execute")
        return await execute(rows)  # type: ignore[arg-type]

    async def spy_commit(db: object) -> None:
        steps.append("commit")
        await commit(db)  # type: ignore[arg-type]
        steps.append("committed")

    s._build, s._execute, s._commit = spy_build, spy_execute, spy_commit  # type: ignore[method-assign]
    for i in range(3000):
        s.emit(_command(i))
    await s.flush()
    await s.close()
    # the commit is queued before the next build starts, and the next execute
    # waits for it
    assert steps[:4] == ["build", "execute", "commit", "build"]
    assert [x for x in steps if x in ("execute", "committed")] == ["execute", "committed"] * 3
    async with SqliteStore(db_path, readonly=True) as ro:
        assert [c.command for c in await ro.commands(QueryFilter())] == [
            str(i) for i in range(3000)
        ]


async def test_a_commit_that_fails_is_written_again(db_path: Path) -> None:
    # the overlapped COMMIT fails (disk full, I/O error): the batch is written
    # again the slow way, once, and the batches after it keep their order
    s = SqliteStore(db_path, batch_size=2)
    await s.open()
    commit = s._commit
    failures = 0

    async def flaky(db: object) -> None:
        nonlocal failures
        if failures == 0:
            failures += 1
            try:
                await db.execute("ROLLBACK")  # type: ignore[attr-defined]
            finally:
                s._write_lock.release()
            raise sqlite3.OperationalError("database or disk is full")
        await commit(db)  # type: ignore[arg-type]

    s._commit = flaky  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        for i in range(6):
            s.emit(_command(i))
        await s.flush()
    await s.close()
    assert failures == 1
    retries = [e for e in logs if e["event"] == "store write failed; retrying"]
    assert len(retries) == 1 and "disk is full" in retries[0]["error"]
    async with SqliteStore(db_path, readonly=True) as ro:
        assert [c.command for c in await ro.commands(QueryFilter())] == [str(i) for i in range(6)]


async def test_a_lock_write_waits_for_a_running_commit(store: SqliteStore) -> None:
    # the write lock is held from BEGIN until the overlapped COMMIT is done, so
    # a lock write never lands inside a batch's transaction
    commit = store._commit
    committing = asyncio.Event()

    async def spy(db: object) -> None:
        committing.set()
        await commit(db)  # type: ignore[arg-type]

    store._commit = spy  # type: ignore[method-assign]
    for i in range(2000):
        store.emit(_command(i))
    await committing.wait()
    assert store._write_lock.locked()
    await store.lock_user(UserLock(user="mallory", time=at(0), actor="alice"))
    await store.flush()
    assert [lock.user for lock in await store.locks()] == ["mallory"]
    assert len(await store.commands(QueryFilter())) == 2000


async def test_a_subclass_of_a_record_is_written_as_its_base(store: SqliteStore) -> None:
    # the writer dispatches on the exact class, with isinstance as the fallback
    class TaggedOpen(OpenEvent):
        pass

    class TaggedCommand(CommandRecord):
        pass

    e = TaggedOpen(connection_id="a", time=at(0), **who())
    c = TaggedCommand(
        time=at(1), connection_id="a", user="u", target="t", target_user="l", command="ls"
    )
    store.emit(e)
    store.emit(c)
    await store.flush()
    assert await store.events(QueryFilter()) == [OpenEvent(**e.model_dump())]
    assert await store.commands(QueryFilter()) == [CommandRecord(**c.model_dump())]
    assert (await store.connection("a")).state == "open"  # type: ignore[union-attr]


async def test_writer_retries_while_the_database_is_locked(db_path: Path) -> None:
    s = SqliteStore(db_path, busy_timeout=0.01)
    await s.open()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with structlog.testing.capture_logs() as logs:
            s.emit(OpenEvent(connection_id="a", time=at(0), **who()))
            flushed = asyncio.ensure_future(s.flush())
            await asyncio.sleep(0.3)
            assert not flushed.done()
            other.execute("COMMIT")
            await asyncio.wait_for(flushed, 5)
        retries = [e for e in logs if e["event"] == "store write failed; retrying"]
        assert retries and "locked" in retries[0]["error"]
        assert [e.connection_id for e in await s.events(QueryFilter())] == ["a"]
    finally:
        other.close()
        await s.close()


async def test_admission_waits_for_the_backlog_to_drain(db_path: Path) -> None:
    s = SqliteStore(db_path, queue_size=100, batch_size=10)
    await s.open()
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # hold the writer up so the backlog builds
    try:
        for i in range(300):
            s.emit(
                CommandRecord(
                    time=at(i),
                    connection_id="c",
                    user="u",
                    target="t",
                    target_user="l",
                    command=f"echo {i}",
                )
            )
        assert s.backlog >= 100  # emit never blocked and dropped nothing
        admitted = asyncio.ensure_future(s.admission())
        await asyncio.sleep(0.1)
        assert not admitted.done()
        other.execute("COMMIT")
        await asyncio.wait_for(admitted, 5)
        assert s.backlog < 100
        await s.flush()
        assert len(await s.commands(QueryFilter())) == 300
    finally:
        other.close()
        await s.close()


async def test_admission_is_immediate_below_the_mark(store: SqliteStore) -> None:
    store.emit(
        CommandRecord(
            time=at(0), connection_id="c", user="u", target="t", target_user="l", command="ls"
        )
    )
    await asyncio.wait_for(store.admission(), 0.5)


async def test_emit_after_close_is_refused(db_path: Path) -> None:
    s = SqliteStore(db_path)
    await s.open()
    await s.close()
    with pytest.raises(StoreError):
        s.emit(AuditEntry(actor="a", action="b"))


async def test_readonly_store_refuses_writes(store: SqliteStore, db_path: Path) -> None:
    async with SqliteStore(db_path, readonly=True) as ro:
        with pytest.raises(StoreError):
            ro.emit(AuditEntry(actor="a", action="b"))
        with pytest.raises(StoreError):
            await ro.unlock_user("bob")


@pytest.mark.parametrize("extra", [-1, 0, 1, 150])
async def test_rows_past_a_multi_row_statement(db_path: Path, extra: int) -> None:
    """Rows go in by statements of many rows plus single-row ones for what is
    left over: every count around a statement's size comes back whole, in order."""
    from store.sqlite import _INSERT_AUDIT, _INSERT_COMMAND, _INSERT_CONNECTION, _INSERT_EVENT

    s = SqliteStore(db_path)
    await s.open()
    n_conn = _INSERT_CONNECTION.per + extra
    n_event = _INSERT_EVENT.per + extra
    events: list[AnyEvent] = [
        OpenEvent(connection_id=f"c{i:04d}", time=at(i), name=f"n{i}", **who())
        for i in range(n_conn)
    ]
    events += [
        ConnectedEvent(connection_id=f"c{i % n_conn:04d}", time=at(1000 + i), **who())
        for i in range(n_event)
    ]
    commands = [
        CommandRecord(
            time=at(i),
            connection_id="c0000",
            user="alice",
            target="web1",
            target_user="deploy",
            command=f"echo {i}",
        )
        for i in range(_INSERT_COMMAND.per + extra)
    ]
    audit = [
        AuditEntry(time=at(i), actor="alice", action="lock", detail=str(i))
        for i in range(_INSERT_AUDIT.per + extra)
    ]
    for r in (*events, *commands, *audit):
        s.emit(r)
    await s.close()
    async with SqliteStore(db_path, readonly=True) as ro:
        assert await ro.events(QueryFilter()) == events
        assert await ro.commands(QueryFilter()) == commands
        assert await ro.audit(QueryFilter()) == audit
        conns = await ro.connections(QueryFilter())
    assert [c.id for c in conns] == [f"c{i:04d}" for i in range(n_conn)]
    assert [c.name for c in conns] == [f"n{i}" for i in range(n_conn)]
    connected = {f"c{i % n_conn:04d}" for i in range(n_event)}
    assert {c.id for c in conns if c.state == "connected"} == connected


async def test_a_null_in_a_multi_row_statement_is_found_by_halving(store: SqliteStore) -> None:
    """A NOT NULL column refused part way through a statement of many rows
    (INSERT OR FAIL: the writer rolls the whole batch back and halves it)."""

    def command(i: int) -> CommandRecord:
        return CommandRecord(
            time=at(i), connection_id="c", user="u", target="t", target_user="l",
            command=f"echo {i}",
        )  # fmt: skip

    sent = [command(i) for i in range(1000)]
    bad = CommandRecord.model_construct(
        time=at(400), connection_id="c", user="u", target="t", target_user="l", command=None
    )
    with structlog.testing.capture_logs() as logs:
        for r in (*sent[:400], bad, *sent[400:]):
            store.emit(r)
        await store.flush()
    assert await store.commands(QueryFilter()) == sent
    skipped = [e for e in logs if e["event"] == "store skipped a bad record"]
    assert len(skipped) == 1 and "NOT NULL" in skipped[0]["error"]


@pytest.mark.parametrize(
    "text",
    ["plain", 'quote " and \\ backslash', "tab\tnl\ncr\r\x00\x1f\x7f", "ünïcödé ✓ 😀 \u2028"],
)
async def test_event_bodies_are_the_json_pydantic_writes(store: SqliteStore, text: str) -> None:
    """The writer quotes body strings itself (json.encoder's C quoting): the
    JSON is byte for byte what pydantic_core.to_json makes, and reads back."""
    from pydantic_core import to_json

    sent: list[AnyEvent] = [
        OpenEvent(
            connection_id="a",
            time=at(0),
            name=text,
            cast_path=None,
            **who(target_user=text, client_addr=text),
        ),
        ConnectedEvent(connection_id="a", time=at(1), **who(target_user=text)),
        ClosedEvent(
            connection_id="a",
            time=at(2),
            reason=CloseReason.ADMIN_CLOSED,
            closed_by=text,
            message=text,
            bytes_in=2**62,
            bytes_out=0,
            **who(client_addr=text),
        ),
    ]
    for e in sent:
        store.emit(e)
    await store.flush()
    assert await store.events(QueryFilter()) == sent
    with sqlite3.connect(store.path) as db:
        bodies = [b for (b,) in db.execute("SELECT body FROM events ORDER BY seq")]
    for event, body in zip(sent, bodies, strict=True):
        columns = {"id", "time", "type", "connection_id", "user", "target"}
        fields = event.model_dump(mode="json", exclude=columns)
        assert body == to_json(fields).decode()


# -- group commit ------------------------------------------------------------


def _typed(i: int) -> CommandRecord:
    return CommandRecord(
        time=at(i), connection_id="c", user="u", target="t", target_user="l", command=f"echo {i}"
    )


async def _committed_commands(db_path: Path) -> int:
    async with SqliteStore(db_path, readonly=True) as ro:
        return len(await ro.commands(QueryFilter()))


async def _wait_committed(db_path: Path, n: int) -> None:
    """Until ``n`` commands are readable, for up to 5 s, nobody flushing."""
    for _ in range(100):
        if await _committed_commands(db_path) == n:
            return
        await asyncio.sleep(0.05)
    assert await _committed_commands(db_path) == n


async def test_records_a_typist_sends_share_transactions(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Benchmark #5's typists: a command every few ms. Written as they came,
    # each was a transaction of its own (three round trips to the database
    # thread); with the linger they share a few.
    s = SqliteStore(db_path, linger=0.2)
    await s.open()
    transactions = 0
    execute = s._execute

    async def counting(rows: object) -> asyncio.Task[None]:
        nonlocal transactions
        transactions += 1
        return await execute(rows)  # type: ignore[arg-type]

    monkeypatch.setattr(s, "_execute", counting)
    try:
        for i in range(40):
            s.emit(_typed(i))
            await asyncio.sleep(0.005)
        await s.flush()
        assert await _committed_commands(db_path) == 40
        # 40 records over >= 0.2 s: two or three lingers, not forty
        assert 1 <= transactions <= 4, transactions
    finally:
        await s.close()


async def test_a_lingering_record_is_committed_within_the_linger(db_path: Path) -> None:
    s = SqliteStore(db_path, linger=0.3)
    await s.open()
    try:
        s.emit(_typed(0))
        await asyncio.sleep(0.05)
        assert await _committed_commands(db_path) == 0  # still waiting for company
        await _wait_committed(db_path, 1)  # the linger ends by itself
    finally:
        await s.close()


async def test_flush_admission_and_close_do_not_wait_out_the_linger(db_path: Path) -> None:
    s = SqliteStore(db_path, linger=60)
    await s.open()
    s.emit(_typed(0))
    await asyncio.sleep(0.05)  # the writer is lingering now
    await asyncio.wait_for(s.flush(), 5)
    assert await _committed_commands(db_path) == 1
    s.emit(_typed(1))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(s.close(), 5)  # close drains at once
    assert await _committed_commands(db_path) == 2

    s = SqliteStore(db_path, linger=60, queue_size=5, batch_size=1000)
    await s.open()
    try:
        for i in range(2, 7):
            s.emit(_typed(i))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(s.admission(), 5)  # a backlog at the mark: written now
        assert s.backlog < 5
    finally:
        await s.close()


async def test_a_whole_batch_does_not_linger(db_path: Path) -> None:
    s = SqliteStore(db_path, linger=60, batch_size=10)
    await s.open()
    try:
        for i in range(10):
            s.emit(_typed(i))
        await _wait_committed(db_path, 10)  # long before the 60 s linger
    finally:
        await s.close()


@pytest.mark.parametrize("kind", ["open", "closed"])
async def test_a_connection_event_ends_the_linger(db_path: Path, kind: str) -> None:
    # A connection's row must not wait: killed meanwhile, the daemon would
    # leave a cast without its row, or report a clean close as a crash.
    s = SqliteStore(db_path, linger=60)
    await s.open()
    try:
        s.emit(_typed(0))
        await asyncio.sleep(0.05)  # lingering for company
        if kind == "open":
            s.emit(OpenEvent(connection_id="a", time=at(1), **who()))
        else:
            s.emit(
                ClosedEvent(
                    connection_id="a",
                    time=at(1),
                    reason=CloseReason.CLIENT_EXIT,
                    closed_by="alice",
                    message="exit status 0",
                    **who(),
                )
            )
        await _wait_committed(db_path, 1)  # the command went with it
        async with SqliteStore(db_path, readonly=True) as ro:
            assert [e.connection_id for e in await ro.events(QueryFilter())] == ["a"]
        s.emit(_typed(2))  # the next command lingers again
        await asyncio.sleep(0.2)
        assert await _committed_commands(db_path) == 1
    finally:
        await s.close()
