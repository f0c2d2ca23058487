"""Evaluate a :class:`Query` and build each match as DICOM JSON (PS3.18 F.2).

Values come from the stored DICOM JSON of the match's first instance (the IMAGE level:
the instance itself), at study level from the study row's summary of that JSON when it
holds every requested key (pacs/index/summary.py: kept exact by every write, so the
search need not look for the first instance), computed attributes from the aggregate
columns. Both doors take
these JSON objects: QIDO-RS returns them, C-FIND turns them into identifiers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import orjson

from sqlalchemy import func, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Select

from ..index.db import Database
from ..index.models import Instance, Patient, Series, Study
from ..index.summary import covers, first_instances
from .model import Level, Query
from .sql import compile_query

ALL = "all"


@dataclass(slots=True)
class Match:
    """One result: the level row's key and its DICOM JSON.

    ``stored_key`` names the stored part of ``json`` (every attribute but ``computed``):
    equal keys mean equal stored parts, so a door may cache what it derives from them
    (the C-FIND SCP caches their encoding). None when the match is not cached."""

    pk: int
    json: dict[str, Any]
    stored_key: tuple[Any, ...] | None = None
    computed: frozenset[str] = frozenset()


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


def _projection(level: Level, summarised: bool = False) -> list[Any]:
    """Columns selected per level, in this order (rows are read by position, a tenth of
    the time of SQLAlchemy's access by name): key, representative instance, computed values."""
    rep = _first_instance(level).label("rep") if level != Level.IMAGE else Instance.id.label("rep")
    if summarised:
        rep = Study.summary_rep.label("rep")
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


def summarised(query: Query, tags: list[str] | None) -> bool:
    """Whether the search answers from the study summaries (study level, every requested
    key kept there; pacs/index/summary.py)."""
    return query.level == Level.STUDY and tags is not None and ALL not in tags and covers(tags)


def statement(query: Query, tags: list[str] | None) -> Select:
    """The SELECT :func:`search` runs for ``query`` and ``tags`` (benchmarks show its plan)."""
    return _statement(query, summarised(query, tags))


def _statement(query: Query, summarised: bool = False) -> Select:
    """The search's SELECT. ``summarised`` (study level): each study's representative and
    values come from its summary, so no sub-query looks for its first instance."""
    stmt = compile_query(query)
    columns = _projection(query.level, summarised)
    if summarised:
        columns += [Study.summary_json, Study.summary_sha]
    return stmt.with_only_columns(*columns, maintain_column_froms=True)


def _is(value: int | None, vr: str = "IS") -> dict[str, Any]:
    return {"vr": vr, "Value": [int(value or 0)]}


#: Tags of the computed attributes each level's rows carry (see :func:`_computed`).
_COMPUTED_TAGS = {
    Level.PATIENT: frozenset({"00201200", "00201202", "00201204"}),
    Level.STUDY: frozenset({"00201206", "00201208", "00080061", "00080062"}),
    Level.SERIES: frozenset({"00201209"}),
    Level.IMAGE: frozenset(),
}


def _computed(level: Level, row: tuple[Any, ...]) -> dict[str, Any]:
    """Computed attributes (PS3.4 C.6.1.1.x) of a result row (columns of :func:`_projection`)."""
    if level == Level.PATIENT:
        return {"00201200": _is(row[2]), "00201202": _is(row[3]), "00201204": _is(row[4])}
    if level == Level.STUDY:
        modalities, sop_classes = row[4], row[5]
        values = {"00201206": _is(row[2]), "00201208": _is(row[3])}
        if modalities:
            values["00080061"] = {"vr": "CS", "Value": modalities.split("\\")}
        if sop_classes:
            values["00080062"] = {"vr": "UI", "Value": sop_classes.split("\\")}
        return values
    if level == Level.SERIES:
        return {"00201209": _is(row[2])}
    return {}


def _select_tags(body: dict[str, Any], tags: list[str] | None) -> dict[str, Any]:
    if tags is None or ALL in tags:
        return {t: v for t, v in body.items() if "BulkDataURI" not in v}
    return {t: body[t] for t in tags if t in body}


class LruCache:
    """A bounded map, least recently used entries evicted first; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def resize(self, size: int) -> None:
        """Keep at most ``size`` entries from now on (0: keep none)."""
        with self._lock:
            self.size = size
            while len(self._data) > size:
                self._data.popitem(last=False)

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)


#: Requested attributes of representative instances by (instance id, its SHA-256,
#: requested tags), as JSON bytes. An instance's stored JSON changes only with its
#: content, so an entry never goes stale; a query with the same return keys (a
#: workstation's, OHIF's) skips reading the whole JSON again: for ~200 matches, the larger
#: part of a search. Entries are a few requested attributes each (~0.3-2 KB): at most
#: some tens of MB. Bytes, not parsed dicts: the cyclic garbage collector does not track
#: bytes, and its full passes over 20,000 cached dicts of dicts stalled requests by up to
#: 170 ms (docs/big-index.md); a cached entry is parsed again for each use (~2 us).
SUBSETS = LruCache(20_000)


def _fetch(conn: Any, column: Any, ids: list[int]) -> dict[int, Any]:
    found: dict[int, Any] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        found.update(conn.execute(select(Instance.id, column).where(Instance.id.in_(chunk))).all())
    return found


def search(db: Database, query: Query, tags: list[str] | None = None) -> Iterator[Match]:
    """Matches of ``query`` in the level's key order, each with the requested ``tags``
    (8-digit upper-case hex; None or ["all"] for every non-bulk attribute)."""
    if tags is None or ALL in tags:
        yield from _search_all(db, query, tags)
        return
    wanted, key = set(tags), tuple(tags)
    from_summaries = summarised(query, tags)
    with db.read() as conn:
        rows = [tuple(row) for row in conn.execute(_statement(query, from_summaries))]
        reps = {row[0]: row[1] for row in rows}
        shas, summaries = _summaries(rows) if from_summaries else ({}, {})
        if from_summaries and len(summaries) < len(rows):  # studies without a summary
            reps.update(first_instances(conn, [row[0] for row in rows if row[1] not in summaries]))
        shas.update(_fetch(conn, Instance.sha256, [rep for rep in reps.values() if rep is not None and rep not in shas]))
        cached = {rep: SUBSETS.get((rep, sha, key)) for rep, sha in shas.items() if rep not in summaries}
        texts = _fetch(conn, Instance.dicom_json, [rep for rep, found in cached.items() if found is None])
    subsets = {rep: _select_tags(orjson.loads(text), tags) for rep, text in summaries.items()}
    for rep, found in cached.items():
        if found is not None:
            subsets[rep] = orjson.loads(found)
        elif rep in texts:
            subsets[rep] = _select_tags(orjson.loads(texts[rep]), tags)  # orjson: 2x json.loads' speed
            SUBSETS.put((rep, shas[rep], key), orjson.dumps(subsets[rep]))
    any_computed = not wanted.isdisjoint(_COMPUTED_TAGS[query.level])
    for row in rows:
        rep = reps[row[0]]
        body = subsets.get(rep) or {}
        computed = {}
        if any_computed:
            computed = {t: v for t, v in _computed(query.level, row).items() if t in wanted}
            body.update(computed)
        stored_key = (rep, shas[rep], key) if rep in shas else None
        yield Match(int(row[0]), body, stored_key, frozenset(computed))


def _summaries(rows: list[tuple[Any, ...]]) -> tuple[dict[int, str], dict[int, str]]:
    """SHA-256 and summary JSON of each study row's representative (its first instance),
    from the study row's last two columns (pacs/index/summary.py), by representative."""
    shas, texts = {}, {}
    for row in rows:
        rep, text = row[1], row[-2]
        if text is not None and rep is not None:
            shas[rep], texts[rep] = row[-1], text
    return shas, texts


def _search_all(db: Database, query: Query, tags: list[str] | None) -> Iterator[Match]:
    """:func:`search` returning every attribute (not cached: whole objects are large)."""
    with db.read() as conn:
        rows = [tuple(row) for row in conn.execute(_statement(query))]
        bodies = _fetch(conn, Instance.dicom_json, [row[1] for row in rows if row[1] is not None])
    for row in rows:
        body = orjson.loads(bodies[row[1]]) if row[1] in bodies else {}
        body.update(_computed(query.level, row))
        yield Match(int(row[0]), _select_tags(body, tags))
