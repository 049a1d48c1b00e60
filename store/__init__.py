"""The event vocabulary and the async store behind it.

``store.events`` owns the records, ``store.base`` the one ``EventStore``
interface, ``store.sqlite`` the sqlite backend and ``store.migrations`` its
schema. Import the backend from here: ``from store import SqliteStore``.
"""

from store.base import EventStore, QueryFilter, StoreError
from store.sqlite import DB_NAME, SqliteStore, store_path

__all__ = ["DB_NAME", "EventStore", "QueryFilter", "SqliteStore", "StoreError", "store_path"]
