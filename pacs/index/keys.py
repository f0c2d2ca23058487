"""Secret keys the archive keeps in its index (``schema_meta``), shared by every server
process on the database: the AI hooks' token signing key, the de-identification UID key.

A key is 256 random bits created on first use; when several processes race to create
it, the first insert wins and everyone reads that one. Keys are cached per database URL
and name (they never change once written).
"""

from __future__ import annotations

import secrets
import threading

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from .db import Database
from .models import SchemaMeta

_cache: dict[tuple[str, str], bytes] = {}
_lock = threading.Lock()


def _read(db: Database, name: str) -> str | None:
    with db.read() as conn:
        return conn.execute(select(SchemaMeta.value).where(SchemaMeta.key == name)).scalar()


def stored_key(db: Database, name: str) -> bytes:
    """The key ``name`` of this database: read, or created once (blocking)."""
    with _lock:
        if (db.url, name) in _cache:
            return _cache[(db.url, name)]
    value = _read(db, name)
    if value is None:
        try:
            with db.write() as conn:
                conn.execute(insert(SchemaMeta).values(key=name, value=secrets.token_hex(32)))
        except IntegrityError:  # another process created it first
            pass
        value = _read(db, name)
        assert value is not None
    with _lock:
        _cache[(db.url, name)] = bytes.fromhex(value)
    return _cache[(db.url, name)]


def forget_cached_keys() -> None:
    """Drop the cache, as a fresh process starts (tests)."""
    with _lock:
        _cache.clear()
