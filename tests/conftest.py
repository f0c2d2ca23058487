"""Shared fixtures: the index on SQLite or PostgreSQL, archives, running servers.

The database comes from ``PACS_TEST_DB``: ``sqlite`` (default) or ``postgresql`` (the
server named by ``PACS_TEST_POSTGRES_URL``, default ``postgresql://127.0.0.1:5432/test``);
each PostgreSQL test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from pacs.archive import Archive
from pacs.settings import Settings, load_settings

from .pynetdicom_guard import install as guard_pynetdicom_associations
from .servers import ThreadedServer

guard_pynetdicom_associations()  # every test client: see tests/pynetdicom_guard.py

TEST_DB = os.environ.get("PACS_TEST_DB", "sqlite")
POSTGRES_URL = os.environ.get("PACS_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")


def _pg_admin_url() -> str:
    return "postgresql+psycopg://" + POSTGRES_URL.split("://", 1)[1]


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL of the test PostgreSQL database confined to a new schema, dropped on exit."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{_pg_admin_url()}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty index database URL for one test."""
    if TEST_DB == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An index database URL for a module's one long-lived server (SQLite file or a
    PostgreSQL schema, dropped after the module)."""
    if TEST_DB == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('module-db') / 'index.sqlite'}"
        return
    with postgres_schema() as url:
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
