"""The WAL flush after commit (pacs/index/wal_sync.py) on a real SQLite file: a write
returns only after a flush that started after its commit; concurrent committers share
flushes; a failed flush is a StorageUnavailable, never a silent success; `normal`
durability flushes nothing itself."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from pacs.errors import StorageUnavailable
from pacs.index.db import Database
from pacs.index.wal_sync import WalSync


class RecordingSync(WalSync):
    """A WalSync that records, for each real flush, how many commits it covers; while
    ``hold`` is clear a flush waits, so that others queue behind it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.flushes: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.fail: OSError | None = None

    def _flush(self) -> None:
        self.flushes.append(self._commits)
        self.hold.wait(10)
        if self.fail is not None:
            raise self.fail
        super()._flush()


def _database(tmp_path: Path, synchronous: str = "full") -> tuple[Database, RecordingSync | None]:
    db = Database(f"sqlite:///{tmp_path / 'w.sqlite'}", sqlite_synchronous=synchronous)
    with db.write() as conn:
        conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    if db._wal is None:
        return db, None
    db._wal = RecordingSync(db._wal.path[:-len("-wal")])
    return db, db._wal


def _count(db: Database) -> int:
    with db.read() as conn:
        return conn.execute(text("SELECT count(*) FROM t")).scalar_one()


def _insert(k: int):  # type: ignore[no-untyped-def]
    def work(conn: Connection) -> int:
        conn.execute(text("INSERT INTO t (k) VALUES (:k)"), {"k": k})
        return k
    return work


def test_connections_leave_the_flush_to_us(tmp_path: Path) -> None:
    db, sync = _database(tmp_path)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert sync is not None and sync.path == str(tmp_path / "w.sqlite-wal")
    db.dispose()


def test_each_write_flushes_after_its_commit(tmp_path: Path) -> None:
    db, sync = _database(tmp_path)
    assert sync is not None
    with db.write() as conn:
        conn.execute(text("INSERT INTO t (k) VALUES (1)"))
        assert sync.flushes == []  # nothing flushed before the commit
    assert sync.flushes == [1]
    assert db.write_grouped(_insert(2)) == 2
    assert sync.flushes == [1, 2]
    db.dispose()


def test_a_flush_in_progress_does_not_cover_a_later_commit(tmp_path: Path) -> None:
    sync = WalSync(str(tmp_path / "none.sqlite"))  # no WAL file: the flush is a no-op
    flushes: list[int] = []
    first_flushing, release = threading.Event(), threading.Event()

    def flush() -> None:
        flushes.append(sync._commits)
        if len(flushes) == 1:
            first_flushing.set()
            release.wait(10)

    sync._flush = flush  # type: ignore[method-assign]
    first = threading.Thread(target=sync.sync_after_commit)
    first.start()
    assert first_flushing.wait(10)
    later: list[bool] = []
    second = threading.Thread(target=lambda: later.append(sync.sync_after_commit() is None))
    second.start()
    while sync._commits < 2:  # the second commit is counted while the first flush runs
        threading.Event().wait(0.001)
    assert later == []  # it waits: that flush started before its commit
    release.set()
    first.join(10)
    second.join(10)
    assert later == [True] and flushes == [1, 2]


def test_concurrent_committers_share_flushes(tmp_path: Path) -> None:
    db, sync = _database(tmp_path)
    assert sync is not None
    sync.hold.clear()  # the first flush waits until the others have committed
    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(db.write_grouped(_insert(0))))
    first.start()
    while not sync.flushes:
        threading.Event().wait(0.001)
    threads = [threading.Thread(target=lambda i=i: results.append(db.write_grouped(_insert(i))))
               for i in range(1, 9)]
    for t in threads:
        t.start()
    while _count(db) < 9:  # they commit while the flush runs: it does not hold the write lock
        threading.Event().wait(0.001)
    assert results == []  # but none returns before a flush that started after its commit
    sync.hold.set()
    for t in [first, *threads]:
        t.join(30)
    assert sorted(results) == list(range(9))
    assert sync.flushes == [1, sync._commits]  # one flush for the first, one more for all the others
    db.dispose()


def test_failed_flush_is_storage_unavailable(tmp_path: Path) -> None:
    db, sync = _database(tmp_path)
    assert sync is not None
    sync.fail = OSError(5, "Input/output error")
    with pytest.raises(StorageUnavailable, match="cannot be flushed to disk: Input/output error"):
        db.write_grouped(_insert(1))
    with pytest.raises(StorageUnavailable):
        with db.write() as conn:
            conn.execute(text("INSERT INTO t (k) VALUES (2)"))
    sync.fail = None
    assert db.write_grouped(_insert(3)) == 3  # the next flush covers every earlier commit
    assert sync._synced == sync._commits == 3
    db.dispose()


def test_normal_durability_flushes_nothing_itself(tmp_path: Path) -> None:
    db, sync = _database(tmp_path, "normal")
    assert sync is None and db._wal is None
    assert db.write_grouped(_insert(1)) == 1
    db.dispose()
