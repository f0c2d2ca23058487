"""Index writes: one transaction per stored object, aggregates kept exact.

Lock order is always patient -> study -> series -> instance -> series/study counters ->
event counter, so concurrent ingests on PostgreSQL queue instead of deadlocking.
Get-or-create uses ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` then a select, so two
associations creating the same study at once both succeed (tech-notes §e).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import Conflict
from .models import Instance, Patient, Series, Study


@dataclass
class InstanceRow:
    """The values of the instance row, minus the foreign key."""

    values: dict[str, Any]


def _insert(conn: Connection, model: type):  # type: ignore[no-untyped-def]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(model)


def _get_or_create(conn: Connection, model: type, where: list, values: dict) -> tuple[Any, bool]:
    """(row, created) for the row matching ``where``, inserting ``values`` if absent."""
    row = conn.execute(select(model).where(*where)).first()
    if row is not None:
        return row, False
    new_id = conn.execute(
        _insert(conn, model).values(**values).on_conflict_do_nothing().returning(model.id)
    ).scalar()
    row = conn.execute(select(model).where(*where)).one()
    return row, new_id is not None


def upsert_patient(conn: Connection, patient: dict[str, str]) -> int:
    """Patient primary key for (PatientID, Issuer); demographics updated latest-wins."""
    where = [Patient.patient_id == patient["patient_id"], Patient.issuer == patient["issuer"]]
    row, created = _get_or_create(conn, Patient, where, patient)
    if not created:
        changed = {k: v for k, v in patient.items() if v and getattr(row, k) != v}
        if changed:
            conn.execute(update(Patient).where(Patient.id == row.id).values(**changed))
    return int(row.id)


def upsert_study(conn: Connection, study_uid: str, patient_pk: int, study: dict) -> int:
    row, _ = _get_or_create(
        conn, Study, [Study.study_uid == study_uid],
        {"study_uid": study_uid, "patient_fk": patient_pk, **study},
    )
    if row.patient_fk != patient_pk:
        raise Conflict("StudyInstanceUID already held under another patient")
    return int(row.id)


def upsert_series(conn: Connection, series_uid: str, study_pk: int, series: dict) -> tuple[int, bool]:
    row, created = _get_or_create(
        conn, Series, [Series.series_uid == series_uid],
        {"series_uid": series_uid, "study_fk": study_pk, **series},
    )
    if row.study_fk != study_pk:
        raise Conflict("SeriesInstanceUID already held under another study")
    return int(row.id), created


def _add_to_set(current: str, value: str) -> str | None:
    """``current`` (backslash-separated) with ``value`` added, or None when present."""
    if not value:
        return None
    items = [v for v in current.split("\\") if v]
    if value in items:
        return None
    return "\\".join(sorted(items + [value]))


def bump_counts(
    conn: Connection, study_pk: int, series_pk: int, new_series: bool,
    modality: str, sop_class: str, now: float,
) -> None:
    """Count one more instance in its series and study; extend the study's sets."""
    conn.execute(
        update(Series).where(Series.id == series_pk).values(
            num_instances=Series.num_instances + 1, last_instance_at=now, stable=False
        )
    )
    conn.execute(
        update(Study).where(Study.id == study_pk).values(
            num_instances=Study.num_instances + 1,
            num_series=Study.num_series + (1 if new_series else 0),
            last_instance_at=now,
            stable=False,
        )
    )
    current = conn.execute(select(Study.modalities, Study.sop_classes).where(Study.id == study_pk)).one()
    changes = {}
    if new_series and (mods := _add_to_set(current.modalities, modality)) is not None:
        changes["modalities"] = mods
    if (classes := _add_to_set(current.sop_classes, sop_class)) is not None:
        changes["sop_classes"] = classes
    if changes:
        conn.execute(update(Study).where(Study.id == study_pk).values(**changes))


def recompute_study(conn: Connection, study_pk: int) -> None:
    """Recompute every aggregate of a study from its rows (after deletes)."""
    series_rows = conn.execute(
        select(Series.id, Series.modality, func.count(Instance.id))
        .outerjoin(Instance, Instance.series_fk == Series.id)
        .where(Series.study_fk == study_pk)
        .group_by(Series.id, Series.modality)
    ).all()
    for pk, _mod, count in series_rows:
        conn.execute(update(Series).where(Series.id == pk).values(num_instances=count))
    classes = conn.execute(
        select(Instance.sop_class_uid).distinct()
        .join(Series, Series.id == Instance.series_fk)
        .where(Series.study_fk == study_pk)
    ).scalars().all()
    conn.execute(
        update(Study).where(Study.id == study_pk).values(
            num_series=len(series_rows),
            num_instances=sum(r[2] for r in series_rows),
            modalities="\\".join(sorted({r[1] for r in series_rows if r[1]})),
            sop_classes="\\".join(sorted(classes)),
        )
    )


def delete_empty(conn: Connection, study_pk: int) -> bool:
    """Drop series without instances, then the study if empty; True when the study went."""
    empty = select(Series.id).where(
        Series.study_fk == study_pk,
        ~select(Instance.id).where(Instance.series_fk == Series.id).exists(),
    )
    conn.execute(delete(Series).where(Series.id.in_(empty.scalar_subquery())))
    left = conn.execute(select(func.count(Series.id)).where(Series.study_fk == study_pk)).scalar()
    if left:
        return False
    patient_pk = conn.execute(select(Study.patient_fk).where(Study.id == study_pk)).scalar()
    conn.execute(delete(Study).where(Study.id == study_pk))
    others = conn.execute(select(func.count(Study.id)).where(Study.patient_fk == patient_pk)).scalar()
    if not others:
        conn.execute(delete(Patient).where(Patient.id == patient_pk))
    return True
