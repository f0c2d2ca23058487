"""Shared fixtures: the index on SQLite or PostgreSQL, archives, running servers.

The database comes from ``PACS_TEST_DB``: ``sqlite`` (default) or ``postgresql`` (the
server named by ``PACS_TEST_POSTGRES_URL``, default ``postgresql://127.0.0.1:5432/test``);
each PostgreSQL test gets a database of its own, dropped afterwards. Every new index is
a copy of one migrated once per session (PostgreSQL ``CREATE DATABASE ... TEMPLATE``, a
SQLite file copy): running the migrations took 0.47 s per PostgreSQL test and 0.14 s per
SQLite one, a copy 0.05 s and 1 ms. The migrations still run for the template, and every
archive still runs ``upgrade`` on start (then a no-op).
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from pacs.archive import Archive
from pacs.index import migrate
from pacs.index.db import Database
from pacs.settings import Settings, load_settings

from .pynetdicom_guard import install as guard_pynetdicom_associations
from .servers import ThreadedServer

guard_pynetdicom_associations()  # every test client: see tests/pynetdicom_guard.py

TEST_DB = os.environ.get("PACS_TEST_DB", "sqlite")
POSTGRES_URL = os.environ.get("PACS_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def _pg_admin_url() -> str:
    return "postgresql+psycopg://" + POSTGRES_URL.split("://", 1)[1]


def _pg_url(database: str) -> str:
    return make_url(_pg_admin_url()).set(database=database).render_as_string(hide_password=False)


@functools.cache
def _admin() -> Engine:
    return create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)


@functools.cache
def _pg_template() -> str:
    """A database migrated once for the session: the template of every test's database.
    Nothing may stay connected to it (CREATE DATABASE ... TEMPLATE needs it idle)."""
    name = f"pacs_template_{uuid.uuid4().hex[:12]}"
    with _admin().connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(_pg_url(name), pool_size=1)
    try:
        migrate.upgrade(db)
    finally:
        db.dispose()
    return name


@functools.cache
def _sqlite_template(folder: Path) -> Path:
    """A SQLite index migrated once for the session, checkpointed into its one file."""
    path = folder / "template.sqlite"
    db = Database(f"sqlite:///{path}")
    try:
        migrate.upgrade(db)
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.dispose()
    return path


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _pg_template.cache_info().currsize:  # made during this session: drop it
        with _admin().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{_pg_template()}" WITH (FORCE)'))


@contextmanager
def postgres_database() -> Iterator[str]:
    """A URL of a new PostgreSQL database, a copy of the migrated template, dropped on exit."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with _admin().connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{_pg_template()}"'))
    try:
        yield _pg_url(name)
    finally:
        with _admin().connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _sqlite_copy(folder: Path, tmp: pytest.TempPathFactory) -> str:
    path = folder / "index.sqlite"
    shutil.copyfile(_sqlite_template(tmp.getbasetemp()), path)
    return f"sqlite:///{path}"


@pytest.fixture
def database_url(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh index database URL for one test (migrated, empty)."""
    if TEST_DB == "sqlite":
        yield _sqlite_copy(tmp_path, tmp_path_factory)
        return
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An index database URL for a module's one long-lived server (SQLite file or a
    PostgreSQL database, dropped after the module)."""
    if TEST_DB == "sqlite":
        yield _sqlite_copy(tmp_path_factory.mktemp("module-db"), tmp_path_factory)
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(
        env={},
        data_dir=tmp_path / "data",
        database_url=database_url,
        dimse_port=0,
        http_port=0,
        stable_seconds=60,
        shutdown_timeout=5,
    )


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    arc = Archive(settings)
    yield arc
    arc.close()


@pytest.fixture
def server(settings: Settings) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(settings).start()
    yield srv
    srv.stop()
