"""The read-only half of the ``shellgate`` CLI: ``connections``, ``events``
(``--follow``), ``commands``, ``audit`` and ``export``.

They read the store directly (opened read-only; WAL lets them run while the
daemon writes), print an aligned table for people or JSON Lines (``--json``)
for programs. Everything printed is escaped so that recorded text (a command,
a message, a session name) cannot send control sequences to the reader's
terminal. Users see one-line errors and an exit status, never a traceback.

Wiring: ``add_query_commands(subparsers, config_loader)``; each subcommand sets
``func`` to an ``async`` handler taking the parsed args and returning the exit
status, which the caller runs with ``asyncio.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from config import ConfigError, GatewayConfig, parse_duration
from store import QueryFilter, SqliteStore, StoreError, store_path
from store.events import (
    AnyEvent,
    AuditEntry,
    ClosedEvent,
    CommandRecord,
    Connection,
    OpenEvent,
    Record,
)

ConfigLoader = Callable[[str | None], GatewayConfig]
"""The caller's ``load_config``: a path (None: the embedded default) to a config."""

FOLLOW_DEFAULT_LIMIT = 10
"""``events --follow`` without ``--limit`` first shows this many, like ``tail -f``."""

# C0 and C1 controls, DEL, and the Unicode characters that reorder or hide text
# (bidi overrides and isolates, line/paragraph separators, zero-width marks).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: object) -> str:
    """``value`` as text safe for a terminal: ESC becomes ``\\x1b``, a newline
    ``\\n``; printable text (any script) is left as it is."""
    return _UNSAFE.sub(_escape_char, str(value))


def _json_escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def json_line(record: Record) -> str:
    """One JSON Lines row with the contract's field names. JSON already escapes
    C0 controls; the C1 and bidi ones are escaped too (as ``\\u`` escapes, so
    the line is still the same JSON) because people read it on terminals."""
    text = json.dumps(record.model_dump(mode="json"), ensure_ascii=False)
    return _UNSAFE.sub(_json_escape, text)


# -- arguments -----------------------------------------------------------------


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """An RFC 3339 time (no offset: UTC), or a duration back from now (``15m``)."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        pass
    else:
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time or duration: {text!r} (use RFC 3339, e.g. 2024-05-01T10:00:00Z, "
            "or a duration back from now, e.g. 15m or 1h30m)"
        ) from None
    return (now or datetime.now(UTC)) - timedelta(seconds=seconds)


def _limit(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"not a row count: {text!r}")
    return n


def _common(p: argparse.ArgumentParser, *, filters: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="gateway config (default: embedded)")
    if not filters:
        return
    p.add_argument("--json", action="store_true", help="JSON Lines, one object per line")
    p.add_argument("--user", help="only this user (for audit: this actor)")
    p.add_argument("--target", help="only this target")
    p.add_argument("--connection", metavar="ID", help="only this connection")
    p.add_argument(
        "--since",
        type=parse_when,
        metavar="WHEN",
        help="from this time on: RFC 3339, or a duration back from now (15m)",
    )
    p.add_argument(
        "--until",
        type=parse_when,
        metavar="WHEN",
        help="before this time: RFC 3339, or a duration back from now",
    )
    p.add_argument("--limit", type=_limit, metavar="N", help="only the newest N rows")


def add_query_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    config_loader: ConfigLoader,
) -> None:
    """Register ``connections events commands audit export`` on ``subparsers``."""
    p = subparsers.add_parser("connections", help="one row per connection")
    _common(p)
    p.set_defaults(func=_handler(_connections, config_loader))

    p = subparsers.add_parser("events", help="connection events (open, connected, ...)")
    _common(p)
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help=f"keep printing new events (shows the last {FOLLOW_DEFAULT_LIMIT} "
        "first unless --limit is given)",
    )
    p.set_defaults(func=_handler(_events, config_loader))

    p = subparsers.add_parser("commands", help="command lines typed in sessions")
    _common(p)
    p.set_defaults(func=_handler(_commands, config_loader))

    p = subparsers.add_parser("audit", help="auth failures, refusals, control actions")
    _common(p)
    p.set_defaults(func=_handler(_audit, config_loader))

    p = subparsers.add_parser("export", help="a connection's recording (asciicast v2)")
    _common(p, filters=False)
    p.add_argument("id", metavar="ID", help="connection id")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=_handler(_export, config_loader))


# -- running -------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, GatewayConfig, SqliteStore], Any]


def _fail(message: str) -> int:
    print(f"shellgate: {safe_text(message)}", file=sys.stderr)
    return 1


def _handler(body: Handler, config_loader: ConfigLoader) -> Callable[[argparse.Namespace], Any]:
    async def run(args: argparse.Namespace) -> int:
        try:
            config = config_loader(args.config)
        except ConfigError as e:
            for problem in e.problems:
                print(f"shellgate: {safe_text(problem)}", file=sys.stderr)
            return 1
        try:
            async with SqliteStore(store_path(config.gateway.data_dir), readonly=True) as store:
                status: int = await body(args, config, store)
                return status
        except StoreError as e:
            return _fail(str(e))
        except BrokenPipeError:
            # `shellgate events | head`: the reader left; not an error. Point
            # stdout at devnull so the interpreter's final flush stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except OSError as e:
            return _fail(f"{e.filename or 'store'}: {e.strerror or e}")
        except Exception as e:  # the promise is: no tracebacks to users, ever
            return _fail(f"unexpected error: {type(e).__name__}: {e}")

    return run


def _filter(args: argparse.Namespace, limit: int | None = None) -> QueryFilter:
    return QueryFilter(
        user=args.user,
        target=args.target,
        connection=args.connection,
        since=args.since,
        until=args.until,
        limit=args.limit if args.limit is not None else limit,
    )


def _when(t: datetime | None) -> str:
    return "" if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def print_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], out: TextIO | None = None
) -> None:
    """An aligned table, every cell escaped; the last column is not padded."""
    out = out or sys.stdout
    cells = [[safe_text("" if c is None else c) for c in row] for row in rows]
    widths = [len(h) for h in header]
    for row in cells:
        for i, c in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(c))
    for row in [list(header), *cells]:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        out.write("  ".join([*padded, row[-1]]).rstrip() + "\n")


def _emit_rows(
    args: argparse.Namespace,
    records: Sequence[Record],
    header: Sequence[str],
    row: Callable[[Any], Sequence[object]],
) -> int:
    if args.json:
        for r in records:
            sys.stdout.write(json_line(r) + "\n")
    elif records:
        print_table(header, [row(r) for r in records])
    sys.stdout.flush()
    return 0


_CONNECTION_HEADER = (
    "ID", "USER", "TARGET", "LOGIN", "FROM", "NAME", "STATE", "OPENED", "CLOSED",
    "REASON", "BY", "IN", "OUT", "MESSAGE",
)  # fmt: skip


def _connection_row(c: Connection) -> Sequence[object]:
    return (
        c.id, c.user, c.target, c.target_user, c.client_addr, c.name, c.state.value,
        _when(c.opened_at), _when(c.closed_at), c.reason.value if c.reason else None,
        c.closed_by, c.bytes_in, c.bytes_out, c.message,
    )  # fmt: skip


async def _connections(args: argparse.Namespace, _: GatewayConfig, store: SqliteStore) -> int:
    rows = await store.connections(_filter(args))
    return _emit_rows(args, rows, _CONNECTION_HEADER, _connection_row)


_EVENT_HEADER = ("TIME", "TYPE", "CONNECTION", "USER", "TARGET", "LOGIN", "FROM", "DETAIL")


def _event_detail(e: AnyEvent) -> str:
    if isinstance(e, ClosedEvent):
        detail = f"{e.reason.value} by {e.closed_by}"
        return f"{detail}: {e.message}" if e.message else detail
    if isinstance(e, OpenEvent):
        return e.kind.value + (f" name={e.name}" if e.name else "")
    return ""


def _event_row(e: AnyEvent) -> Sequence[object]:
    return (
        _when(e.time), e.type, e.connection_id, e.user, e.target, e.target_user,
        e.client_addr, _event_detail(e),
    )  # fmt: skip


async def _events(args: argparse.Namespace, _: GatewayConfig, store: SqliteStore) -> int:
    if not args.follow:
        return _emit_rows(args, await store.events(_filter(args)), _EVENT_HEADER, _event_row)
    # Following: rows are printed as they come, so the table cannot be aligned
    # on its contents; fixed widths that fit ids and times instead.
    widths = (20, 12, 36, 12, 12, 10, 21)
    if not args.json:
        print("  ".join(h.ljust(w) for h, w in zip(_EVENT_HEADER, widths, strict=False))
              + "  " + _EVENT_HEADER[-1], flush=True)  # fmt: skip
    try:
        async for event in store.follow_events(_filter(args, FOLLOW_DEFAULT_LIMIT)):
            if args.json:
                line = json_line(event)
            else:
                cells = [safe_text(c) for c in _event_row(event)]
                line = "  ".join(
                    [*(c.ljust(w) for c, w in zip(cells, widths, strict=False)), cells[-1]]
                ).rstrip()
            print(line, flush=True)
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels us; a tail that is stopped is not an error.
        return 0
    return 0


_COMMAND_HEADER = ("TIME", "CONNECTION", "USER", "TARGET", "LOGIN", "COMMAND")


def _command_row(c: CommandRecord) -> Sequence[object]:
    return (_when(c.time), c.connection_id, c.user, c.target, c.target_user, c.command)


async def _commands(args: argparse.Namespace, _: GatewayConfig, store: SqliteStore) -> int:
    return _emit_rows(args, await store.commands(_filter(args)), _COMMAND_HEADER, _command_row)


_AUDIT_HEADER = ("TIME", "ACTOR", "ACTION", "FROM", "TARGET", "CONNECTION", "DETAIL")


def _audit_row(a: AuditEntry) -> Sequence[object]:
    return (_when(a.time), a.actor, a.action, a.client_addr, a.target, a.connection_id, a.detail)


async def _audit(args: argparse.Namespace, _: GatewayConfig, store: SqliteStore) -> int:
    return _emit_rows(args, await store.audit(_filter(args)), _AUDIT_HEADER, _audit_row)


def recording_path(config: GatewayConfig, connection: Connection) -> Path:
    """Where a connection's cast is: its row's ``cast_path``, else the default."""
    if connection.cast_path:
        return Path(connection.cast_path)
    return Path(config.gateway.data_dir) / "recordings" / f"{connection.id}.cast"


async def _export(args: argparse.Namespace, config: GatewayConfig, store: SqliteStore) -> int:
    connection = await store.connection(args.id)
    if connection is None:
        return _fail(f"no connection {args.id}")
    path = recording_path(config, connection)
    try:
        source = path.open("rb")
    except FileNotFoundError:
        return _fail(f"connection {args.id} has no recording at {path}")
    with source:
        if args.output is None:
            sys.stdout.flush()
            shutil.copyfileobj(source, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            # recordings hold whatever was on the screen: keep the copy private
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out)
    return 0
