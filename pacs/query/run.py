"""Evaluate a :class:`Query` and build each match as DICOM JSON (PS3.18 F.2).

Values come from the stored DICOM JSON of the match's first instance (the IMAGE level:
the instance itself), computed attributes from the aggregate columns. Both doors take
these JSON objects: QIDO-RS returns them, C-FIND turns them into identifiers.
"""

from __future__ import annotations

import orjson
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Select

from ..index.db import Database
from ..index.models import Instance, Patient, Series, Study
from .model import Level, Query
from .sql import compile_query

ALL = "all"


@dataclass(frozen=True)
class Match:
    """One result: the level row's key and its DICOM JSON."""

    pk: int
    json: dict[str, Any]


def _first_instance(level: Level) -> Any:
    """Correlated subquery: the id of the first instance under the current row."""
    if level == Level.SERIES:
        return select(func.min(Instance.id)).where(Instance.series_fk == Series.id).scalar_subquery()
    under = select(func.min(Instance.id)).join(Series, Series.id == Instance.series_fk)
    if level == Level.STUDY:
        return under.where(Series.study_fk == Study.id).correlate(Study).scalar_subquery()
    inner_study = aliased(Study)
    return (
        under.join(inner_study, inner_study.id == Series.study_fk)
        .where(inner_study.patient_fk == Patient.id).correlate(Patient).scalar_subquery()
    )


def _projection(level: Level) -> list[Any]:
    """Columns selected per level: key, representative instance, computed values."""
    rep = _first_instance(level).label("rep") if level != Level.IMAGE else Instance.id.label("rep")
    if level == Level.PATIENT:
        per_patient = Study.patient_fk == Patient.id
        return [
            Patient.id.label("pk"), rep,
            select(func.count(Study.id)).where(per_patient).scalar_subquery().label("n_studies"),
            select(func.sum(Study.num_series)).where(per_patient).scalar_subquery().label("n_series"),
            select(func.sum(Study.num_instances)).where(per_patient).scalar_subquery().label("n_inst"),
        ]
    if level == Level.STUDY:
        return [Study.id.label("pk"), rep, Study.num_series, Study.num_instances, Study.modalities, Study.sop_classes]
    if level == Level.SERIES:
        return [Series.id.label("pk"), rep, Series.num_instances]
    return [Instance.id.label("pk"), rep]


def _statement(query: Query) -> Select:
    stmt = compile_query(query)
    return stmt.with_only_columns(*_projection(query.level), maintain_column_froms=True)


def _is(value: int | None, vr: str = "IS") -> dict[str, Any]:
    return {"vr": vr, "Value": [int(value or 0)]}


def _computed(level: Level, row: Any) -> dict[str, Any]:
    """Computed attributes (PS3.4 C.6.1.1.x) of a result row."""
    if level == Level.PATIENT:
        return {"00201200": _is(row.n_studies), "00201202": _is(row.n_series), "00201204": _is(row.n_inst)}
    if level == Level.STUDY:
        values = {"00201206": _is(row.num_series), "00201208": _is(row.num_instances)}
        if row.modalities:
            values["00080061"] = {"vr": "CS", "Value": row.modalities.split("\\")}
        if row.sop_classes:
            values["00080062"] = {"vr": "UI", "Value": row.sop_classes.split("\\")}
        return values
    if level == Level.SERIES:
        return {"00201209": _is(row.num_instances)}
    return {}


def _select_tags(body: dict[str, Any], tags: list[str] | None) -> dict[str, Any]:
    if tags is None or ALL in tags:
        return {t: v for t, v in body.items() if "BulkDataURI" not in v}
    return {t: body[t] for t in tags if t in body}


def search(db: Database, query: Query, tags: list[str] | None = None) -> Iterator[Match]:
    """Matches of ``query`` in the level's key order, each with the requested ``tags``
    (8-digit upper-case hex; None or ["all"] for every non-bulk attribute)."""
    with db.read() as conn:
        rows = conn.execute(_statement(query)).all()
        rep_ids = [r.rep for r in rows if r.rep is not None]
        bodies: dict[int, str] = {}
        for start in range(0, len(rep_ids), 500):
            chunk = rep_ids[start:start + 500]
            bodies.update(conn.execute(
                select(Instance.id, Instance.dicom_json).where(Instance.id.in_(chunk))
            ).tuples().all())
    for row in rows:
        body = orjson.loads(bodies[row.rep]) if row.rep in bodies else {}  # 2x json.loads' speed
        body.update(_computed(query.level, row))
        yield Match(int(row.pk), _select_tags(body, tags))
