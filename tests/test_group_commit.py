"""Group commit of the embedded index (pacs/index/group_commit.py) on a real SQLite file:
concurrent units share transactions, a failing unit undoes only its own writes, a failed
commit fails every unit of its batch, and nothing is lost or run twice."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from pacs.index.db import Database
from pacs.index.group_commit import GroupCommitter


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(f"sqlite:///{tmp_path / 'g.sqlite'}")
    with database.write() as conn:
        conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    yield database
    database.dispose()


def _rows(db: Database) -> dict[int, str]:
    with db.read() as conn:
        return {k: v for k, v in conn.execute(text("SELECT k, v FROM t"))}


def _insert(k: int, v: str | None):  # type: ignore[no-untyped-def]
    def work(conn: Connection) -> int:
        conn.execute(text("INSERT INTO t (k, v) VALUES (:k, :v)"), {"k": k, "v": v})
        return k
    return work


def test_concurrent_units_all_commit_and_batches_form(db: Database) -> None:
    commits: list[int] = []
    release = threading.Event()

    def first(conn: Connection) -> int:  # holds the first transaction until the others queue
        release.wait(10)
        conn.execute(text("INSERT INTO t (k, v) VALUES (0, 'zero')"))
        return 0

    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda: results.__setitem__(0, db.write_grouped(first)))]
    threads += [threading.Thread(target=lambda i=i: results.__setitem__(i, db.write_grouped(_insert(i, f"v{i}"))))
                for i in range(1, 21)]
    original_commit = GroupCommitter._commit

    def counting(self, batch):  # type: ignore[no-untyped-def]
        commits.append(len(batch))
        original_commit(self, batch)

    GroupCommitter._commit = counting  # type: ignore[method-assign]
    try:
        threads[0].start()
        for t in threads[1:]:
            t.start()
        while len(db._group._queue) < 20:  # type: ignore[union-attr]  # all queued behind the first
            threading.Event().wait(0.001)
        release.set()
        for t in threads:
            t.join(30)
    finally:
        GroupCommitter._commit = original_commit  # type: ignore[method-assign]
    assert results == {i: i for i in range(21)}
    assert _rows(db) == {0: "zero", **{i: f"v{i}" for i in range(1, 21)}}
    assert commits == [1, 20]  # the 20 that queued behind the first committed together


def test_failing_unit_rolls_back_alone(db: Database) -> None:
    committer = GroupCommitter(db.write)
    outcomes: list[object] = []

    def bad(conn: Connection) -> None:
        conn.execute(text("INSERT INTO t (k, v) VALUES (100, 'partial')"))
        conn.execute(text("INSERT INTO t (k, v) VALUES (101, NULL)"))  # NOT NULL fails

    units = [_insert(1, "a"), bad, _insert(2, "b")]
    from pacs.index.group_commit import _Unit

    batch = [_Unit(w) for w in units]
    committer._commit(batch)
    outcomes = [u.error for u in batch]
    assert outcomes[0] is None and outcomes[2] is None
    assert "NOT NULL" in str(outcomes[1])
    assert _rows(db) == {1: "a", 2: "b"}  # 100 was undone with its unit


def test_failed_commit_fails_the_whole_batch(db: Database) -> None:
    from pacs.index.group_commit import _Unit

    class Boom(Exception):
        pass

    def begin():  # type: ignore[no-untyped-def]
        from contextlib import contextmanager

        @contextmanager
        def tx():  # type: ignore[no-untyped-def]
            with db.engine.connect() as conn:
                conn.begin()
                yield conn
                conn.rollback()
                raise Boom("commit failed")
        return tx()

    batch = [_Unit(_insert(1, "a")), _Unit(_insert(2, "b"))]
    GroupCommitter(begin)._commit(batch)
    assert all(isinstance(u.error, Boom) for u in batch)
    assert _rows(db) == {}


def test_many_threads_every_unit_exactly_once(db: Database) -> None:
    errors: list[BaseException] = []

    def worker(base: int) -> None:
        try:
            for i in range(25):
                assert db.write_grouped(_insert(base + i, "x")) == base + i
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 1000,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(_rows(db)) == sorted(n * 1000 + i for n in range(8) for i in range(25))
