"""The event log (outbox) and the stability sweep.

Events are appended inside the transaction that makes the change. Each append first
increments the single ``event_counter`` row; that row lock makes concurrent writers
commit their events in id order, so a reader that has seen id N never later finds a
new event with an id below N (a gap-free, ordered change feed on SQLite and PostgreSQL).

``SeriesStable`` / ``StudyStable`` follow the quiet-period rule of Orthanc's StableAge:
no new instance for ``stable_seconds``. The sweep claims each series or study with a
compare-and-set ``UPDATE ... WHERE stable = false``, so several processes sharing one
database emit each event once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable

from sqlalchemy import Connection, func, insert, select, update

from .index import direct
from .index.db import Database
from .index.models import Event, EventCounter, Series, Study


class EventType(str, Enum):
    INSTANCE_STORED = "InstanceStored"
    SERIES_STABLE = "SeriesStable"
    STUDY_STABLE = "StudyStable"
    STUDY_DELETED = "StudyDeleted"
    SERIES_DELETED = "SeriesDeleted"
    INSTANCE_DELETED = "InstanceDeleted"
    # Worklist (worklist/): scheduled procedure steps and MPPS (PS3.4 F.7).
    PROCEDURE_SCHEDULED = "ProcedureScheduled"
    PROCEDURE_UPDATED = "ProcedureUpdated"
    PROCEDURE_CANCELLED = "ProcedureCancelled"
    MPPS_IN_PROGRESS = "MppsInProgress"
    MPPS_COMPLETED = "MppsCompleted"
    MPPS_DISCONTINUED = "MppsDiscontinued"
    # Reports (worklist/reports.py): a report version was signed (payload: version, status).
    REPORT_SIGNED = "ReportSigned"


@dataclass(frozen=True)
class ChangeEvent:
    id: int
    type: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    payload: dict[str, Any]
    created_at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "payload": self.payload,
            "created_at": self.created_at,
        }


_NEXT_EVENT_ID = (
    update(EventCounter).where(EventCounter.id == 1)
    .values(last_id=EventCounter.last_id + 1).returning(EventCounter.last_id)
)
_INSERT_EVENT = insert(Event)


def append_event(
    conn: Connection,
    type_: EventType,
    *,
    study_uid: str = "",
    series_uid: str = "",
    sop_instance_uid: str = "",
    payload: dict[str, Any] | None = None,
) -> int:
    """Append one event in the caller's transaction and return its id."""
    new_id = direct.scalar(conn, _NEXT_EVENT_ID, {})
    direct.insert(conn, _INSERT_EVENT, {
        "id": new_id,
        "type": type_.value,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_instance_uid": sop_instance_uid,
        "payload": json.dumps(payload or {}, separators=(",", ":")),
    })
    return int(new_id)


def read_changes(db: Database, since: int, limit: int) -> list[ChangeEvent]:
    """Events with id > ``since``, oldest first, at most ``limit``."""
    with db.read() as conn:
        rows = conn.execute(select(Event).where(Event.id > since).order_by(Event.id).limit(limit)).all()
    return [_change_event(r) for r in rows]


def read_window(db: Database, since: int, limit: int, types: Iterable[str]) -> tuple[int, int, list[ChangeEvent]]:
    """The window of at most ``limit`` events after ``since``: how many, the last id
    (``since`` when none) and those of ``types`` in it, oldest first. One read transaction;
    the window is counted from the primary key, so events of other types are never loaded."""
    window = select(Event.id).where(Event.id > since).order_by(Event.id).limit(limit).subquery()
    with db.read() as conn:
        count, last = conn.execute(select(func.count(), func.max(window.c.id))).one()
        if not count:
            return 0, since, []
        rows = conn.execute(select(Event).where(Event.id > since, Event.id <= last, Event.type.in_(sorted(types)))
                            .order_by(Event.id)).all()
    return int(count), int(last), [_change_event(r) for r in rows]


def _change_event(r: Any) -> ChangeEvent:
    return ChangeEvent(
        id=r.id,
        type=r.type,
        study_uid=r.study_uid,
        series_uid=r.series_uid,
        sop_instance_uid=r.sop_instance_uid,
        payload=json.loads(r.payload or "{}"),
        created_at=r.created_at.isoformat() if r.created_at else "",
    )


def sweep_stable(db: Database, quiet_seconds: float, now: float | None = None, batch: int = 200) -> int:
    """Emit SeriesStable and StudyStable for everything quiet since ``quiet_seconds``.

    Returns how many events were emitted. Safe to run from several processes at once.
    """
    cutoff = (time.time() if now is None else now) - quiet_seconds
    emitted = 0
    emitted += _sweep_level(db, Series, cutoff, batch, EventType.SERIES_STABLE)
    emitted += _sweep_level(db, Study, cutoff, batch, EventType.STUDY_STABLE)
    return emitted


def _sweep_level(db: Database, model: type, cutoff: float, batch: int, kind: EventType) -> int:
    with db.read() as conn:
        candidates = conn.execute(
            select(model.id)
            .where(model.stable.is_(False), model.last_instance_at <= cutoff)
            .order_by(model.last_instance_at)
            .limit(batch)
        ).scalars().all()
    emitted = 0
    for pk in candidates:
        with db.write() as conn:
            claimed = conn.execute(
                update(model)
                .where(model.id == pk, model.stable.is_(False), model.last_instance_at <= cutoff)
                .values(stable=True)
            ).rowcount
            if claimed != 1:
                continue
            emitted += 1
            _append_stable(conn, model, pk, kind)
    return emitted


def _append_stable(conn: Connection, model: type, pk: int, kind: EventType) -> None:
    if model is Series:
        row = conn.execute(
            select(Series.series_uid, Series.num_instances, Series.modality, Study.study_uid)
            .join(Study, Study.id == Series.study_fk)
            .where(Series.id == pk)
        ).one()
        append_event(
            conn, kind, study_uid=row.study_uid, series_uid=row.series_uid,
            payload={"instances": row.num_instances, "modality": row.modality},
        )
    else:
        row = conn.execute(
            select(Study.study_uid, Study.num_series, Study.num_instances, Study.modalities)
            .where(Study.id == pk)
        ).one()
        append_event(
            conn, kind, study_uid=row.study_uid,
            payload={
                "series": row.num_series,
                "instances": row.num_instances,
                "modalities": [m for m in row.modalities.split("\\") if m],
            },
        )
