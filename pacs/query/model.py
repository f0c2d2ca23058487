"""The one query model shared by C-FIND and QIDO-RS (DESIGN.md "One query model").

A :class:`Query` has a level, a list of :class:`Matcher` (one per attribute, PS3.4
C.2.2.2 matching types) and the keys to return. Both doors parse into it; one SQL
translator (:mod:`pacs.query.sql`) evaluates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Level(str, Enum):
    """Query/Retrieve level (PS3.4 C.3)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        return ("PATIENT", "STUDY", "SERIES", "IMAGE").index(self.value)


class MatchKind(str, Enum):
    """Matching types of PS3.4 C.2.2.2."""

    SINGLE = "single"  # C.2.2.2.1 single value
    UID_LIST = "uid_list"  # C.2.2.2.2 list of UIDs
    UNIVERSAL = "universal"  # C.2.2.2.3 zero-length value: return only
    WILDCARD = "wildcard"  # C.2.2.2.4 '*' and '?'
    RANGE = "range"  # C.2.2.2.5 date/time ranges
    LIST = "list"  # multiple values (e.g. ModalitiesInStudy CT\\MR): any matches


@dataclass(frozen=True)
class Matcher:
    """One attribute's matching condition."""

    keyword: str
    kind: MatchKind
    #: SINGLE/WILDCARD: str; RANGE: (low, high) with '' for open ends; LIST/UID_LIST: tuple.
    value: object = None


@dataclass
class Query:
    """A search at one level: matchers, keys to return, paging."""

    level: Level
    matchers: list[Matcher] = field(default_factory=list)
    #: DICOM JSON tags (8 hex digits, upper case) to return besides the defaults.
    return_tags: list[str] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0
    #: PN matching: word-prefix ("fuzzy", QIDO fuzzymatching=true) instead of whole value.
    fuzzy: bool = False

    def matcher(self, keyword: str) -> Matcher | None:
        return next((m for m in self.matchers if m.keyword == keyword), None)


def level_of(identifier: object, levels: tuple[Level, ...]) -> Level:
    """The QueryRetrieveLevel of a DIMSE identifier (a pydicom Dataset), checked against
    the levels of its information model (PS3.4 C.4.1.1.3, C.4.2.1.4)."""
    from ..errors import InvalidQuery

    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip()  # type: ignore[attr-defined]
    try:
        level = Level(raw)
    except ValueError:
        raise InvalidQuery("QueryRetrieveLevel missing or invalid") from None
    if level not in levels:
        raise InvalidQuery(f"level {raw} is not in this information model")
    return level
