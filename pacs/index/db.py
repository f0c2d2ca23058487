"""Engine and transactions for the index, on SQLite (embedded) or PostgreSQL.

One engine per process, created once (tech-notes §e). Write transactions on SQLite use
``BEGIN IMMEDIATE`` so concurrent writers queue on the busy timeout instead of failing
when a read lock is upgraded.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ..errors import StorageUnavailable
from .group_commit import GroupCommitter
from .wal_sync import WalSync

T = TypeVar("T")


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: SQLite syncs the WAL only at checkpoints (crash-safe, not
        # power-loss-safe). For `full` durability Database flushes the WAL itself after
        # each write commit, outside the write lock (pacs.index.wal_sync).
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class _WriterGate:
    """Queues SQLite writers of this process (a lock) and of other processes sharing the
    file (``flock`` on a side file) before ``BEGIN IMMEDIATE``.

    Why: a writer that finds the database locked waits in SQLite's busy handler, which
    sleeps 1, 2, 5, 10, ... ms between retries, so concurrent writers idle while the
    lock is free. Kernel locks wake the next writer the moment the lock is released:
    4 associations ingesting into one process went from the rate of one to ... (see
    docs/performance.md).
    """

    def __init__(self, lock_path: str | None) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644) if lock_path else None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
            try:
                if self._depth == 1 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    if self._depth == 1 and self._fd is not None:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                self._depth -= 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Database:
    """The index database: an engine plus read and write transaction helpers."""

    def __init__(self, url: str, *, pool_size: int = 20, sqlite_synchronous: str = "full") -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._gate: _WriterGate | None = None
        self._group: GroupCommitter | None = None
        self._wal: WalSync | None = None
        if self.is_sqlite:
            path = url.split("///", 1)[-1].split("?", 1)[0]
            on_disk = bool(path) and path != ":memory:"
            if on_disk:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._gate = _WriterGate(path + "-writer.lock" if on_disk else None)
            if on_disk and sqlite_synchronous == "full":
                self._wal = WalSync(path)
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size * 2)
            _sqlite_pragmas(self.engine)
            self._shared: Connection | None = None
            self._group = GroupCommitter(self._write_shared, durable=self._leader_durable)
        else:
            self.engine = create_engine(
                url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True
            )

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction, committed on exit, rolled back on error."""
        return self._transaction(self.engine.connect)

    def _write_shared(self) -> AbstractContextManager[Connection]:
        """The group committer's write transaction, on one connection kept open for it.

        Only the batch's leader runs one at a time, so one connection serves every
        batch; checking a connection out of the pool and back in (with its reset) per
        batch cost ~8 % of the interpreter's time per stored tiny instance (py-spy).
        The WAL flush is left to each unit of the batch (:meth:`_leader_durable`), so the
        next batch can begin meanwhile.
        """
        return self._transaction(self._kept_connection, durable=False)

    def _leader_durable(self) -> Callable[[], None] | None:
        """What a unit of the batch the leader has just committed (:meth:`_write_shared`)
        calls to wait until that commit is on disk: the ticket is counted now, after the
        commit returned, so any flush that starts later covers it."""
        if self._wal is None:
            return None
        return partial(self._wal.wait_durable, self._wal.committed())

    def _kept_connection(self) -> AbstractContextManager[Connection]:
        conn = self._shared
        if conn is None or conn.closed or conn.invalidated:
            conn = self._shared = self.engine.connect()
        return nullcontext(conn)  # stays open after the transaction

    @contextmanager
    def _transaction(self, connect: Callable[[], AbstractContextManager[Connection]],
                     durable: bool = True) -> Iterator[Connection]:
        """A write transaction on the connection ``connect()`` gives once the writer gate
        (SQLite) is held; OperationalError (connecting included) becomes StorageUnavailable.
        With ``full`` durability on SQLite the WAL is flushed once the gate is released
        (:mod:`pacs.index.wal_sync`), so the commit is durable when this returns, unless
        ``durable`` is False (the group committer's units wait themselves)."""
        gate = self._gate.held() if self._gate is not None else nullcontext()
        try:
            with gate, connect() as conn:
                conn.execution_options(immediate=True)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise StorageUnavailable("index database unavailable") from exc
        if durable:
            self.sync_committed()

    def sync_committed(self) -> None:
        """Make every commit so far durable (SQLite with ``full`` durability: a WAL flush;
        otherwise nothing to do). Write transactions do it themselves; call it after
        writes made outside them (migrations)."""
        if self._wal is not None:
            self._wal.sync_after_commit()

    def write_grouped(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a write transaction that concurrent callers of this method
        may share (SQLite: one commit, one WAL fsync for all; see
        :mod:`pacs.index.group_commit`). ``work`` runs in a SAVEPOINT: its exception
        undoes its own writes only and is raised here. PostgreSQL groups commits itself,
        so there each call is its own transaction."""
        if self._group is not None:
            return self._group.run(work)
        with self.write() as conn:
            return work(conn)

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
        if self.is_sqlite and self._shared is not None:
            self._shared.close()
            self._shared = None
        self.engine.dispose()
        if self._gate is not None:
            self._gate.close()
