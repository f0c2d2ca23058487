"""Durable SQLite commits without holding the write lock through the disk flush.

SQLite's ``synchronous=FULL`` fsyncs the WAL inside COMMIT, while the database's single
write lock is held (and with it our writer gate, :class:`pacs.index.db._WriterGate`):
every other writer, of this process and of the other workers, waits for that flush too,
so no commit can overlap one. With four associations over two workers this lock was held
~1.3 ms per instance, ~80 % of the run (session 9, docs/performance.md).

Instead the connections run ``synchronous=NORMAL`` (SQLite syncs the WAL only at
checkpoints) and a committed write transaction is made durable here, after the lock is
released and before anything is acknowledged, by ``fdatasync`` of the WAL file. The
guarantee is FULL's: WAL frames are appended in commit order and one ``fdatasync``
flushes every frame written before it, so a transaction whose sync has returned survives
a power loss, with every transaction committed before it (recovery replays the WAL up
to its first missing frame). A checkpoint may move frames into the database file first;
with NORMAL it syncs the WAL before copying and the database file after
(https://sqlite.org/pragma.html#pragma_synchronous, https://sqlite.org/wal.html), so
they stay durable there.

Concurrent committers of one process share flushes: a sync that started after a commit
returned covers it, so a caller waits for a sync in progress only if it started after
its commit, and otherwise starts the next one covering every commit so far (the group
commit idea applied to the flush). Written by hand: SQLite has no API for it.
"""

from __future__ import annotations

import os
import threading

from ..errors import StorageUnavailable


class WalSync:
    """Flushes the WAL of the SQLite database at ``database_path`` on behalf of commits."""

    def __init__(self, database_path: str) -> None:
        self.path = database_path + "-wal"
        self._cond = threading.Condition()
        self._commits = 0  # commits counted so far: a commit's ticket
        self._synced = 0  # every ticket up to this one is durable
        self._syncing = False

    def committed(self) -> int:
        """Count a commit that has just returned; its ticket for :meth:`wait_durable`."""
        with self._cond:
            self._commits += 1
            return self._commits

    def wait_durable(self, ticket: int) -> None:
        """Return once a WAL flush that started after commit ``ticket`` has finished;
        :class:`StorageUnavailable` when the flush failed (the commit may not be on disk)."""
        with self._cond:
            while self._synced < ticket:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing, target = True, self._commits
                try:
                    self._flush_unlocked()
                    self._synced = target  # one flush at a time: targets only grow
                finally:
                    self._syncing = False
                    self._cond.notify_all()

    def sync_after_commit(self) -> None:
        """:meth:`committed` then :meth:`wait_durable`, for a commit that just returned."""
        self.wait_durable(self.committed())

    def _flush_unlocked(self) -> None:
        """:meth:`_flush` with the condition's lock released meanwhile (held on entry and on return)."""
        self._cond.release()
        try:
            self._flush()
        except OSError as exc:
            raise StorageUnavailable(f"index database cannot be flushed to disk: {exc.strerror or exc}") from exc
        finally:
            self._cond.acquire()

    def _flush(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed as the last connection closed: checkpointed and synced
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
