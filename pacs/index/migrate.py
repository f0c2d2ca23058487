"""``pacs db upgrade``: bring the index schema to the newest Alembic revision.

Every ``pacs serve`` migrates at start. On PostgreSQL several nodes may start together on
one database: the migration and the seeding of the singleton rows run in one transaction
that first takes a transaction-level advisory lock, so one node migrates while the others
wait, then find the schema at head and the rows present."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, insert, select, text, update

from .db import Database
from .models import EventCounter, SchemaMeta
from .names import PN_NORMALISATION_VERSION
from .summary import SUMMARY_VERSION, backfill

MIGRATIONS = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock key of the migration (any constant; "pacsmigr" in ASCII).
MIGRATION_LOCK = 0x706163736D696772


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(db: Database) -> None:
    """Apply every pending migration, then seed the singleton rows, in one write
    transaction of the index's own kind: on SQLite it queues with the other writers
    (``BEGIN IMMEDIATE``) rather than reading first and failing with "database is locked"
    when a running server commits before its first write; the WAL is flushed after."""
    cfg = alembic_config(db.url)
    with db.write() as conn:
        if conn.dialect.name == "postgresql":  # nodes starting together: one at a time
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        _seed(conn)


def _seed(conn: Connection) -> None:
    """The singleton rows, in the migration's transaction."""
    if conn.execute(select(EventCounter.id)).first() is None:
        conn.execute(insert(EventCounter).values(id=1, last_id=0))
    _check_normalisation(conn)
    _rebuild_summaries(conn)


def _rebuild_summaries(conn: Connection) -> None:
    """Rebuild every study summary when they were built from another attribute list."""
    version = conn.execute(select(SchemaMeta.value).where(SchemaMeta.key == "study_summary")).scalar()
    if version == SUMMARY_VERSION:
        return
    backfill(conn)
    if version is None:
        conn.execute(insert(SchemaMeta).values(key="study_summary", value=SUMMARY_VERSION))
    else:
        conn.execute(update(SchemaMeta).where(SchemaMeta.key == "study_summary").values(value=SUMMARY_VERSION))


def _check_normalisation(conn: Connection) -> None:
    """Record the person-name normaliser version, or refuse an index built with another."""
    version = conn.execute(
        select(SchemaMeta.value).where(SchemaMeta.key == "pn_normalisation")
    ).scalar()
    if version is None:
        conn.execute(
            insert(SchemaMeta).values(key="pn_normalisation", value=PN_NORMALISATION_VERSION)
        )
    elif version != PN_NORMALISATION_VERSION:
        raise RuntimeError(
            f"index uses person-name normalisation v{version}, this release v"
            f"{PN_NORMALISATION_VERSION}: run the re-index migration"
        )
