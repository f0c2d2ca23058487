"""Engine and transactions for the index, on SQLite (embedded) or PostgreSQL.

One engine per process, created once (tech-notes §e). Write transactions on SQLite use
``BEGIN IMMEDIATE`` so concurrent writers queue on the busy timeout instead of failing
when a read lock is upgraded.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ..errors import StorageUnavailable


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """The index database: an engine plus read and write transaction helpers."""

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size * 2)
            _sqlite_pragmas(self.engine)
        else:
            self.engine = create_engine(
                url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True
            )

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed on exit, rolled back on error."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(immediate=True)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise StorageUnavailable("index database unavailable") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction."""
        try:
            with self.engine.connect() as conn:
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise StorageUnavailable("index database unavailable") from exc

    def check(self) -> None:
        """Raise :class:`StorageUnavailable` when the database cannot be reached."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StorageUnavailable("index database unavailable") from exc

    def dispose(self) -> None:
        self.engine.dispose()
