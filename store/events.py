"""The event vocabulary: every record shellgate writes or reads.

One set of frozen pydantic models, tagged by ``type``, used by the recorder,
the gateway, the store, the CLI and the tests alike. Field names are the
interface contract (DESIGN.md, "Events" and "Queries"); change them only with it.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer


def new_id() -> str:
    """A fresh identifier: a UUID version 7 (RFC 9562) in canonical text form.

    48 bits of Unix time in milliseconds, then 74 random bits. Time-ordered ids
    are what keeps the store's writer fast: a connection id is a key in several
    indexes (the connections primary key, events by connection, commands by
    connection), and a new random (v4) key lands on a random leaf page of each,
    so every row written dirtied (and re-wrote to the WAL) one more page per
    index, more so as the indexes grow. A v7 key lands at the right-hand edge.
    The ids are still unguessable (74 random bits); they reveal the creation
    time, which ``opened_at`` shows anyway.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10))
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80  # unix_ts_ms
        | 0x7 << 76  # version 7
        | (rand >> 68) << 64  # rand_a: 12 bits
        | 0b10 << 62  # variant
        | rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b: 62 bits
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utc_now() -> datetime:
    """The current time in UTC with microseconds. Only the gateway calls this;
    the recorder is handed times."""
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    """RFC 3339, UTC, microseconds, ``Z`` suffix: sortable as text."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CloseReason(StrEnum):
    """Why a connection ended. The contract's table; ``closed_by`` says who."""

    CLIENT_EXIT = "client_exit"
    USER_CLOSED = "user_closed"
    ADMIN_CLOSED = "admin_closed"
    USER_LOCKED = "user_locked"
    TARGET_REMOVED = "target_removed"
    TARGET_UNREACHABLE = "target_unreachable"
    TARGET_UNTRUSTED = "target_untrusted"
    TARGET_LOST = "target_lost"
    DETACH_TIMEOUT = "detach_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    GATEWAY_SHUTDOWN = "gateway_shutdown"
    GATEWAY_CRASHED = "gateway_crashed"
    ERROR = "error"


class ConnectionState(StrEnum):
    """A connection's state; always the one its last event implies."""

    OPEN = "open"
    CONNECTED = "connected"
    DETACHED = "detached"
    CLOSED = "closed"


class ConnectionKind(StrEnum):
    """What the channel carries. Only shells detach."""

    SHELL = "shell"
    EXEC = "exec"


SYSTEM = "system"
"""``closed_by`` / ``actor`` when no person did it."""


class Record(BaseModel):
    """Base of every stored record: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_serializer("*", when_used="json")
    def _times_as_rfc3339(self, value: object) -> object:
        if isinstance(value, datetime):
            return format_time(value)
        return value


class _ConnectionEventBase(Record):
    id: str = Field(default_factory=new_id)
    time: datetime = Field(default_factory=utc_now)
    connection_id: str
    user: str
    target: str
    target_user: str
    client_addr: str


class OpenEvent(_ConnectionEventBase):
    """Authorized; the target is being dialled. Creates the connection row."""

    type: Literal["open"] = "open"
    kind: ConnectionKind = ConnectionKind.SHELL
    name: str | None = None
    cast_path: str | None = None


class ConnectedEvent(_ConnectionEventBase):
    """A client is attached to the live shell (first attach and every reattach)."""

    type: Literal["connected"] = "connected"


class DisconnectedEvent(_ConnectionEventBase):
    """The client went away; the shell lives on, detached."""

    type: Literal["disconnected"] = "disconnected"


class ClosedEvent(_ConnectionEventBase):
    """The shell is gone. Exactly one per connection."""

    type: Literal["closed"] = "closed"
    reason: CloseReason
    closed_by: str
    message: str = ""
    bytes_in: int = 0
    bytes_out: int = 0


ConnectionEvent = Annotated[
    OpenEvent | ConnectedEvent | DisconnectedEvent | ClosedEvent,
    Field(discriminator="type"),
]
"""Any of the four connection events, parsed by their ``type`` tag."""


class CommandRecord(Record):
    """One command line the shell accepted (``time`` is when Enter was pressed)."""

    type: Literal["command"] = "command"
    time: datetime
    connection_id: str
    user: str
    target: str
    target_user: str
    command: str


class AuditEntry(Record):
    """Something done or refused that is not a connection event: auth failures,
    refusals, transfers, control actions."""

    type: Literal["audit"] = "audit"
    time: datetime = Field(default_factory=utc_now)
    actor: str
    action: str
    client_addr: str = ""
    detail: str = ""
    connection_id: str | None = None
    target: str | None = None


class Connection(Record):
    """A connection row as the store keeps it and ``shellgate connections`` shows it."""

    id: str
    user: str
    target: str
    target_user: str
    client_addr: str
    kind: ConnectionKind = ConnectionKind.SHELL
    name: str | None = None
    state: ConnectionState
    opened_at: datetime
    closed_at: datetime | None = None
    reason: CloseReason | None = None
    closed_by: str | None = None
    message: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    cast_path: str | None = None


class UserLock(Record):
    """A stored lock: the user may not log in until unlocked."""

    type: Literal["lock"] = "lock"
    user: str
    time: datetime = Field(default_factory=utc_now)
    actor: str
    reason: str = ""


AnyEvent = OpenEvent | ConnectedEvent | DisconnectedEvent | ClosedEvent
StoreRecord = AnyEvent | CommandRecord | AuditEntry
"""What the gateway hands the store's writer."""
