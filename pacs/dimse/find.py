"""C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root, every level, on the query model.

The identifier is validated per PS3.4 C.4.1.1.3 (hierarchical search): a known
QueryRetrieveLevel for the information model, the unique keys of every level above the
query level, no keys below it. Matching keys become :class:`~pacs.query.Query` matchers;
every key of the identifier is returned, filled from the archive where it holds a value.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pydicom.uid import ImplicitVRLittleEndian

from ..errors import InvalidQuery, PacsError
from ..access import Caller
from ..query import Level, Query, element_values, make_matcher
from ..query.model import level_of
from ..query.attributes import COMPUTED, MATCHABLE, UNIQUE_KEYS, attribute_level
from ..query.run import LruCache
from .identifier import encode_identifier, needs_utf8
from .policy import refusal
from .status import CANCEL, PENDING, SUCCESS, Status, status

if TYPE_CHECKING:
    from ..query.run import Match
    from .service import DimseRequest


log = logging.getLogger(__name__)

IDENTIFIER_INVALID, UNABLE_TO_PROCESS = 0xA900, 0xC000
#: Elements of the identifier that are not matching or return keys (PS3.4 C.4.1.1.3).
CONTROL_KEYWORDS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle",
                    "TimezoneOffsetFromUTC", "QueryRetrieveView"}

QUERY_RETRIEVE_LEVEL, RETRIEVE_AE_TITLE = "00080052", "00080054"

MODELS: dict[str, tuple[Level, ...]] = {
    str(PatientRootQueryRetrieveInformationModelFind): (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    str(StudyRootQueryRetrieveInformationModelFind): (Level.STUDY, Level.SERIES, Level.IMAGE),
}


def _check_unique_keys(query: Query, levels: tuple[Level, ...]) -> None:
    """PS3.4 C.4.1.2.1: each level above the query level needs its unique key."""
    for upper in levels:
        if upper.depth >= query.level.depth:
            break
        key = UNIQUE_KEYS[upper]
        matcher = query.matcher(key)
        if matcher is None or matcher.kind.value not in ("single", "uid_list"):
            raise InvalidQuery(f"{query.level.value} level query needs {key}")


def query_from_identifier(identifier: Dataset, model: str) -> tuple[Query, list[str]]:
    """The query and the tags (8 hex digits) to return, from a C-FIND identifier."""
    levels = MODELS.get(str(model))
    if levels is None:
        raise InvalidQuery("unsupported information model")
    level = level_of(identifier, levels)
    query, tags = Query(level), []
    for elem in identifier:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if keyword in CONTROL_KEYWORDS or elem.tag.group == 0x0002:
            continue
        tags.append(f"{int(elem.tag):08X}")
        attr_level = attribute_level(keyword)
        if attr_level is not None and attr_level.depth > level.depth:
            raise InvalidQuery(f"{keyword} is below the {level.value} level")
        if elem.VR == "SQ":
            if elem.value:
                raise InvalidQuery(f"sequence matching on {keyword} is not supported")
            continue
        values = element_values(elem)
        if keyword in MATCHABLE:
            query.matchers.append(make_matcher(keyword, values))
        elif values and keyword not in COMPUTED:
            raise InvalidQuery(f"matching on {keyword or elem.tag} is not supported")
    _check_unique_keys(query, levels)
    return query, tags


#: Whole encoded identifiers, by (Match.stored_key, the computed values, level, AE title,
#: implicit VR): a repeated query over unchanged studies encodes nothing.
RESPONSES = LruCache(20_000)


def _empty(tag: str) -> dict[str, Any]:
    """A requested key the archive holds no value for: returned empty (PS3.4 C.4.1.1.3.2)."""
    try:
        vr = dictionary_VR(int(tag, 16))
    except KeyError:  # private or unknown: return it empty as UN
        vr = "UN"
    return {"vr": vr.split(" or ")[0]}


def _response(match: Match, tags: list[str], level: Level, ae_title: str, implicit_vr: bool) -> bytes:
    """The identifier of one pending response, encoded from the stored DICOM JSON: every
    requested key (empty when the archive holds no value), the Query/Retrieve Level and
    the Retrieve AE Title; UTF-8 (ISO_IR 192) when any text is not ASCII. Cached
    (:data:`RESPONSES`) when the match names its stored part."""
    if match.stored_key is None:
        return _encode(match.json, tags, level, ae_title, implicit_vr)
    computed = tuple([(tag, str(match.json[tag].get("Value"))) for tag in sorted(match.computed)])
    # Only strings, numbers and tuples of them: the collector stops tracking such keys.
    key = (match.stored_key, computed, level.value, ae_title, implicit_vr)
    identifier = RESPONSES.get(key)
    if identifier is None:
        identifier = _encode(match.json, tags, level, ae_title, implicit_vr)
        RESPONSES.put(key, identifier)
    return identifier


def _encode(body: dict[str, Any], tags: list[str], level: Level, ae_title: str, implicit_vr: bool) -> bytes:
    """:func:`_response` without the cache."""
    body = {**body, **{tag: _empty(tag) for tag in tags if tag not in body}}
    body[QUERY_RETRIEVE_LEVEL] = {"vr": "CS", "Value": [level.value]}
    body[RETRIEVE_AE_TITLE] = {"vr": "AE", "Value": [ae_title]}
    return encode_identifier(body, implicit_vr=implicit_vr, charset="ISO_IR 192" if needs_utf8(body) else None)


def handle_find(request: DimseRequest) -> None:
    """C-FIND (PS3.4 C.4.1.2): a pending response (0xFF00) per match, then success.

    Statuses: 0x0124 calling AE not allowed to query (AE policy); 0xA900 identifier does
    not match the SOP class (invalid level, missing unique keys, keys below the level,
    unsupported matching), 0xC000 unable to process, 0xFE00 cancelled (checked before
    every pending response).
    """
    archive = request.archive
    outcome = _matches_or_failure(request)
    if isinstance(outcome, Status):
        request.respond(outcome)
        return
    query, tags, matches = outcome
    implicit_vr = request.context.transfer_syntax == ImplicitVRLittleEndian
    for match in matches:
        if request.cancelled():
            request.respond(Status(CANCEL))
            return
        identifier = _response(match, tags, query.level, archive.settings.ae_title, implicit_vr)
        request.respond(Status(PENDING), dataset=identifier, defer=True)
    request.respond(Status(SUCCESS))


def _matches_or_failure(request: DimseRequest) -> Status | tuple[Query, list[str], list[Match]]:
    refused = refusal(request, request.archive, "find")
    if refused is not None:
        return refused
    try:
        query, tags = query_from_identifier(request.identifier(), request.sop_class)
        caller = Caller.for_ae(request.calling_ae, "read")  # admitted by the AE policy above
        return query, tags, request.archive.search(query, tags, caller=caller)
    except InvalidQuery as exc:
        return status(IDENTIFIER_INVALID, exc)
    except PacsError as exc:
        return status(exc.dimse_status if exc.dimse_status != 0xA700 else UNABLE_TO_PROCESS, exc)
    except Exception:
        log.exception("C-FIND failed")
        return status(UNABLE_TO_PROCESS, "internal error")
