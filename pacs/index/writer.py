"""Index writes: one transaction per stored object, aggregates kept exact.

Lock order is always patient -> study -> series -> instance -> series/study counters ->
event counter, so concurrent ingests on PostgreSQL queue instead of deadlocking.
Get-or-create uses ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` then a select, so two
associations creating the same study at once both succeed (tech-notes §e).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import Conflict
from ..storage.keys import sop_uid_candidates
from . import direct
from .models import Instance, Patient, Series, Study
from .summary import refresh_summary, study_summary


def _insert(conn: Connection, model: type):  # type: ignore[no-untyped-def]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(model)


# Statements of the ingest hot path are built once; executing a prebuilt statement skips
# SQLAlchemy's per-call construction and cache-key work (about half the time per row).
_SELECT_PATIENT = select(Patient).where(
    Patient.patient_id == bindparam("b_pid"), Patient.issuer == bindparam("b_issuer")
)
_SELECT_STUDY = select(Study).where(Study.study_uid == bindparam("b_uid"))
_SELECT_SERIES = select(Series.id, Series.study_fk).where(Series.series_uid == bindparam("b_uid"))
_INSERTS: dict[tuple[str, type], Any] = {}


def _insert_returning_id(conn: Connection, model: type, values: dict) -> int | None:
    """INSERT .. ON CONFLICT DO NOTHING RETURNING id: the new id, or None on conflict."""
    key = (conn.dialect.name, model)
    stmt = _INSERTS.get(key)
    if stmt is None:
        stmt = _INSERTS[key] = _insert(conn, model).on_conflict_do_nothing().returning(model.id)
    return conn.execute(stmt, values).scalar()


def upsert_patient(conn: Connection, patient: dict[str, str]) -> int:
    """Patient primary key for (PatientID, Issuer); demographics updated latest-wins."""
    params = {"b_pid": patient["patient_id"], "b_issuer": patient["issuer"]}
    row = conn.execute(_SELECT_PATIENT, params).first()
    if row is None:
        new_id = _insert_returning_id(conn, Patient, patient)
        if new_id is not None:
            return new_id
        row = conn.execute(_SELECT_PATIENT, params).one()
    changed = {k: v for k, v in patient.items() if v and getattr(row, k) != v}
    if changed:
        conn.execute(update(Patient).where(Patient.id == row.id).values(**changed))
    return int(row.id)


def lock_study(conn: Connection, study_uid: str, patient_pk: int, study: dict,
               first: tuple[str, str] = ("", "")) -> Any:
    """The study row, created if absent, locked for this transaction (PostgreSQL).
    ``first``: the DICOM JSON and SHA-256 of the instance being stored, summarised on
    the row when it creates the study (:mod:`.summary`; :func:`bump_counts` then records
    the instance's id)."""
    stmt = _SELECT_STUDY.with_for_update() if conn.dialect.name == "postgresql" else _SELECT_STUDY
    row = conn.execute(stmt, {"b_uid": study_uid}).first()
    if row is None:
        dicom_json, sha = first
        summary = {"summary_json": study_summary(dicom_json), "summary_sha": sha} if dicom_json else {}
        _insert_returning_id(conn, Study, {"study_uid": study_uid, "patient_fk": patient_pk, **study, **summary})
        row = conn.execute(stmt, {"b_uid": study_uid}).one()
    if row.patient_fk != patient_pk:
        raise Conflict("StudyInstanceUID already held under another patient")
    return row


def upsert_series(conn: Connection, series_uid: str, study_pk: int, series: dict) -> tuple[int, bool]:
    row = conn.execute(_SELECT_SERIES, {"b_uid": series_uid}).first()
    created = False
    if row is None:
        created = _insert_returning_id(conn, Series, {"series_uid": series_uid, "study_fk": study_pk, **series}) is not None
        row = conn.execute(_SELECT_SERIES, {"b_uid": series_uid}).one()
    if row.study_fk != study_pk:
        raise Conflict("SeriesInstanceUID already held under another study")
    return int(row.id), created


#: Characters the study's modality set may take (its column, ``study.modalities``): a
#: study whose series have more distinct modalities lists those that fit (ModalitiesInStudy
#: is still matched on every series, pacs/query/sql.py).
MODALITIES_ROOM = 256


def _add_to_set(current: str, value: str, room: int | None = None) -> str:
    """``current`` (backslash-separated, sorted) with ``value`` added; with ``room``,
    ``current`` as it is when the set would grow longer than that."""
    items = {v for v in current.split("\\") if v}
    if value:
        items.add(value)
    joined = "\\".join(sorted(items))
    return current if room is not None and len(joined) > room else joined


def _set_within(items: list[str], room: int) -> str:
    """The sorted set of ``items``, those that fit in ``room`` characters, in order."""
    joined = ""
    for item in items:
        joined = _add_to_set(joined, item, room)
    return joined


_BUMP_SERIES = (
    update(Series).where(Series.id == bindparam("b_pk"))
    .values(num_instances=Series.num_instances + 1, last_instance_at=bindparam("b_now"), stable=False)
)
_BUMP_STUDY = (
    update(Study).where(Study.id == bindparam("b_pk"))
    .values(
        num_instances=Study.num_instances + 1,
        num_series=Study.num_series + bindparam("b_new_series"),
        last_instance_at=bindparam("b_now"),
        stable=False,
        modalities=bindparam("b_modalities"),
        sop_classes=bindparam("b_sop_classes"),
        summary_rep=func.coalesce(Study.summary_rep, bindparam("b_rep")),
    )
)


def bump_counts(
    conn: Connection, study: Any, series_pk: int, new_series: bool,
    modality: str, sop_class: str, now: float, instance_pk: int | None = None,
) -> None:
    """Count one more instance in its series and its (locked) study; extend the study's sets.
    ``instance_pk``: the new instance, recorded as the summary's when it is the study's first."""
    conn.execute(_BUMP_SERIES, {"b_pk": series_pk, "b_now": now})
    first = study.num_instances == 0 and study.summary_json is not None
    conn.execute(_BUMP_STUDY, {
        "b_pk": study.id, "b_now": now, "b_new_series": 1 if new_series else 0,
        "b_rep": instance_pk if first else None,
        "b_modalities": _add_to_set(study.modalities, modality, MODALITIES_ROOM) if new_series else study.modalities,
        "b_sop_classes": _add_to_set(study.sop_classes, sop_class),
    })


def recompute_study(conn: Connection, study_pk: int) -> None:
    """Recompute every aggregate and the summary of a study from its rows (after deletes)."""
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
            modalities=_set_within(sorted({r[1] for r in series_rows if r[1]}), MODALITIES_ROOM),
            sop_classes="\\".join(sorted(classes)),
        )
    )
    refresh_summary(conn, study_pk)


def delete_empty(conn: Connection, study_pk: int) -> bool:
    """Drop series without instances, then the study if empty; True when the study went."""
    empty = select(Series.id).where(
        Series.study_fk == study_pk,
        ~select(Instance.id).where(Instance.series_fk == Series.id).exists(),
    )
    conn.execute(delete(Series).where(Series.id.in_(empty)))
    left = conn.execute(select(func.count(Series.id)).where(Series.study_fk == study_pk)).scalar()
    if left:
        return False
    patient_pk = conn.execute(select(Study.patient_fk).where(Study.id == study_pk)).scalar()
    conn.execute(delete(Study).where(Study.id == study_pk))
    others = conn.execute(select(func.count(Study.id)).where(Study.patient_fk == patient_pk)).scalar()
    if not others:
        conn.execute(delete(Patient).where(Patient.id == patient_pk))
    return True


# -- the common case without look-ups ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SeriesEntry:
    """What the last ingest into a series learned: its keys and its study's sets."""

    study_uid: str
    patient: tuple[tuple[str, Any], ...]
    patient_pk: int
    study_pk: int
    series_pk: int
    modalities: str
    sop_classes: str


class SeriesCache:
    """Per process: series UID -> :class:`SeriesEntry`, so that the next instance of a series
    skips the patient, study and series look-ups. Entries are hints, never trusted: the
    conditional updates of :func:`bump_cached` check them against the rows."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: dict[str, SeriesEntry] = {}

    def get(self, series_uid: str, study_uid: str, patient: dict[str, Any], modality: str,
            sop_class: str) -> SeriesEntry | None:
        entry = self._entries.get(series_uid)
        if entry is None or entry.study_uid != study_uid or entry.patient != tuple(sorted(patient.items())):
            return None
        if modality not in entry.modalities.split("\\") or sop_class not in entry.sop_classes.split("\\"):
            return None
        return entry

    def put(self, series_uid: str, entry: SeriesEntry) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[series_uid] = entry

    def forget(self, series_uid: str) -> None:
        self._entries.pop(series_uid, None)


class StaleEntry(Exception):
    """A cached entry no longer matches the rows; the transaction must be redone."""


_BUMP_CACHED_STUDY = (
    update(Study).where(
        Study.id == bindparam("b_pk"), Study.patient_fk == bindparam("b_patient"),
        Study.modalities == bindparam("b_modalities"), Study.sop_classes == bindparam("b_sop_classes"),
    ).values(num_instances=Study.num_instances + 1, last_instance_at=bindparam("b_now"), stable=False)
)
_BUMP_CACHED_SERIES = (
    update(Series).where(Series.id == bindparam("b_pk"), Series.study_fk == bindparam("b_study"))
    .values(num_instances=Series.num_instances + 1, last_instance_at=bindparam("b_now"), stable=False)
)


def bump_cached(conn: Connection, entry: SeriesEntry, now: float) -> bool:
    """Count one more instance in a series known from ``entry``, in lock order (study,
    then series). False when the study row does not match (nothing changed); raises
    :class:`StaleEntry` when the study matched but the series did not."""
    matched = direct.rowcount(conn, _BUMP_CACHED_STUDY, {
        "b_pk": entry.study_pk, "b_patient": entry.patient_pk, "b_now": now,
        "b_modalities": entry.modalities, "b_sop_classes": entry.sop_classes,
    })
    if matched != 1:
        return False
    if direct.rowcount(conn, _BUMP_CACHED_SERIES, {"b_pk": entry.series_pk, "b_study": entry.study_pk,
                                                   "b_now": now}) != 1:
        raise StaleEntry(entry.series_pk)
    return True


def entry_after_bump(study: Any, patient: dict[str, Any], patient_pk: int, series_pk: int,
                     new_series: bool, modality: str, sop_class: str) -> SeriesEntry:
    """The cache entry for the state :func:`bump_counts` just wrote."""
    return SeriesEntry(
        study.study_uid, tuple(sorted(patient.items())), patient_pk, study.id, series_pk,
        _add_to_set(study.modalities, modality, MODALITIES_ROOM) if new_series else study.modalities,
        _add_to_set(study.sop_classes, sop_class),
    )


def object_in_use(conn: Connection, key: str) -> bool:
    """Whether an instance row points at the object under ``key``. The look-up goes through
    the SOP Instance UID's unique index (``instance.blob_key`` has none), with the UIDs the
    key can have been made from; a key of another shape falls back to scanning ``blob_key``."""
    query = select(Instance.id).where(Instance.blob_key == key)
    candidates = sop_uid_candidates(key)
    if candidates:
        query = query.where(Instance.sop_instance_uid.in_(candidates))
    return conn.execute(query.limit(1)).first() is not None
