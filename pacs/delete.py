"""Delete a study, a series or an instance: index rows, aggregates, events, objects.

One transaction removes the instance rows, drops series / study / patient rows that
became empty, recomputes the study's aggregates, appends ``InstanceDeleted`` /
``SeriesDeleted`` / ``StudyDeleted`` events and records each object to remove as a
pending write. The objects are deleted after the commit; one that cannot be deleted
then stays recorded and the orphan sweep removes it later. The index never points at a
deleted object.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, delete, insert, select

from .errors import NotFound
from .events import EventType, append_event
from .index.models import Instance, PendingWrite, Series, Study
from .index.writer import delete_empty, recompute_study

if TYPE_CHECKING:
    from .archive import Archive

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeleteResult:
    instances: int
    series_removed: list[str]
    study_removed: bool


def _targets(conn: Connection, study_pk: int, series_uid: str | None, sop_uid: str | None) -> list:
    stmt = (
        select(Instance.id, Instance.blob_key, Instance.sop_instance_uid, Series.series_uid)
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.study_fk == study_pk)
    )
    if series_uid is not None:
        stmt = stmt.where(Series.series_uid == series_uid)
    if sop_uid is not None:
        stmt = stmt.where(Instance.sop_instance_uid == sop_uid)
    return conn.execute(stmt).all()


def _series_uids(conn: Connection, study_pk: int) -> set[str]:
    return set(conn.execute(select(Series.series_uid).where(Series.study_fk == study_pk)).scalars())


def _emit(conn: Connection, study_uid: str, rows: list, gone_series: list[str], study_gone: bool,
          sop_uid: str | None) -> None:
    if sop_uid is not None:
        append_event(conn, EventType.INSTANCE_DELETED, study_uid=study_uid,
                     series_uid=rows[0].series_uid, sop_instance_uid=sop_uid)
    for series in gone_series:
        append_event(conn, EventType.SERIES_DELETED, study_uid=study_uid, series_uid=series)
    if study_gone:
        append_event(conn, EventType.STUDY_DELETED, study_uid=study_uid, payload={"instances": len(rows)})


def delete_objects(
    archive: Archive, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> DeleteResult:
    """Delete the study (or one series of it, or one instance). Raises NotFound."""
    now = time.time()
    with archive.db.write() as conn:
        lock = select(Study.id).where(Study.study_uid == study_uid)
        if conn.dialect.name == "postgresql":
            lock = lock.with_for_update()
        study_pk = conn.execute(lock).scalar()
        rows = _targets(conn, study_pk, series_uid, sop_uid) if study_pk is not None else []
        if not rows:
            raise NotFound("no such study, series or instance")
        before = _series_uids(conn, study_pk)
        conn.execute(delete(Instance).where(Instance.id.in_([r.id for r in rows])))
        study_gone = delete_empty(conn, study_pk)
        if not study_gone:
            recompute_study(conn, study_pk)
        gone_series = sorted(before - (set() if study_gone else _series_uids(conn, study_pk)))
        _emit(conn, study_uid, rows, gone_series, study_gone, sop_uid)
        pending = [
            conn.execute(insert(PendingWrite).values(blob_key=r.blob_key, created_at=now)
                         .returning(PendingWrite.id)).scalar_one()
            for r in rows
        ]
    _remove_objects(archive, [r.blob_key for r in rows], pending)
    return DeleteResult(len(rows), gone_series, study_gone)


def _remove_objects(archive: Archive, keys: list[str], pending: list[int]) -> None:
    done = []
    for key, pending_id in zip(keys, pending):
        try:
            archive.store.delete(key)
            done.append(pending_id)
        except Exception:  # left recorded: the orphan sweep retries
            log.warning("could not delete an object; the orphan sweep will retry", exc_info=True)
    if done:
        with archive.db.write() as conn:
            conn.execute(delete(PendingWrite).where(PendingWrite.id.in_(done)))
