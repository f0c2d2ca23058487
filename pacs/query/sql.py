"""The one SQL translator: a :class:`Query` becomes a SELECT with bound parameters.

Wildcards follow PS3.4 C.2.2.2.4 (``*`` any sequence, ``?`` one character). A pattern
whose only wildcard is a trailing ``*`` becomes a range on the column
(``col >= 'SMITH' AND col < 'SMITI'``), which SQLite and PostgreSQL both serve from a
B-tree index; other patterns become ``LIKE ... ESCAPE '\\'`` with ``%``, ``_`` and ``\\``
escaped (tech-notes §e). Person names match their normalised column (case- and
accent-insensitive, :mod:`pacs.index.names`).
"""

from __future__ import annotations

from typing import Any, Mapping

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql import ColumnElement, Select

from ..index.models import Instance, Patient, Series, Study
from .attributes import MATCHABLE, Attribute
from .model import Level, Matcher, MatchKind, Query

_LEVEL_TABLE = {Level.PATIENT: Patient, Level.STUDY: Study, Level.SERIES: Series, Level.IMAGE: Instance}


def like_pattern(value: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern with ``\\`` as escape character."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _next_prefix(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _wildcard(column: Any, pattern: str) -> ColumnElement[bool]:
    body = pattern[:-1]
    if pattern.endswith("*") and body and "*" not in body and "?" not in body:
        return and_(column >= body, column < _next_prefix(body))
    return column.like(like_pattern(pattern), escape="\\")


def _fuzzy_pn(column: Any, value: str) -> ColumnElement[bool]:
    """Word-prefix match on any name component: "jo do" matches "DOE^JOHN"."""
    words = [w for w in value.replace("^", " ").replace("=", " ").split() if w]
    conditions = []
    for word in words:
        pattern = like_pattern(word) + "%"
        conditions.append(or_(
            column.like(pattern, escape="\\"),
            column.like("%^" + pattern, escape="\\"),
            column.like("% " + pattern, escape="\\"),
            column.like("%=" + pattern, escape="\\"),
        ))
    return and_(*conditions)


def _condition(matcher: Matcher, fuzzy: bool, attributes: Mapping[str, Attribute] = MATCHABLE
               ) -> ColumnElement[bool] | None:
    attr = attributes[matcher.keyword]
    column = attr.column
    kind, value = matcher.kind, matcher.value
    if kind == MatchKind.UNIVERSAL:
        return None
    if matcher.keyword == "ModalitiesInStudy":
        # any series of the study has one of the modalities (PS3.18 10.6.1.2.3)
        other = aliased(Series)
        values = value if kind in (MatchKind.LIST, MatchKind.UID_LIST) else (value,)
        inner = or_(*[
            _wildcard(other.modality, v) if kind == MatchKind.WILDCARD else other.modality == v
            for v in values  # type: ignore[union-attr]
        ])
        return exists(select(other.id).where(other.study_fk == Study.id, inner))
    if kind in (MatchKind.UID_LIST, MatchKind.LIST):
        return column.in_(list(value))  # type: ignore[arg-type]
    if kind == MatchKind.RANGE:
        low, high = value  # type: ignore[misc]
        parts = []
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(*parts)
    if kind == MatchKind.WILDCARD:
        return _wildcard(column, str(value))
    if attr.person_name and fuzzy:
        return _fuzzy_pn(column, str(value))
    return column == value


def condition(matcher: Matcher, attributes: Mapping[str, Attribute]) -> ColumnElement[bool] | None:
    """The WHERE condition of one matcher on the columns of another information model's
    ``attributes`` (e.g. the Modality Worklist, :mod:`worklist.matching`); None if universal."""
    return _condition(matcher, False, attributes)


def _joins(level: Level) -> Select:
    """SELECT of the level's table joined with every level above it."""
    if level == Level.PATIENT:
        return select(Patient)
    stmt = select(Study, Patient).join(Patient, Patient.id == Study.patient_fk)
    if level == Level.STUDY:
        return stmt
    stmt = select(Series, Study, Patient).join(Study, Study.id == Series.study_fk).join(
        Patient, Patient.id == Study.patient_fk)
    if level == Level.SERIES:
        return stmt
    return (
        select(Instance, Series, Study, Patient)
        .join(Series, Series.id == Instance.series_fk)
        .join(Study, Study.id == Series.study_fk)
        .join(Patient, Patient.id == Study.patient_fk)
    )


#: Dates that follow the row order: an archive receives studies about when they are made.
_INSERTION_ORDERED = {"StudyDate", "SeriesDate"}


def _order_key(query: Query) -> ColumnElement[Any]:
    """The level's key, or with a page limit and a date range, the key as an expression
    (``id + 0``, the same order) so that no index can give it: otherwise PostgreSQL may
    walk the primary key, expecting the range's rows spread evenly along it, when they
    lie together (rows follow the dates): a month at the end of ten years read ~100,000
    rows to find 101. With ``id + 0`` the date index drives and a top-N sort orders the
    range's rows (docs/big-index.md)."""
    key = _LEVEL_TABLE[query.level].id
    if query.limit is not None and any(
        m.kind == MatchKind.RANGE and m.keyword in _INSERTION_ORDERED for m in query.matchers
    ):
        return key + 0
    return key


def compile_query(query: Query) -> Select:
    """The SELECT that evaluates ``query``, ordered by the level's key, with paging."""
    stmt = _joins(query.level)
    conditions = [c for m in query.matchers if (c := _condition(m, query.fuzzy)) is not None]
    if conditions:
        stmt = stmt.where(*conditions)
    stmt = stmt.order_by(_order_key(query))
    if query.offset:
        stmt = stmt.offset(query.offset)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return stmt
