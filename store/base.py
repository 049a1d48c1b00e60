"""The store's one async interface. The gateway and the CLI program against
this; ``store.sqlite`` implements it now, a PostgreSQL backend later.

Writes are fire-and-forget from the relay's point of view: ``emit`` never
awaits and never drops; ``admission`` is where new connections wait when the
writer falls behind (backpressure on new work, not on live sessions).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from store.events import (
    AnyEvent,
    AuditEntry,
    ClosedEvent,
    CommandRecord,
    Connection,
    StoreRecord,
    UserLock,
)


class QueryFilter(BaseModel):
    """The CLI's common filters. Rows come oldest first; ``limit`` keeps the newest N."""

    model_config = ConfigDict(frozen=True)

    user: str | None = None
    target: str | None = None
    connection: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None


class EventStore(abc.ABC):
    """Async store of connection events, connections, commands, audit and locks."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Open, migrate, and start the writer. Raises StoreError on a schema
        newer than this code knows."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Drain the writer queue, commit, and close."""

    # -- writing -----------------------------------------------------------
    @abc.abstractmethod
    def emit(self, record: StoreRecord) -> None:
        """Queue a record for the batched writer. Never blocks, never drops."""

    @abc.abstractmethod
    async def admission(self) -> None:
        """Wait until the writer's backlog is below its high-water mark."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until everything emitted so far is committed."""

    @abc.abstractmethod
    async def recover_crashed(self) -> list[ClosedEvent]:
        """Close connections a previous run left live (``gateway_crashed``,
        ``closed_by=system``, at the time of their last event). Returns the
        closed events written."""

    # -- locks (awaited: control actions, not the relay) --------------------
    @abc.abstractmethod
    async def lock_user(self, lock: UserLock) -> None: ...

    @abc.abstractmethod
    async def unlock_user(self, user: str) -> bool:
        """True if the user was locked."""

    @abc.abstractmethod
    async def locks(self) -> list[UserLock]: ...

    # -- queries ------------------------------------------------------------
    @abc.abstractmethod
    async def connections(self, f: QueryFilter) -> list[Connection]: ...

    @abc.abstractmethod
    async def connection(self, connection_id: str) -> Connection | None: ...

    @abc.abstractmethod
    async def events(self, f: QueryFilter) -> list[AnyEvent]: ...

    @abc.abstractmethod
    def follow_events(self, f: QueryFilter) -> AsyncIterator[AnyEvent]:
        """Events as they are committed (``shellgate events --follow``)."""

    @abc.abstractmethod
    async def commands(self, f: QueryFilter) -> list[CommandRecord]: ...

    @abc.abstractmethod
    async def audit(self, f: QueryFilter) -> list[AuditEntry]: ...


class StoreError(Exception):
    """The store cannot be used (schema too new, unreadable file). One line."""
