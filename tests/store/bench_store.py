"""Store benchmark (not collected by pytest): ``python tests/store/bench_store.py``.

Prints the batched writer's throughput (connection events, and commands)
through the real ``SqliteStore`` (emit -> writer task -> executemany -> commit),
and the time of ``commands(user=X, since=Y)`` over 1,000,000 command rows.

``--rate N``: instead, the process CPU of emitting N commands a second for a
few seconds, one at a time as typists send them (benchmark #5: ~230/s), with
the writer's group commit (``COMMIT_LINGER``) and without it, against the
same loop emitting nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from store import QueryFilter, SqliteStore
from store.events import (
    AnyEvent,
    ClosedEvent,
    CloseReason,
    CommandRecord,
    ConnectedEvent,
    DisconnectedEvent,
    OpenEvent,
    format_time,
    new_id,
)
from store.sqlite import COMMIT_LINGER

T0 = datetime(2025, 1, 1, tzinfo=UTC)
USERS = [f"user{i:03d}" for i in range(100)]


def connection_events(n: int) -> list[AnyEvent]:
    out: list[AnyEvent] = []
    for i in range(n // 4):
        cid = new_id()
        who = {
            "connection_id": cid,
            "user": USERS[i % 100],
            "target": f"web{i % 20}",
            "target_user": "deploy",
            "client_addr": "192.0.2.7:50522",
        }
        t = T0 + timedelta(seconds=4 * i)
        out += [
            OpenEvent(time=t, **who),
            ConnectedEvent(time=t + timedelta(seconds=1), **who),
            DisconnectedEvent(time=t + timedelta(seconds=2), **who),
            ClosedEvent(
                time=t + timedelta(seconds=3),
                reason=CloseReason.CLIENT_EXIT,
                closed_by=who["user"],
                message="exit status 0",
                **who,
            ),
        ]
    return out


def commands(n: int, start: int = 0) -> list[CommandRecord]:
    return [
        CommandRecord(
            time=T0 + timedelta(seconds=i),
            connection_id=f"conn-{i // 50}",
            user=USERS[i % 100],
            target=f"web{i % 20}",
            target_user="deploy",
            command=f"tail -n 100 /var/log/app/{i}.log | grep ERROR",
        )
        for i in range(start, start + n)
    ]


async def through_writer(path: Path, records: list, label: str) -> None:
    store = SqliteStore(path)
    await store.open()
    started = time.perf_counter()
    cpu = time.process_time()  # every thread of the process: aiosqlite's too
    for r in records:
        store.emit(r)
    await store.flush()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await store.close()
    # wall time follows the machine's load; CPU time per record much less so
    print(
        f"writer: {len(records):>9,} {label:<18} {elapsed:6.2f} s  "
        f"{len(records) / elapsed:>9,.0f} records/s  "
        f"CPU {cpu / len(records) * 1e6:5.1f} us/record"
    )


async def fill_commands(path: Path, total: int, chunk: int = 100_000) -> None:
    """A store at ``path`` holding ``total`` command rows as the writer lays them
    out. The bulk goes in with plain sqlite3: setup, not the thing measured."""
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        for start in range(0, total, chunk):
            db.executemany(
                "INSERT INTO commands (time, connection_id, user_name, target, target_user,"
                " command) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        format_time(r.time),
                        r.connection_id,
                        r.user,
                        r.target,
                        r.target_user,
                        r.command,
                    )
                    for r in commands(min(chunk, total - start), start)
                ],
            )


async def query_bench(path: Path, total: int) -> None:
    await fill_commands(path, total)
    async with SqliteStore(path, readonly=True) as ro:
        since = T0 + timedelta(seconds=total - 50_000)  # the last 5% of the time span
        cases = {
            "commands(user, since)": QueryFilter(user="user042", since=since),
            "commands(user) limit 100": QueryFilter(user="user042", limit=100),
            "commands(connection)": QueryFilter(connection="conn-12345"),
            "commands(since, until)": QueryFilter(since=since, until=since + timedelta(minutes=5)),
        }
        for label, f in cases.items():
            await ro.commands(f)  # warm the page cache once
            runs = 20
            started = time.perf_counter()
            for _ in range(runs):
                rows = await ro.commands(f)
            ms = (time.perf_counter() - started) / runs * 1000
            print(f"query over {total:,} commands: {label:<26} {len(rows):>6} rows  {ms:7.2f} ms")
    with sqlite3.connect(path) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM commands WHERE user_name = ? AND time >= ?"
            " ORDER BY time, seq",
            ("user042", "2025"),
        ).fetchall()
    print("plan:", "; ".join(row[-1] for row in plan))


async def trickle(path: Path, rate: float, seconds: float, linger: float | None) -> None:
    """CPU seconds of a loop emitting a command every 1/``rate`` s (none when
    ``linger`` is None: the baseline), and its context switches."""
    store = SqliteStore(path, linger=linger or 0.0)
    await store.open()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        if linger is not None:
            store.emit(commands(1, n)[0])
        n += 1
        await asyncio.sleep(1 / rate)
    done = resource.getrusage(resource.RUSAGE_SELF)
    await store.close()
    cpu = done.ru_utime - usage.ru_utime + done.ru_stime - usage.ru_stime
    label = "no records (the loop alone)" if linger is None else f"linger {linger:g} s"
    print(
        f"{label:28s} {n / seconds:6.0f}/s: {cpu / seconds * 100:5.1f}% of a core, "
        f"{(done.ru_nvcsw - usage.ru_nvcsw) / seconds:6.0f} voluntary and "
        f"{(done.ru_nivcsw - usage.ru_nivcsw) / seconds:6.0f} involuntary context switches/s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, help="commands a second, one at a time")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if args.rate:
            for i, linger in enumerate((None, 0.0, COMMIT_LINGER)):
                await trickle(d / f"trickle{i}.db", args.rate, 6.0, linger)
            return
        events = connection_events(args.events)
        await through_writer(d / "events.db", events, "connection events")
        await through_writer(d / "commands.db", commands(args.events), "commands")
        await query_bench(d / "query.db", args.rows)


if __name__ == "__main__":
    asyncio.run(main())
