"""QIDO-RS request parsing and response shaping (PS3.18 10.6), on the shared query model.

Query parameters (PS3.18 8.3.4) become a :class:`pacs.query.Query` through the same
matcher builder C-FIND uses (:func:`pacs.query.make_matcher`), so matching follows
PS3.4 C.2.2.2 once for both doors. This module knows no HTTP framework: it takes the
parameters as (key, value) pairs and raises :class:`pacs.errors.InvalidQuery`, which the
one error middleware (:mod:`pacs.web`) maps to 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from pacs.errors import InvalidQuery
from pacs.query import Level, Query, make_matcher
from pacs.query.attributes import COMPUTED, MATCHABLE, attribute_level

#: Largest page the server returns (PS3.18 8.3.4.4.1 "maxResults"); also the highest
#: accepted ``limit``. A constant, not a setting.
MAX_RESULTS = 10_000
#: Highest accepted ``offset`` (fits a 32-bit signed integer on every database).
MAX_OFFSET = 2**31 - 1

#: Default return attributes, PS3.18 Table 10.6.3-3 (study), -4 (series), -5 (instance).
STUDY_DEFAULTS = (
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
    "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = (
    "SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
    "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "RequestAttributesSequence",
)
INSTANCE_DEFAULTS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
    "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
    "NumberOfFrames",
)
_DEFAULTS = {Level.STUDY: STUDY_DEFAULTS, Level.SERIES: SERIES_DEFAULTS, Level.IMAGE: INSTANCE_DEFAULTS}
#: Unique keys returned at and above each level (needed for RetrieveURL too).
_UIDS = {
    Level.STUDY: ("StudyInstanceUID",),
    Level.SERIES: ("StudyInstanceUID", "SeriesInstanceUID"),
    Level.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
#: Query parameters that are not attributes (PS3.18 Table 8.3.4-1).
CONTROL = ("includefield", "fuzzymatching", "limit", "offset", "emptyvaluematching",
           "multiplevaluematching")
#: Optional matching modes we do not perform, and the Warning text their ``true`` gets
#: (PS3.18 8.3.4.5, 8.3.4.6): the search runs without them.
UNSUPPORTED = {
    "emptyvaluematching": "The emptyvaluematching parameter is not supported. "
                          "Empty Value Matching has not been performed.",
    "multiplevaluematching": "The multiplevaluematching parameter is not supported. "
                             "Multiple Value Matching has not been performed.",
}
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
RETRIEVE_URL, INSTANCE_AVAILABILITY = "00081190", "00080056"
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_UINT = re.compile(r"^[0-9]{1,12}$")
_SPLIT = re.compile(r"[,\\]")


def _hex(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


@dataclass
class QidoRequest:
    """A parsed QIDO-RS request: the query (fetching one extra match to detect more) and
    the tags to return; ``None`` tags means every non-bulk attribute (``includefield=all``
    at the instance level)."""

    query: Query
    tags: list[str] | None
    page: int
    limit_given: bool
    #: Texts of ``Warning: 299`` headers the answer carries (PS3.18 8.3.4.5, 8.3.4.6).
    warnings: list[str] = field(default_factory=list)


def resolve(key: str, what: str) -> tuple[str, str]:
    """(tag as 8 upper-case hex digits, keyword or '') of an attribute named by keyword
    or tag (PS3.18 8.3.4.1 ``attributeID``); unknown keywords raise InvalidQuery."""
    if _TAG.match(key):
        tag = key.upper()
        return tag, keyword_for_tag(int(tag, 16)) or ""
    number = tag_for_keyword(key)
    if number is None:
        raise InvalidQuery(f"{what}: unknown attribute {key}")
    return f"{number:08X}", key


def _uint(raw: str, name: str, low: int, high: int) -> int:
    """An unsigned integer parameter (PS3.18 8.3.4.4 ``uint``) within [low, high]."""
    value = int(raw) if _UINT.match(raw.strip()) else -1
    if not low <= value <= high:
        raise InvalidQuery(f"{name} must be an integer from {low} to {high}, not {raw!r}")
    return value


def _flag(values: list[str], name: str) -> bool:
    """A boolean search parameter (PS3.18 Table 8.3.4-1: ``fuzzymatching``,
    ``emptyvaluematching``, ``multiplevaluematching``): ``true`` or ``false`` (any case)."""
    if len(values) != 1 or values[0].strip().lower() not in ("true", "false"):
        raise InvalidQuery(f"{name} must be true or false")
    return values[0].strip().lower() == "true"


def _include_tags(values: list[str]) -> tuple[list[str], bool]:
    """``includefield`` values (PS3.18 8.3.4.3): repeated or comma lists of keywords,
    tags, dotted sequence paths (their top-level attribute is returned) or ``all``."""
    tags, include_all = [], False
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            if item.lower() == "all":
                include_all = True
                continue
            tags.append(resolve(item.split(".")[0], "includefield")[0])
    return tags, include_all


def _attribute_matcher(query: Query, key: str, values: list[str]) -> str:
    """Add the matcher for one ``{attributeID}={value}`` parameter (PS3.18 8.3.4.1) and
    return its tag (matched keys are returned, PS3.18 10.6.3.3)."""
    if "." in key:
        raise InvalidQuery(f"sequence matching on {key} is not supported")
    tag, keyword = resolve(key, "query")
    split = [part for value in values for part in _SPLIT.split(value)]
    level = attribute_level(keyword) if keyword else None
    if level is not None and level.depth > query.level.depth:
        raise InvalidQuery(f"{keyword} is below the {query.level.value} level")
    if keyword in MATCHABLE:
        query.matchers.append(make_matcher(keyword, split))
    elif any(s.strip() for s in split):  # not matchable: allowed as an empty return key only
        raise InvalidQuery(f"matching on {keyword or key} is not supported")
    return tag


def _group(params: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Parameters by key, repeated keys' values together; empty keys are ignored."""
    grouped: dict[str, list[str]] = {}
    for key, value in params:
        if key.strip():
            grouped.setdefault(key.strip(), []).append(value)
    return grouped


def _paging(grouped: dict[str, list[str]]) -> tuple[int, bool, int]:
    """(page size, whether ``limit`` was given, offset), PS3.18 8.3.4.4.

    ``limit=0`` is a valid ``uint``: ``{maximumResults}`` is 0, so no match is returned
    (with the Warning of more results when something matches)."""
    for name in ("limit", "offset"):
        if len(grouped.get(name, [])) > 1:
            raise InvalidQuery(f"{name} given more than once")
    given = "limit" in grouped
    page = _uint(grouped["limit"][0], "limit", 0, MAX_RESULTS) if given else MAX_RESULTS
    offset = _uint(grouped["offset"][0], "offset", 0, MAX_OFFSET) if "offset" in grouped else 0
    return page, given, offset


def _path_matchers(query: Query, path: dict[str, str], grouped: dict[str, list[str]]) -> None:
    """The UIDs of the target resource's path (PS3.18 10.6.1.1) as single-value matchers."""
    for keyword, uid in path.items():
        if keyword in grouped or _hex(keyword) in {k.upper() for k in grouped}:
            raise InvalidQuery(f"{keyword} is given in the path")
        query.matchers.append(make_matcher(keyword, [uid]))


def parse(level: Level, params: Iterable[tuple[str, str]], path: dict[str, str]) -> QidoRequest:
    """The query and return tags of a QIDO-RS request at ``level`` (PS3.18 10.6.1).

    ``path`` maps StudyInstanceUID / SeriesInstanceUID to the UIDs of the target resource.
    """
    grouped = _group(params)
    page, limit_given, offset = _paging(grouped)
    query = Query(level, offset=offset, limit=page + 1)
    if "fuzzymatching" in grouped:
        query.fuzzy = _flag(grouped["fuzzymatching"], "fuzzymatching")
    warnings = [text for name, text in UNSUPPORTED.items()
                if name in grouped and _flag(grouped[name], name)]
    _path_matchers(query, path, grouped)
    extra, include_all = _include_tags(grouped.get("includefield", []))
    for key, values in grouped.items():
        if key not in CONTROL:
            extra.append(_attribute_matcher(query, key, values))
    tags = None if include_all and level == Level.IMAGE else return_tags(level, path, extra, include_all)
    return QidoRequest(query, tags, page, limit_given, warnings)


def return_tags(level: Level, path: dict[str, str], extra: list[str], include_all: bool) -> list[str]:
    """Tags returned per match (PS3.18 10.6.3.3): the level's defaults, those of the levels
    above when their UID is not in the path, the unique keys, matched keys and includefields.

    ``includefield=all`` at study or series level adds every attribute the archive
    supports at that level and above (the matching keys of :mod:`pacs.query.attributes`)
    and the level's computed attributes, never attributes of a lower level.
    """
    keywords: list[str] = list(_UIDS[level]) + list(_DEFAULTS[level])
    if level.depth > Level.STUDY.depth and "StudyInstanceUID" not in path:
        keywords += STUDY_DEFAULTS
    if level == Level.IMAGE and "SeriesInstanceUID" not in path:
        keywords += SERIES_DEFAULTS
    if include_all:
        keywords += [k for k, a in MATCHABLE.items() if a.level.depth <= level.depth]
        keywords += [k for k, lvl in COMPUTED.items() if lvl == level]
    tags = [_hex(k) for k in keywords] + extra
    return list(dict.fromkeys(tags))


def _strip_bulk(element: dict[str, Any]) -> dict[str, Any] | None:
    """The element without bulk data (PS3.18 10.6.3.3: no Bulkdata in search results):
    None for a BulkDataURI or InlineBinary element; sequences are cleaned item by item."""
    if "BulkDataURI" in element or "InlineBinary" in element:
        return None
    if element.get("vr") == "SQ" and element.get("Value"):
        items = [{t: e for t, e in ((t, _strip_bulk(e)) for t, e in item.items()) if e is not None}
                 for item in element["Value"] if isinstance(item, dict)]
        return {**element, "Value": items}
    return element


def _retrieve_url(level: Level, body: dict[str, Any], base: str) -> str | None:
    """RetrieveURL (0008,1190) of a match: its WADO-RS resource (PS3.18 10.4.1)."""
    uids = []
    for tag in (STUDY_UID, SERIES_UID, SOP_UID)[:level.depth]:
        value = body.get(tag, {}).get("Value") or [None]
        if not value[0]:
            return None
        uids.append(str(value[0]))
    names = ("studies", "series", "instances")
    return base + "".join(f"/{name}/{uid}" for name, uid in zip(names, uids))


def shape(level: Level, body: dict[str, Any], tags: Collection[str] | None, base: str) -> dict[str, Any]:
    """One QIDO-RS result object (PS3.18 F.2): requested tags held by the archive in tag
    order, bulk data removed, RetrieveURL and InstanceAvailability (ONLINE) added.
    ``tags``: best a set, built once per request."""
    wanted = None if tags is None else (tags if isinstance(tags, (set, frozenset)) else set(tags))
    if wanted is None or RETRIEVE_URL in wanted:
        url = _retrieve_url(level, body, base)
        if url:
            body[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    if wanted is None or INSTANCE_AVAILABILITY in wanted:
        body[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    result = {}
    for tag in sorted(body):
        if wanted is not None and tag not in wanted:
            continue
        element = body[tag]
        if element.get("vr") == "SQ" or "BulkDataURI" in element or "InlineBinary" in element:
            element = _strip_bulk(element)
        if element is not None:
            result[tag] = element
    return result
