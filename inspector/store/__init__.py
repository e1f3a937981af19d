"""The results store: every explanation in one database (SQLite file by default, PostgreSQL for a plant).

See :mod:`inspector.store.schema` for the tables and :class:`Store` for what can be done with them."""

from .db import STORE_FILE, StoreError, default_url, display_url
from .schema import SCHEMA_VERSION
from .store import Claim, ClaimLost, ResultKey, Store, display_path, path_bytes

__all__ = ["SCHEMA_VERSION", "STORE_FILE", "Claim", "ClaimLost", "ResultKey", "Store", "StoreError",
           "default_url", "display_path", "display_url", "path_bytes"]
