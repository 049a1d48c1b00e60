"""The sqlite backend of ``EventStore``: connection, migrations at open, the
batched writer, start-up recovery, queries and locks.

Writing. ``emit`` appends to an in-memory backlog (a ``collections.deque``) and
wakes the one writer task; it never awaits, never blocks and never drops. The
backlog is deliberately unbounded: a bounded ``asyncio.Queue`` would force a
choice between blocking the relay and dropping events, and the contract allows
neither. The bound is applied where it is safe to wait instead: ``admission``
(awaited by the gateway before it accepts a new connection) waits while the
backlog is at or above ``queue_size``, so a slow disk slows down new work, not
live sessions; what is held unwritten is then about ``queue_size`` records
waiting plus the ``batch_size`` being written. (A Queue plus an overflow deque
behaves the same; one deque is simpler and lets the writer take a whole batch
in one go.)

Group commit. Before it takes a batch the writer waits up to ``linger``
seconds (``COMMIT_LINGER``) for more records to share the transaction, unless a
``flush``, an ``admission`` wait or ``close`` is waiting on it, a connection
event is pending (``_PROMPT_TYPES``), or a whole batch is (so under a backlog
it never waits). Benchmark #5's typists emit ~230 commands a second: written
as they came, each was its own transaction, and each transaction is three
round trips to aiosqlite's thread (BEGIN, INSERT, COMMIT), each a thread
wake-up, a loop wake-up and two GIL hand-overs: ~11% of a core and ~2,300
context switches a second at ~200 commands a second, against ~2% and ~120
with a 0.1 s linger (``tests/store/bench_store.py --rate 230``, the loop's
own cost subtracted).
What is committed is unchanged; what is emitted and not yet committed when
the process is killed was lost before too, only the window is longer.

The writer takes up to ``batch_size`` records per transaction and writes them
with multi-row ``INSERT ... VALUES (...), (...)`` statements fed from one flat
list of values per table (connection rows coalesced within the batch, see
``_Rows`` and ``_Insert``). Big transactions are what make a backlog cheap to
write: the indexes keyed by user or target take each batch's rows on ~100
scattered leaf pages, and every page a transaction dirties is written whole to
the WAL at commit, so the cost of those pages is shared by the whole batch.
The rows are built on the event loop ``_BUILD_SLICE`` records at a time with a
yield in between, so a big batch does not hold up the relay; under a backlog
they are built while the previous batch's COMMIT runs in aiosqlite's thread
(batches still commit one at a time, in emit order). A record that
cannot be written (not a store record, a value sqlite refuses) is logged and
skipped; the rest of its batch is written (a batch sqlite refuses is halved
until the bad record is alone). ``sqlite3.OperationalError`` (database
locked, disk full, I/O error) is treated as transient: the batch is retried
with backoff until it succeeds (so ``close`` waits on a database that stays
broken: never drop).

Reading. Queries use a second connection, so they never see a half-written
batch, and work from another process while the daemon writes (WAL). The CLI
opens the store with ``readonly=True``: no migration, no writer task, and the
file is opened ``mode=ro``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring as _q
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite
import structlog
from pydantic import TypeAdapter
from pydantic_core import from_json

from store.base import EventStore, QueryFilter, StoreError
from store.events import (
    SYSTEM,
    AnyEvent,
    AuditEntry,
    ClosedEvent,
    CloseReason,
    CommandRecord,
    ConnectedEvent,
    Connection,
    ConnectionEvent,
    ConnectionKind,
    ConnectionState,
    DisconnectedEvent,
    OpenEvent,
    StoreRecord,
    UserLock,
    format_time,
)
from store.migrations import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

log = structlog.get_logger(__name__)

DB_NAME = "shellgate.db"

_EVENT = TypeAdapter[AnyEvent](ConnectionEvent)
_EVENT_TYPES = (OpenEvent, ConnectedEvent, DisconnectedEvent, ClosedEvent)
_RECORD_TYPES = (*_EVENT_TYPES, CommandRecord, AuditEntry)
_PROMPT_TYPES = frozenset(_EVENT_TYPES)
"""Records that end the writer's linger: a connection's lifecycle. Left
waiting, a kill -9 could lose a just-opened connection's row (its cast then
on disk without it, so never repaired) or a clean close (then reported as
gateway_crashed). They come once per connection, not per command."""

COMMIT_LINGER = 0.1
"""Seconds the writer waits for more records to share a transaction (see the
module docstring: group commit); what an operator's query may lag behind."""

_BUILD_SLICE = 1000
"""Records turned into rows between two yields to the event loop (~10 ms)."""

CRASHED_MESSAGE = "gateway stopped uncleanly; found at start-up"


_TWO_DIGITS = [f"{i:02d}" for i in range(100)]
_THREE_DIGITS = [f"{i:03d}" for i in range(1000)]
_MINUTES: dict[bytes, str] = {}
"""``YYYY-MM-DDTHH:MM:`` by the first 6 bytes of a datetime's pickled state."""
_MINUTES_KEPT = 1024


def _minute_text(t: datetime) -> str:
    """The first 17 characters of ``format_time(t)`` for a UTC ``t``. Years
    below 1000 are zero-padded, as isoformat does (strftime does not)."""
    y = t.year
    d = _TWO_DIGITS
    return f"{y if y >= 1000 else f'{y:04d}'}-{d[t.month]}-{d[t.day]}T{d[t.hour]}:{d[t.minute]}:"


def _text_time(t: datetime) -> str:
    """``format_time``, ~5x as fast (the writer calls it per record): ~3,000
    instructions against ~6,600 for an f-string of seven attribute reads and
    table lookups (itself 3x as fast as strftime, 2x isoformat).

    The fields come from the datetime's pickled state, one C call: bytes of
    year (2), month (+128 when fold=1), day, hour, minute, second and
    microsecond (3), a layout pickles of every CPython version depend on. Up to
    the minute, the text is cached by those bytes (a writer sees few minutes);
    the seconds and microseconds come from tables."""
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    reduced: Any = t.__reduce__()
    state: bytes = reduced[1][0]
    minute = _MINUTES.get(state[:6])
    if minute is None:
        if len(_MINUTES) >= _MINUTES_KEPT:
            _MINUTES.clear()
        minute = _MINUTES[state[:6]] = _minute_text(t)
    us = state[7] << 16 | state[8] << 8 | state[9]
    d = _THREE_DIGITS
    return f"{minute}{_TWO_DIGITS[state[6]]}.{d[us // 1000]}{d[us % 1000]}Z"


def store_path(data_dir: Path) -> Path:
    """Where the store of a gateway with this ``data_dir`` lives."""
    return Path(data_dir) / DB_NAME


# -- schema ------------------------------------------------------------------


async def _schema_version(db: aiosqlite.Connection) -> int | None:
    """The version recorded in the database; None if it has no version table."""
    async with db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ) as cur:
        if await cur.fetchone() is None:
            return None
    async with db.execute("SELECT version FROM schema_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def _too_new(path: Path, version: int) -> StoreError:
    return StoreError(
        f"store {path} has schema version {version}, newer than this shellgate "
        f"({SCHEMA_VERSION}); upgrade shellgate"
    )


async def migrate(db: aiosqlite.Connection, path: Path, target: int = SCHEMA_VERSION) -> int:
    """Apply the migration steps the database lacks, up to ``target``; returns its
    version. Each step is one transaction, and re-reads the version inside it, so
    two gateways starting on one file do not both apply a step."""
    await db.execute(VERSION_TABLE)
    current = await _schema_version(db) or 0
    if current > SCHEMA_VERSION:
        raise _too_new(path, current)
    for version, statements in MIGRATIONS:
        if version > target:
            break
        await db.execute("BEGIN IMMEDIATE")
        try:
            current = await _schema_version(db) or 0
            if current < version:
                for statement in statements:
                    await db.execute(statement)
                if current == 0:
                    await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                else:
                    await db.execute("UPDATE schema_version SET version = ?", (version,))
                log.info("store migrated", path=str(path), version=version)
                current = version
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
    return current


# -- the writer's rows -------------------------------------------------------

_MAX_PARAMETERS = 999
"""Parameters per statement: the lowest SQLITE_MAX_VARIABLE_NUMBER a build may
have (the default was 999 before sqlite 3.32)."""


class _Insert:
    """An INSERT of one row (``one``) and of as many rows as fit in
    ``_MAX_PARAMETERS`` (``many``), fed from a flat list of values, ``width``
    per row.

    A multi-row ``VALUES`` statement is what makes the insert cheap: executemany
    of one-row statements cost ~9,000 instructions per event row in the sqlite3
    module and sqlite's per-statement work (bind, step, reset, and the GIL
    dropped and taken again around every step), about a quarter of the writer.
    The flat list also spares a tuple per row.

    The statements say ``INSERT OR FAIL``: a plain INSERT of many rows may
    abort on a NOT NULL column part way, so sqlite keeps a statement journal
    for it (the first change of every page in each statement copied to a temp
    file: 4x the writes, the system time per event 2.5 -> 6 us). OR FAIL needs
    none, and the writer rolls the whole transaction back on any error anyway
    (then writes the batch in halves), so nothing half-written is committed."""

    def __init__(self, head: str, width: int, tail: str = "") -> None:
        row = "(" + ", ".join("?" * width) + ")"
        self.width = width
        self.per = max(1, _MAX_PARAMETERS // width)
        self.one = f"{head} VALUES {row}{tail}"
        self.many = f"{head} VALUES {', '.join([row] * self.per)}{tail}"

    def split(self, flat: list[Any]) -> tuple[list[list[Any]], list[list[Any]]]:
        """``flat`` as parameters of ``many`` (full statements) and of ``one``
        (the rows left over)."""
        step = self.per * self.width
        full = len(flat) // step * step
        return (
            [flat[i : i + step] for i in range(0, full, step)],
            [flat[i : i + self.width] for i in range(full, len(flat), self.width)],
        )

    async def run(self, db: aiosqlite.Connection, flat: list[Any]) -> None:
        full, rest = self.split(flat)
        if full:
            await db.executemany(self.many, full)
        if rest:
            await db.executemany(self.one, rest)


_INSERT_EVENT = _Insert(
    "INSERT OR FAIL INTO events (id, time, type, connection_id, user_name, target, body)", 7
)
_INSERT_CONNECTION = _Insert(
    "INSERT OR FAIL INTO connections (id, user_name, target, target_user, client_addr, kind, name,"
    " state, opened_at, closed_at, reason, closed_by, message, bytes_in, bytes_out, cast_path)",
    16,
    " ON CONFLICT (id) DO NOTHING",
)
_STATE, _CLOSE_FROM, _CLOSE_TO = 7, 9, 15  # positions in an _INSERT_CONNECTION row
# the state column's values, as plain str (an enum's .value is a property call)
_OPEN = ConnectionState.OPEN.value
_CLOSED = ConnectionState.CLOSED.value
_CONNECTED = ConnectionState.CONNECTED.value
_DETACHED = ConnectionState.DETACHED.value
# an enum member's text: the member's .value is a property (~1,800 instructions)
# and CloseReason(x) a call (~5,000); a dict lookup ~250
_REASON_TEXT = {r: r.value for r in CloseReason}
_KIND_TEXT = {k: k.value for k in ConnectionKind}
# closed is final: a late connected/disconnected must not reopen a closed row,
# and only the first closed event fills in the close columns.
_UPDATE_STATE = "UPDATE connections SET state = ? WHERE id = ? AND state <> 'closed'"
_UPDATE_CLOSED = (
    "UPDATE connections SET state = 'closed', closed_at = ?, reason = ?, closed_by = ?,"
    " message = ?, bytes_in = ?, bytes_out = ? WHERE id = ? AND state <> 'closed'"
)
_INSERT_COMMAND = _Insert(
    "INSERT OR FAIL INTO commands (time, connection_id, user_name, target, target_user, command)", 6
)
_INSERT_AUDIT = _Insert(
    "INSERT OR FAIL INTO audit (time, actor, action, client_addr, detail, connection_id, target)", 7
)


@dataclass
class _Rows:
    """One batch, split by statement, each in emit order.

    Connection rows are coalesced within the batch: a connection opened in this
    batch is inserted once in its final state, and for older ones only the last
    state change (and the first close) is written. Short connections (exec
    channels from automation) then cost one row write instead of three or four.
    Closed is final, so applying the coalesced updates in any order is right.
    """

    events: list[Any] = field(default_factory=list)
    """Flat: an _INSERT_EVENT row's values, event after event (likewise
    ``commands`` and ``audit``)."""
    connections: list[Any] = field(default_factory=list)
    """Flat, as ``events``: the rows of the connections opened in this batch."""
    opened: dict[str, int] = field(default_factory=dict)
    """Where each of those rows begins in ``connections`` (an int, not a list
    per row: nothing the garbage collector tracks outlives ``add``)."""
    moved: dict[str, str] = field(default_factory=dict)
    closed: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    commands: list[Any] = field(default_factory=list)
    audit: list[Any] = field(default_factory=list)
    bodies: dict[tuple[str, str], str] = field(default_factory=dict)
    records: list[StoreRecord] = field(default_factory=list)
    """The records these rows were built from (to write a batch in halves)."""

    def add(self, record: object) -> None:
        """Add one record's rows, or raise (and add nothing) if it is not writable."""
        # Dispatch on the exact class: isinstance on a pydantic model class costs
        # ~170 ns, and the event path asked it ~6 times per record.
        kind = type(record)
        if kind not in _RECORD_TYPES:  # a subclass, or not a store record at all
            kind = next((k for k in _RECORD_TYPES if isinstance(record, k)), kind)
            if kind not in _RECORD_TYPES:
                raise TypeError(f"not a store record: {type(record).__name__}")
        # The fields are read from the instance dict (where pydantic keeps them):
        # BaseModel defines __getattr__, so CPython 3.11 does not specialize an
        # attribute lookup on a model, and each costs ~350 instructions against
        # ~50 for a dict item; an event read ~10 of them.
        r: dict[str, Any] = record.__dict__
        if kind is CommandRecord:
            self.commands.extend((
                _text_time(r["time"]), r["connection_id"], r["user"], r["target"],
                r["target_user"], r["command"],
            ))  # fmt: skip
            return
        if kind is AuditEntry:
            self.audit.extend((
                _text_time(r["time"]), r["actor"], r["action"], r["client_addr"], r["detail"],
                r["connection_id"], r["target"],
            ))  # fmt: skip
            return
        t = _text_time(r["time"])
        cid = r["connection_id"]
        # The body: the fields that have no column of their own, as JSON (see
        # _event and migration step 3), written with an f-string of
        # json.encoder's C string quoting: ~250 ns against ~600-1,200 for
        # pydantic_core.to_json of a dict (same JSON: non-ASCII kept, control
        # characters escaped). Everything that can raise comes before any change.
        if kind is OpenEvent:
            opened_kind = _KIND_TEXT.get(r["kind"]) or ConnectionKind(r["kind"]).value
            name, cast = r["name"], r["cast_path"]
            body = (
                f'{{"target_user":{_q(r["target_user"])},"client_addr":{_q(r["client_addr"])},'
                f'"kind":{_q(opened_kind)},"name":{"null" if name is None else _q(name)},'
                f'"cast_path":{"null" if cast is None else _q(cast)}}}'
            )
        elif kind is ClosedEvent:
            closing = (
                t, _REASON_TEXT.get(r["reason"]) or CloseReason(r["reason"]).value,
                r["closed_by"], r["message"], int(r["bytes_in"]), int(r["bytes_out"]),
            )  # fmt: skip
            body = (
                f'{{"target_user":{_q(r["target_user"])},"client_addr":{_q(r["client_addr"])},'
                f'"reason":{_q(closing[1])},"closed_by":{_q(closing[2])},'
                f'"message":{_q(closing[3])},"bytes_in":{closing[4]},"bytes_out":{closing[5]}}}'
            )
        else:
            # connected/disconnected: the same two fields for every event of a
            # client, so the batch builds each body once
            who = (r["target_user"], r["client_addr"])
            body = self.bodies.get(who)  # type: ignore[assignment]
            if body is None:
                body = self.bodies[who] = (
                    f'{{"target_user":{_q(who[0])},"client_addr":{_q(who[1])}}}'
                )
        at = self.opened.get(cid)
        self.events.extend((r["id"], t, r["type"], cid, r["user"], r["target"], body))
        conn = self.connections
        if kind is OpenEvent:
            if at is None:
                self.opened[cid] = len(conn)
                conn.extend((
                    cid, r["user"], r["target"], r["target_user"], r["client_addr"], opened_kind,
                    r["name"], _OPEN, t, None, None, None, None, 0, 0, r["cast_path"],
                ))  # fmt: skip
        elif kind is ClosedEvent:
            if at is not None:
                if conn[at + _STATE] != _CLOSED:
                    conn[at + _STATE] = _CLOSED
                    conn[at + _CLOSE_FROM : at + _CLOSE_TO] = closing
            elif cid not in self.closed:
                self.closed[cid] = (*closing, cid)
                self.moved.pop(cid, None)
        else:
            state = _CONNECTED if kind is ConnectedEvent else _DETACHED
            if at is not None:
                if conn[at + _STATE] != _CLOSED:
                    conn[at + _STATE] = state
            elif cid not in self.closed:
                self.moved[cid] = state


@dataclass
class _InFlight:
    """A batch whose COMMIT is under way."""

    rows: _Rows
    n: int  # records taken from the backlog (bad ones included)
    commit: asyncio.Task[None]


def _describe(record: object) -> str:
    text = repr(record)
    return text if len(text) <= 300 else text[:300] + "..."


# -- queries -----------------------------------------------------------------

_CONNECTION_COLUMNS = (
    "id, user_name, target, target_user, client_addr, kind, name, state, opened_at,"
    " closed_at, reason, closed_by, message, bytes_in, bytes_out, cast_path"
)
_CONNECTION_FIELDS = [c.strip() for c in _CONNECTION_COLUMNS.split(",")]
_CONNECTION_FIELDS[1] = "user"


_EVENT_COLUMNS = "id, time, type, connection_id, user_name, target, body"
_EVENT_BODY_FIELDS: dict[type[AnyEvent], frozenset[str]] = {
    t: frozenset(t.model_fields) - {"id", "time", "type", "connection_id", "user", "target"}
    for t in _EVENT_TYPES
}
"""What ``_Rows.add`` puts in an event's body, per type (a test holds it to this)."""


def _event(row: Sequence[Any]) -> AnyEvent:
    """An event from its ``_EVENT_COLUMNS``: the body's fields with the columns
    put over them. Since schema 3 the body holds only the fields that have no
    column; a body written before holds every field, and its columns agree."""
    eid, time, type_, cid, user, target, body = row
    fields = from_json(body)
    # a datetime, not the text: pydantic parses text slower in python mode
    when = datetime.fromisoformat(time)
    fields.update(id=eid, time=when, type=type_, connection_id=cid, user=user, target=target)
    return _EVENT.validate_python(fields)


def _connection(row: Sequence[Any]) -> Connection:
    return Connection.model_validate(dict(zip(_CONNECTION_FIELDS, row, strict=True)))


def _conditions(
    f: QueryFilter, *, user: str, target: str | None, connection: str, time: str | None
) -> tuple[list[str], list[Any]]:
    """WHERE terms for a filter; ``since`` is inclusive, ``until`` exclusive."""
    terms: list[str] = []
    params: list[Any] = []
    if f.user is not None:
        terms.append(f"{user} = ?")
        params.append(f.user)
    if f.target is not None and target is not None:
        terms.append(f"{target} = ?")
        params.append(f.target)
    if f.connection is not None:
        terms.append(f"{connection} = ?")
        params.append(f.connection)
    if time is not None:
        if f.since is not None:
            terms.append(f"{time} >= ?")
            params.append(format_time(f.since))
        if f.until is not None:
            terms.append(f"{time} < ?")
            params.append(format_time(f.until))
    return terms, params


def _where(terms: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(terms) if terms else ""


class SqliteStore(EventStore):
    """``EventStore`` on one sqlite file (WAL, ``synchronous=NORMAL``).

    The gateway: ``store = SqliteStore(path); await store.open();
    await store.recover_crashed()``, then ``await store.admission()`` before each
    new connection and ``store.emit(record)`` from anywhere on the event loop
    (``emit`` is not thread-safe); ``await store.close()`` at shutdown.
    The CLI: ``async with SqliteStore(path, readonly=True) as store: ...``.
    """

    def __init__(
        self,
        path: Path,
        *,
        queue_size: int = 10000,
        batch_size: int = 10000,
        readonly: bool = False,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.25,
        linger: float = COMMIT_LINGER,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._high_water = max(1, queue_size)
        self._batch_size = max(1, batch_size)
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._poll_interval = poll_interval
        self._db: aiosqlite.Connection | None = None  # the writer's
        self._reader: aiosqlite.Connection | None = None
        self._pending: deque[StoreRecord] = deque()
        self._emitted = 0
        self._committed = 0
        self._wakeup = asyncio.Event()
        self._linger = linger
        self._hurry = asyncio.Event()  # ends a linger early
        self._waiting = 0  # flush() and admission() calls waiting on the writer
        self._prompt = False  # a _PROMPT_TYPES record is pending
        self._progress = asyncio.Condition()
        # the writer's batches and the awaited lock writes share one connection:
        # this keeps a lock write from committing half of a batch
        self._write_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------

    async def _connect(self) -> aiosqlite.Connection:
        if self.readonly:
            db = await aiosqlite.connect(
                self.path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None
            )
        else:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch
            # is exactly one transaction and reads are never held open.
            db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            if not self.readonly:
                await db.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL: a power cut may lose the last commits, never corrupt
                await db.execute("PRAGMA synchronous = NORMAL")
                # checkpoint every ~16 MB of WAL rather than 4 MB: hot index pages
                # are copied back once per checkpoint, not once per 4 MB
                await db.execute("PRAGMA wal_autocheckpoint = 4000")
        except BaseException:
            await db.close()
            raise
        return db

    async def open(self) -> None:
        try:
            if self.readonly:
                await self._open_readonly()
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await self._connect()
            await migrate(self._db, self.path)
            self._reader = await self._connect()
        except StoreError:
            await self._close_connections()
            raise
        except (sqlite3.Error, OSError) as e:
            await self._close_connections()
            raise StoreError(f"store {self.path}: {e}") from e
        self._writer = asyncio.create_task(self._run_writer(), name="store-writer")

    async def _open_readonly(self) -> None:
        if not self.path.exists():
            raise StoreError(f"no store at {self.path} (has the gateway run?)")
        self._reader = await self._connect()
        version = await _schema_version(self._reader)
        if version is None:
            raise StoreError(f"store {self.path} has no schema yet (has the gateway run?)")
        if version > SCHEMA_VERSION:
            raise _too_new(self.path, version)
        # Older versions are readable: steps 2 and 3 only add indexes and slim
        # the body of new event rows (old full bodies read the same, see
        # _event). A step that changes what queries read must bump this check.

    async def _close_connections(self) -> None:
        for db in (self._reader, self._db):
            if db is not None:
                await db.close()
        self._reader = self._db = None

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        self._hurry.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        await self._close_connections()

    # -- writing -----------------------------------------------------------

    def emit(self, record: StoreRecord) -> None:
        if self._closing or self.readonly:
            raise StoreError(f"store {self.path} is not accepting writes (closed or read-only)")
        self._pending.append(record)
        self._emitted += 1
        self._wakeup.set()
        if type(record) in _PROMPT_TYPES:
            self._prompt = True  # (until a batch takes every pending record)
            self._hurry.set()
        elif len(self._pending) >= self._batch_size:
            self._hurry.set()  # a whole batch: no reason to linger

    @property
    def backlog(self) -> int:
        """Records emitted and not yet taken by the writer."""
        return len(self._pending)

    async def admission(self) -> None:
        if len(self._pending) < self._high_water:
            return
        with self._waited_on():
            async with self._progress:
                await self._progress.wait_for(
                    lambda: len(self._pending) < self._high_water or self._writer_gone()
                )

    async def flush(self) -> None:
        wanted = self._emitted
        with self._waited_on():
            async with self._progress:
                await self._progress.wait_for(
                    lambda: self._committed >= wanted or self._writer_gone()
                )
        if self._committed < wanted:
            raise StoreError(f"store {self.path} has no running writer; records not written")

    @contextlib.contextmanager
    def _waited_on(self) -> Iterator[None]:
        """While a caller waits on the writer, it does not linger."""
        self._waiting += 1
        self._hurry.set()
        try:
            yield
        finally:
            self._waiting -= 1

    def _writer_gone(self) -> bool:
        return self._writer is None or self._writer.done()

    async def _run_writer(self) -> None:
        # One batch's COMMIT (the WAL write, and at times a checkpoint with its
        # fsyncs: ~25% of the writer's wall time, with the GIL released
        # throughout) runs in aiosqlite's thread while the loop builds the
        # next batch's rows. Only the COMMIT: during the inserts the thread
        # takes the GIL back for every statement (every row, before multi-row
        # statements), and a loop busy building rows made it wait up to the
        # switch interval (5 ms) each time. The next batch
        # begins only once the previous one is settled, so batches commit in
        # emit order, one at a time.
        inflight: _InFlight | None = None
        while True:
            if not self._pending:
                if inflight is not None:
                    await self._settle(inflight)
                    inflight = None
                    continue
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._linger and self._may_linger():
                # (the batch in flight is settled first: its COMMIT is done by
                # now, and a linger can't hold up its count)
                if inflight is not None:
                    await self._settle(inflight)
                    inflight = None
                await self._wait_for_company()
            n = min(self._batch_size, len(self._pending))
            if n == len(self._pending):
                batch = list(self._pending)
                self._pending.clear()
                self._prompt = False
            else:
                take = self._pending.popleft
                batch = [take() for _ in range(n)]
            try:
                rows = await self._build(batch)
            except Exception:  # a bug in this module; the writer must outlive it
                log.exception("store writer failed on a batch", records=n)
                rows = _Rows()
            # Not kept while the writer waits for more: up to batch_size records
            # spread over the heap pinned its arenas after a burst of closes.
            del batch
            if inflight is not None:
                await self._settle(inflight)
            inflight = await self._begin(rows, n)
            del rows

    def _may_linger(self) -> bool:
        return not (
            self._closing or self._waiting or self._prompt or len(self._pending) >= self._batch_size
        )

    async def _wait_for_company(self) -> None:
        """Group commit: give the records after the pending ones up to
        ``linger`` seconds to join their transaction (ended early by a
        ``flush``, an ``admission`` wait, ``close``, a connection event or a
        whole batch)."""
        self._hurry.clear()
        if not self._may_linger():
            return
        try:
            await asyncio.wait_for(self._hurry.wait(), self._linger)
        except TimeoutError:
            pass

    async def _begin(self, rows: _Rows, n: int) -> _InFlight | None:
        """Write ``rows`` up to their COMMIT, which is left running (settle it
        with ``_settle``); None when they are settled already."""
        if rows.records:
            try:
                return _InFlight(rows, n, await self._execute(rows))
            except Exception as e:
                await self._write_or_log(rows, n, e)
        await self._count(n)
        return None

    async def _settle(self, inflight: _InFlight) -> None:
        """Wait for a batch's COMMIT; if it failed, write the batch again the
        slow way (retrying, halving)."""
        try:
            await inflight.commit
        except Exception as e:
            await self._write_or_log(inflight.rows, inflight.n, e)
        await self._count(inflight.n)

    async def _write_or_log(self, rows: _Rows, n: int, error: Exception) -> None:
        try:
            await self._write(rows, error)
        except Exception:  # a bug in this module; the writer must outlive it
            log.exception("store writer failed on a batch", records=n)

    async def _count(self, n: int) -> None:
        self._committed += n
        async with self._progress:
            self._progress.notify_all()

    async def _build(self, batch: list[StoreRecord]) -> _Rows:
        """The rows of a batch, built ``_BUILD_SLICE`` records between yields;
        a record that cannot be written is logged and left out."""
        rows = _Rows()
        add, keep = rows.add, rows.records.append
        for start in range(0, len(batch), _BUILD_SLICE):
            if start:
                await asyncio.sleep(0)
            for record in batch[start : start + _BUILD_SLICE]:
                try:
                    add(record)
                    keep(record)
                except Exception as e:
                    log.error("store skipped a bad record", error=str(e), record=_describe(record))
        return rows

    async def _write(self, rows: _Rows, error: Exception | None = None) -> None:
        """Write ``rows`` in one transaction, and wait for it; ``error`` is how a
        first attempt failed. Retries while the database fails; a batch sqlite
        refuses is written in halves until the bad record is alone."""
        if not rows.records:
            return
        delay = 0.01
        while True:
            if error is None:
                try:
                    await (await self._execute(rows))
                    return
                except Exception as e:
                    error = e
            if isinstance(error, sqlite3.OperationalError):
                # locked/busy beyond busy_timeout, disk full, I/O error: the
                # records are fine, the database is not (yet). Never drop: retry.
                log.warning("store write failed; retrying", error=str(error), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                error = None
                continue
            # a value sqlite refuses (an int over 64 bits, a constraint):
            # some record's fault, not the database's
            good = rows.records
            if len(good) == 1:
                log.error("store skipped a bad record", error=str(error), record=_describe(good[0]))
                return
            # find the bad record(s): write each half on its own, in order
            # (log2(n) rounds, not n transactions)
            log.warning("store batch failed; writing it in halves", error=str(error))
            half = len(good) // 2
            await self._write(await self._build(good[:half]))
            await self._write(await self._build(good[half:]))
            return

    async def _execute(self, rows: _Rows) -> asyncio.Task[None]:
        """Begin a transaction and write ``rows`` in it; returns its COMMIT, under
        way. The write lock is held until the COMMIT is done (or rolled back)."""
        db = self._db
        assert db is not None
        await self._write_lock.acquire()
        try:
            # IMMEDIATE takes the write lock up front, inside busy_timeout, rather
            # than failing on upgrade from a read lock part way through.
            await db.execute("BEGIN IMMEDIATE")
            try:
                if rows.events:
                    await _INSERT_EVENT.run(db, rows.events)
                if rows.connections:
                    await _INSERT_CONNECTION.run(db, rows.connections)
                if rows.moved:
                    await db.executemany(_UPDATE_STATE, [(s, c) for c, s in rows.moved.items()])
                if rows.closed:
                    await db.executemany(_UPDATE_CLOSED, rows.closed.values())
                if rows.commands:
                    await _INSERT_COMMAND.run(db, rows.commands)
                if rows.audit:
                    await _INSERT_AUDIT.run(db, rows.audit)
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise
        except BaseException:
            self._write_lock.release()
            raise
        commit = asyncio.create_task(self._commit(db), name="store-commit")
        await asyncio.sleep(0)  # the task's first step queues the COMMIT in the thread
        return commit

    async def _commit(self, db: aiosqlite.Connection) -> None:
        try:
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        finally:
            self._write_lock.release()

    # -- recovery ------------------------------------------------------------

    async def recover_crashed(self) -> list[ClosedEvent]:
        """Call once at start-up, before accepting connections."""
        await self.flush()
        db = self._db
        if db is None:
            raise StoreError(f"store {self.path} is not open for writing")
        sql = (
            "SELECT c.id, c.user_name, c.target, c.target_user, c.client_addr, c.opened_at,"
            " (SELECT MAX(e.time) FROM events e WHERE e.connection_id = c.id)"
            " FROM connections c WHERE c.state <> 'closed' ORDER BY c.opened_at"
        )
        async with db.execute(sql) as cur:
            live = await cur.fetchall()
        closed = [
            ClosedEvent(
                connection_id=cid,
                user=user,
                target=target,
                target_user=target_user,
                client_addr=client_addr,
                time=last_event or opened_at,
                reason=CloseReason.GATEWAY_CRASHED,
                closed_by=SYSTEM,
                message=CRASHED_MESSAGE,
            )
            for cid, user, target, target_user, client_addr, opened_at, last_event in live
        ]
        for event in closed:
            self.emit(event)
        await self.flush()
        if closed:
            log.warning(
                "closed connections left live by an unclean stop",
                count=len(closed),
                connection_ids=[e.connection_id for e in closed],
            )
        return closed

    # -- locks ---------------------------------------------------------------

    def _writable(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"store {self.path} is not open for writing")
        return self._db

    async def lock_user(self, lock: UserLock) -> None:
        db = self._writable()
        async with self._write_lock:
            await db.execute(
                "INSERT INTO locks (user_name, time, actor, reason) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_name) DO UPDATE SET time = excluded.time,"
                " actor = excluded.actor, reason = excluded.reason",
                (lock.user, format_time(lock.time), lock.actor, lock.reason),
            )

    async def unlock_user(self, user: str) -> bool:
        db = self._writable()
        async with self._write_lock:
            cur = await db.execute("DELETE FROM locks WHERE user_name = ?", (user,))
            n = cur.rowcount
            await cur.close()
        return n > 0

    async def locks(self) -> list[UserLock]:
        rows = await self._fetch(
            "SELECT user_name, time, actor, reason FROM locks ORDER BY time, user_name", []
        )
        return [UserLock(user=u, time=t, actor=a, reason=r) for u, t, a, r in rows]

    # -- queries -------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        db = self._reader
        if db is None:
            raise StoreError(f"store {self.path} is not open")
        async with db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _ordered(
        self, select: str, terms: list[str], params: list[Any], order: str, limit: int | None
    ) -> list[Any]:
        """Rows oldest first; with a limit, the newest ``limit`` of them."""
        sql = select + _where(terms)
        if limit is None:
            return await self._fetch(f"{sql} ORDER BY {order}", params)
        desc = ", ".join(f"{col.strip()} DESC" for col in order.split(","))
        rows = await self._fetch(f"{sql} ORDER BY {desc} LIMIT ?", [*params, max(0, limit)])
        rows.reverse()
        return rows

    async def connections(self, f: QueryFilter) -> list[Connection]:
        # A connection matches a time window if it was live at any point in it.
        terms, params = _conditions(
            f, user="user_name", target="target", connection="id", time=None
        )
        if f.since is not None:
            terms.append("(closed_at IS NULL OR closed_at >= ?)")
            params.append(format_time(f.since))
        if f.until is not None:
            terms.append("opened_at < ?")
            params.append(format_time(f.until))
        rows = await self._ordered(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections", terms, params,
            "opened_at, id", f.limit,
        )  # fmt: skip
        return [_connection(r) for r in rows]

    async def connection(self, connection_id: str) -> Connection | None:
        rows = await self._fetch(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE id = ?", [connection_id]
        )
        if not rows:
            return None
        return _connection(rows[0])

    def _event_terms(self, f: QueryFilter) -> tuple[list[str], list[Any]]:
        return _conditions(
            f, user="user_name", target="target", connection="connection_id", time="time"
        )

    async def events(self, f: QueryFilter) -> list[AnyEvent]:
        terms, params = self._event_terms(f)
        rows = await self._ordered(
            f"SELECT {_EVENT_COLUMNS} FROM events", terms, params, "time, seq", f.limit
        )
        return [_event(row) for row in rows]

    async def follow_events(self, f: QueryFilter) -> AsyncIterator[AnyEvent]:
        """First what ``events(f)`` returns (``limit=0``: nothing), then each
        matching event as it is committed, in commit order, by any process.
        Polls every ``poll_interval`` seconds; runs until the caller stops."""
        (top,) = (await self._fetch("SELECT MAX(seq) FROM events", []))[0]
        cursor = top or 0
        terms, params = self._event_terms(f)
        backlog = await self._ordered(
            f"SELECT {_EVENT_COLUMNS} FROM events", [*terms, "seq <= ?"], [*params, cursor],
            "time, seq", f.limit,
        )  # fmt: skip
        for row in backlog:
            yield _event(row)
        page = 1000
        while True:
            rows = await self._fetch(
                f"SELECT seq, {_EVENT_COLUMNS} FROM events"
                + _where([*terms, "seq > ?"])
                + " ORDER BY seq LIMIT ?",
                [*params, cursor, page],
            )
            for seq, *row in rows:
                cursor = seq
                yield _event(row)
            if len(rows) < page:
                await asyncio.sleep(self._poll_interval)

    async def commands(self, f: QueryFilter) -> list[CommandRecord]:
        terms, params = _conditions(
            f, user="user_name", target="target", connection="connection_id", time="time"
        )
        rows = await self._ordered(
            "SELECT time, connection_id, user_name, target, target_user, command FROM commands",
            terms, params, "time, seq", f.limit,
        )  # fmt: skip
        return [
            CommandRecord(time=t, connection_id=c, user=u, target=tg, target_user=tu, command=cmd)
            for t, c, u, tg, tu, cmd in rows
        ]

    async def audit(self, f: QueryFilter) -> list[AuditEntry]:
        # --user on audit means the actor: the person who did or was refused it
        terms, params = _conditions(
            f, user="actor", target="target", connection="connection_id", time="time"
        )
        rows = await self._ordered(
            "SELECT time, actor, action, client_addr, detail, connection_id, target FROM audit",
            terms, params, "time, seq", f.limit,
        )  # fmt: skip
        return [
            AuditEntry(
                time=t, actor=a, action=ac, client_addr=ca, detail=d, connection_id=c, target=tg
            )
            for t, a, ac, ca, d, c, tg in rows
        ]
