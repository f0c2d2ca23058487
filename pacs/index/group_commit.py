"""Group commit for the embedded (SQLite) index: concurrent writers share one transaction.

With ``synchronous=FULL`` every SQLite commit waits for an fsync of the WAL, and SQLite
admits one writer at a time, so N associations storing at once pay N fsyncs in a row.
Here the first writer to arrive becomes the *leader*: it takes every unit of work queued
so far, runs each inside its own SAVEPOINT of one transaction, and commits once; writers
that arrived meanwhile wait and form the next batch. A unit that fails rolls back to its
savepoint only and gets its own exception; the others commit. A batch of one runs without
a savepoint (its failure rolls back the transaction, which holds nothing else). A failed
commit fails the whole batch. Nothing is acknowledged before the commit that holds it returns.

This is what PostgreSQL does for itself (``commit_delay``, WAL group flush), so
:meth:`pacs.index.db.Database.write_grouped` uses it for SQLite only. Hand-written
because neither SQLite nor SQLAlchemy offers it.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from sqlalchemy import Connection

T = TypeVar("T")
#: Units per transaction at most: bounds how long the index stays locked by one batch.
MAX_BATCH = 64


@dataclass(eq=False)
class _Unit(Generic[T]):
    work: Callable[[Connection], T]
    done: bool = False
    durable: Callable[[], None] | None = None
    value: Any = None
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        if self.durable is not None:
            self.durable()
        return self.value


class GroupCommitter:
    """Runs units of work in shared write transactions (see module doc).

    ``begin`` opens one write transaction (a context manager yielding a connection that
    commits on a clean exit), e.g. :meth:`pacs.index.db.Database.write`. ``durable``,
    when given, is asked by the leader right after a commit for what each unit of the
    batch then calls, outside every lock, before its result is returned: the wait until
    the commit is on disk (:mod:`pacs.index.wal_sync`), so the next batch need not wait
    for that flush."""

    def __init__(self, begin: Callable[[], AbstractContextManager[Connection]],
                 durable: Callable[[], Callable[[], None] | None] | None = None) -> None:
        self._begin = begin
        self._durable = durable
        self._lock = threading.Lock()
        self._queue: list[_Unit[Any]] = []
        self._leading = False

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(conn)`` in a transaction, possibly shared; its result once committed."""
        unit: _Unit[T] = _Unit(work)
        with self._lock:
            self._queue.append(unit)
        while True:
            with self._lock:  # done, lead or wait: decided and the event cleared atomically
                done = unit.done
                lead = not done and not self._leading
                if lead:
                    self._leading = True
                elif not done:
                    unit.finished.clear()
            if done:
                return unit.outcome()  # outside the lock: it may wait for the disk
            if lead:
                self._lead_once()
            else:
                unit.finished.wait()

    def _lead_once(self) -> None:
        """Commit the units queued so far (up to MAX_BATCH), wake them, and wake the next
        waiting unit to lead the following batch."""
        with self._lock:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        try:
            self._commit(batch)
            if self._durable is not None:
                wait = self._durable()
                for unit in batch:
                    unit.durable = wait
        finally:
            with self._lock:
                for unit in batch:
                    unit.done = True
                    unit.finished.set()
                self._leading = False
                if self._queue:
                    self._queue[0].finished.set()

    def _commit(self, batch: list[_Unit[Any]]) -> None:
        if len(batch) == 1:  # alone in its transaction: no savepoint needed (two statements)
            self._commit_alone(batch[0])
            return
        try:
            with self._begin() as conn:
                for unit in batch:
                    savepoint = conn.begin_nested()
                    try:
                        unit.value = unit.work(conn)
                    except BaseException as exc:  # the unit's own failure: it alone rolls back
                        savepoint.rollback()
                        unit.error = exc
                    else:
                        savepoint.commit()
        except BaseException as exc:
            for unit in batch:
                if unit.error is None:
                    unit.error, unit.value = exc, None

    def _commit_alone(self, unit: _Unit[Any]) -> None:
        try:
            with self._begin() as conn:
                unit.value = unit.work(conn)
        except BaseException as exc:  # its own failure or the commit's: nothing was written
            unit.error, unit.value = exc, None
