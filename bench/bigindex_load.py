"""Bulk loader of the big-index benchmark: synthetic patients, studies, series and
instances (bench/bigindex_data.py) into a migrated index, on PostgreSQL or SQLite.

PostgreSQL: ``COPY ... FROM STDIN`` through psycopg's ``cursor.copy``; SQLite: SQLAlchemy
Core ``insert()`` executemany with ``synchronous=OFF`` on the loading connection only.
One transaction per batch of studies: an interrupted load is resumed (``resume=True``)
from the last whole batch, since every batch is regenerated from its own seed.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, text

from bench.bigindex_data import INSTANCES_PER_STUDY, Batch, make_batch, make_templates, patient_row
from pacs.index.db import Database
from pacs.index.migrate import upgrade
from pacs.index.models import Instance, Patient, Series, Study

TABLES = (Patient, Study, Series, Instance)


@dataclass(frozen=True)
class LoadPlan:
    """What to load: ``studies`` studies (10 instances each) of ``patients`` patients."""

    url: str
    studies: int
    patients: int
    seed: int = 1
    batch: int = 2000


def sqlite_path(url: str) -> str:
    return url.split("///", 1)[-1].split("?", 1)[0]


def reset(url: str) -> None:
    """Empty the index: SQLite's file is removed, PostgreSQL's tables truncated."""
    if url.startswith("sqlite"):
        for suffix in ("", "-wal", "-shm", "-writer.lock"):
            Path(sqlite_path(url) + suffix).unlink(missing_ok=True)
        return
    engine = create_engine(url)
    with engine.begin() as conn:
        names = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars()
        if "patient" in set(names):
            conn.execute(text("TRUNCATE instance, series, study, patient, event RESTART IDENTITY CASCADE"))
    engine.dispose()


def migrate(url: str) -> None:
    """``pacs db upgrade`` on the index (creates the schema, applies every migration)."""
    db = Database(url, pool_size=2)
    try:
        upgrade(db)
    finally:
        db.dispose()


def _loading_engine(url: str) -> Engine:
    """An engine for the load only: on SQLite without fsyncs and with a large page cache."""
    if not url.startswith("sqlite"):
        return create_engine(url)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=OFF", "cache_size=-262144", "foreign_keys=OFF"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    return engine


def _copy(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    """``rows`` into ``table`` with PostgreSQL's COPY (psycopg ``cursor.copy``)."""
    columns = list(rows[0])
    quoted = ", ".join(f'"{c}"' for c in columns)
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f'COPY "{table.__tablename__}" ({quoted}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def _writer(conn: Connection) -> Callable[[Any, list[dict[str, Any]]], None]:
    if conn.dialect.name == "postgresql":
        return lambda table, rows: _copy(conn, table, rows) if rows else None
    return lambda table, rows: conn.execute(insert(table), rows) if rows else None


def _write_batch(engine: Engine, batch: Batch) -> None:
    with engine.begin() as conn:
        write = _writer(conn)
        write(Study, batch.studies)
        write(Series, batch.series)
        write(Instance, batch.instances)


def _load_patients(engine: Engine, plan: LoadPlan, template: Any) -> None:
    with engine.begin() as conn:
        if conn.execute(select(func.count(Patient.id))).scalar() == plan.patients:
            return
        rows = [patient_row(k, plan.seed, template) for k in range(plan.patients)]
        write = _writer(conn)
        for start in range(0, len(rows), 10_000):
            write(Patient, rows[start:start + 10_000])


def _done_studies(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(Study.id), 0))).scalar() or 0)


def _finish(engine: Engine) -> None:
    """PostgreSQL: sequences past the loaded ids, VACUUM ANALYZE (as autovacuum would)."""
    if engine.dialect.name != "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    with engine.begin() as conn:
        for table in TABLES:
            name = table.__tablename__
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                              f"(SELECT coalesce(max(id), 1) FROM {name}))"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE patient, study, series, instance")


def _progress(progress: Callable[[str], None], loaded: int, plan: LoadPlan, started: float) -> None:
    if loaded % (plan.batch * 10) == 0 or loaded == plan.studies:
        progress(f"{loaded} studies ({loaded * INSTANCES_PER_STUDY} instances) "
                 f"in {time.perf_counter() - started:.0f} s")


def load(plan: LoadPlan, *, resume: bool = False, progress: Callable[[str], None] = print) -> dict[str, float]:
    """Load ``plan`` into a migrated index; refuses a non-empty one unless ``resume``.
    Returns seconds per phase."""
    started = time.perf_counter()
    migrate(plan.url)
    engine = _loading_engine(plan.url)
    done = _done_studies(engine)
    if done and not resume:
        raise SystemExit(f"the index already holds {done} studies: use --reset (or --resume)")
    if done % plan.batch:
        raise SystemExit(f"{done} studies is not a whole number of batches of {plan.batch}")
    templates = make_templates()
    _load_patients(engine, plan, templates["CT"])
    times = {"migrate_patients_s": time.perf_counter() - started}
    write = 0.0
    with ThreadPoolExecutor(1) as generator:  # the next batch is made while this one is written
        def make(first: int) -> Future:
            return generator.submit(make_batch, first, min(plan.batch, plan.studies - first),
                                    first // plan.batch, (plan.studies, plan.patients, plan.seed), templates)

        firsts = list(range(done, plan.studies, plan.batch))
        pending = make(firsts[0]) if firsts else None
        for index, first in enumerate(firsts):
            batch = pending.result()
            pending = make(firsts[index + 1]) if index + 1 < len(firsts) else None
            t1 = time.perf_counter()
            _write_batch(engine, batch)
            write += time.perf_counter() - t1
            _progress(progress, first + len(batch.studies), plan, started)
    t2 = time.perf_counter()
    _finish(engine)
    engine.dispose()
    times.update(write_s=write, finish_s=time.perf_counter() - t2,
                 total_s=time.perf_counter() - started)
    return times


def database_size(url: str) -> int:
    """Bytes the index takes on disk."""
    if url.startswith("sqlite"):
        return sum(os.path.getsize(p) for p in (sqlite_path(url), sqlite_path(url) + "-wal") if os.path.exists(p))
    engine = create_engine(url)
    with engine.connect() as conn:
        size = int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar() or 0)
    engine.dispose()
    return size
