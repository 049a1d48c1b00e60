"""The values the writer keys its rows by: ids (UUID v7, time-ordered) and
the text form of times (sortable, the same as ``format_time``)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from store.events import OpenEvent, format_time, new_id
from store.sqlite import _text_time


def test_new_id_is_a_canonical_uuid_version_7() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        u = uuid.UUID(text)
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
        assert str(u) == text  # canonical: lower-case hex, 8-4-4-4-12


def test_new_id_carries_its_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    u = uuid.UUID(new_id())
    after = time.time_ns() // 1_000_000
    assert before <= u.int >> 80 <= after


def test_later_ids_sort_after_earlier_ones() -> None:
    # what keeps index inserts at the right-hand edge: ids made in a later
    # millisecond sort (as text, as sqlite compares them) after earlier ones
    first = [new_id() for _ in range(50)]
    time.sleep(0.002)
    second = [new_id() for _ in range(50)]
    assert max(first) < min(second)


def test_ids_of_new_records_are_version_7() -> None:
    e = OpenEvent(connection_id=new_id(), user="a", target="t", target_user="l", client_addr="x")
    assert uuid.UUID(e.id).version == 7
    assert uuid.UUID(e.connection_id).version == 7


@pytest.mark.parametrize(
    "tz",
    [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))],
)
@pytest.mark.parametrize("microsecond", [0, 1, 999_999, 123_450])
def test_text_time_is_format_time(tz: timezone, microsecond: int) -> None:
    for t in (
        datetime(2025, 1, 1, tzinfo=tz),
        datetime(2025, 12, 31, 23, 59, 59, tzinfo=tz),
        datetime(1999, 2, 28, 4, 5, 6, tzinfo=tz),
        datetime(2038, 1, 19, 3, 14, 8, tzinfo=tz),
    ):
        t = t.replace(microsecond=microsecond)
        assert _text_time(t) == format_time(t)
        assert len(_text_time(t)) == len("2025-01-01T00:00:00.000000Z")


def test_text_time_pads_early_years() -> None:
    # strftime's %Y does not pad (glibc: "999-..."); the column must sort as text
    t = datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert _text_time(t) == "0999-01-02T03:04:05.000006Z"
    assert _text_time(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000Z"


def test_text_time_of_a_parsed_time() -> None:
    # records read back (or built by pydantic from text) carry pydantic's own
    # UTC tzinfo, not datetime.UTC
    e = OpenEvent.model_validate_json(
        '{"connection_id": "c", "user": "a", "target": "t", "target_user": "l",'
        ' "client_addr": "x", "time": "2025-03-01T12:00:00.5Z"}'
    )
    assert e.time.tzinfo is not UTC
    assert _text_time(e.time) == "2025-03-01T12:00:00.500000Z" == format_time(e.time)


def test_text_time_over_a_sweep_of_times_and_zones() -> None:
    """_text_time reads the datetime's pickled state and caches minutes: every
    field, fold=1, naive times, and a cache cleared part way agree with
    format_time."""
    import random

    from store import sqlite

    rnd = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=13, minutes=45))]
    for i in range(5000):
        t = datetime(
            rnd.randint(1001, 9998), rnd.randint(1, 12), rnd.randint(1, 28), rnd.randint(0, 23),
            rnd.randint(0, 59), rnd.randint(0, 59), rnd.randint(0, 999_999),
            tzinfo=rnd.choice(zones), fold=i % 2,
        )  # fmt: skip
        assert _text_time(t) == format_time(t), t
        assert _text_time(t) == format_time(t), t  # the cached minute
    assert len(sqlite._MINUTES) <= sqlite._MINUTES_KEPT
    naive = datetime(2025, 6, 1, 12, 30, 15, 42)
    assert _text_time(naive) == format_time(naive)
