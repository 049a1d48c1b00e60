"""The store's schema, as an ordered list of versioned migration steps.

Owns every ``CREATE`` statement. A database records the last step applied in
the one-row ``schema_version`` table (a table rather than sqlite's
``PRAGMA user_version`` so the PostgreSQL backend can share the scheme).
Steps are append-only: never edit a shipped step, add a new one.

The SQL is kept portable: ``TEXT``/``INTEGER`` columns, times as RFC 3339 UTC
text with microseconds (sorts as time), no sqlite-only syntax. The one
sqlite-ism is ``INTEGER PRIMARY KEY`` as an alias of the rowid for the ``seq``
columns (``BIGSERIAL`` / identity in PostgreSQL). ``user`` is a reserved word in
PostgreSQL, so the column is ``user_name``.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            # seq is the commit order: `follow_events` tails by it and it breaks
            # ties between events with the same time.
            """CREATE TABLE events (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL,
                time TEXT NOT NULL,
                type TEXT NOT NULL,
                connection_id TEXT NOT NULL,
                user_name TEXT NOT NULL,
                target TEXT NOT NULL,
                body TEXT NOT NULL
            )""",
            # recovery and `--connection` look events up by connection
            "CREATE INDEX events_connection ON events (connection_id, time)",
            """CREATE TABLE connections (
                id TEXT PRIMARY KEY,
                user_name TEXT NOT NULL,
                target TEXT NOT NULL,
                target_user TEXT NOT NULL,
                client_addr TEXT NOT NULL,
                kind TEXT NOT NULL,
                name TEXT,
                state TEXT NOT NULL,
                opened_at TEXT NOT NULL,
                closed_at TEXT,
                reason TEXT,
                closed_by TEXT,
                message TEXT,
                bytes_in INTEGER NOT NULL DEFAULT 0,
                bytes_out INTEGER NOT NULL DEFAULT 0,
                cast_path TEXT
            )""",
            """CREATE TABLE commands (
                seq INTEGER PRIMARY KEY,
                time TEXT NOT NULL,
                connection_id TEXT NOT NULL,
                user_name TEXT NOT NULL,
                target TEXT NOT NULL,
                target_user TEXT NOT NULL,
                command TEXT NOT NULL
            )""",
            """CREATE TABLE audit (
                seq INTEGER PRIMARY KEY,
                time TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                client_addr TEXT NOT NULL,
                detail TEXT NOT NULL,
                connection_id TEXT,
                target TEXT
            )""",
            """CREATE TABLE locks (
                user_name TEXT PRIMARY KEY,
                time TEXT NOT NULL,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL
            )""",
        ],
    ),
    (
        2,
        [
            # The query indexes: a CLI filter is "column = ? and a time range",
            # rows oldest first, so each index ends in time. Every index costs
            # the writer (measured: a random-UUID index about a third of insert
            # speed), so: none on event ids (nothing looks events up by id) and
            # none on target (`--target` uses the time index, or scans).
            "CREATE INDEX events_time ON events (time)",
            "CREATE INDEX events_user ON events (user_name, time)",
            "CREATE INDEX connections_opened ON connections (opened_at)",
            "CREATE INDEX connections_user ON connections (user_name, opened_at)",
            "CREATE INDEX connections_target ON connections (target, opened_at)",
            # Recovery looks for the live ones at every start. A partial index
            # (sqlite and PostgreSQL both have them) holds only live rows, so
            # closing a connection shrinks it instead of rewriting a state index.
            "CREATE INDEX connections_live ON connections (opened_at) WHERE state <> 'closed'",
            "CREATE INDEX commands_time ON commands (time)",
            "CREATE INDEX commands_user ON commands (user_name, time)",
            "CREATE INDEX commands_connection ON commands (connection_id, time)",
            "CREATE INDEX audit_time ON audit (time)",
            "CREATE INDEX audit_actor ON audit (actor, time)",
        ],
    ),
    (
        3,
        # No DDL. From here on an event row's body holds only the fields that
        # have no column of their own (target_user, client_addr and the
        # open/closed extras); reading puts the columns back. The writer spent
        # ~15% less CPU per event on the store bench (the body 272 -> 92 bytes,
        # the file for 100,000 events 71 -> 51 MB, a third of the JSON to
        # build). A shellgate older than this would misread such rows, so the
        # version says so and it refuses the file. Rows written before keep
        # their full body, which reads the same.
        [],
    ),
]
"""(version, statements) in order; a database at version N has run steps 1..N."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The newest schema this code knows."""

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
