"""Turn one attribute's query value into a :class:`Matcher` (PS3.4 C.2.2.2), for both doors.

The value syntax is the same in a C-FIND identifier and a QIDO-RS parameter once the
door has split lists (C-FIND: backslash; QIDO-RS: comma or backslash).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Mapping

from ..errors import InvalidQuery
from ..index.names import normalise_pn, normalise_time
from ..uids import lenient_uid
from .attributes import MATCHABLE, RANGE_VRS, WILDCARD_VRS, Attribute
from .model import Matcher, MatchKind

_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def _check_date(value: str, keyword: str) -> str:
    """A DA value (PS3.5 Table 6.2-1): YYYYMMDD naming a calendar day."""
    if value and not (_DA.match(value) and _is_calendar_day(value)):
        raise InvalidQuery(f"{keyword}: dates are YYYYMMDD (a calendar day)")
    return value


def _is_calendar_day(value: str) -> bool:
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return False
    return True


def _check_time(value: str, keyword: str) -> None:
    """A TM value (PS3.5 Table 6.2-1): HH[MM[SS[.F{1,6}]]], hours 00-23, minutes 00-59,
    seconds 00-60 (leap second); the colons of the ACR-NEMA form are tolerated."""
    text = value.replace(":", "")
    if not _TM.match(text) or int(text[:2]) > 23 or int(text[2:4] or 0) > 59 or int(text[4:6] or 0) > 60:
        raise InvalidQuery(f"{keyword}: times are HHMMSS.FFFFFF")


def _range(keyword: str, vr: str, value: str) -> Matcher:
    low, _, high = value.partition("-")
    if not low and not high:
        raise InvalidQuery(f"{keyword}: a range needs at least one end")
    if vr == "DA":
        low, high = _check_date(low, keyword), _check_date(high, keyword)
    elif vr == "TM":
        for part in (low, high):
            if part:
                _check_time(part, keyword)
        low, high = normalise_time(low), normalise_time(high, upper=True)
    if low and high and low > high:
        raise InvalidQuery(f"{keyword}: range start after its end")
    return Matcher(keyword, MatchKind.RANGE, (low, high))


def element_values(element: Any) -> list[str]:
    """The values of an identifier's data element as strings, for :func:`make_matcher`:
    ``[]`` for an empty (universal) key, one string per value of a multi-valued one."""
    value = element.value
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


def make_matcher(keyword: str, values: list[str], attributes: Mapping[str, Attribute] = MATCHABLE) -> Matcher:
    """The matcher for ``keyword`` given its (already split) values; [] or [''] is universal.
    ``attributes``: the matchable attributes of the information model (the archive's by
    default; the Modality Worklist model passes its own, :mod:`worklist.matching`)."""
    attr = attributes.get(keyword)
    if attr is None:
        raise InvalidQuery(f"matching on {keyword} is not supported")
    values = [v.rstrip("\x00") for v in values if v is not None]  # trailing NULs: padding
    values = [v.strip() if attr.vr != "PN" else v.strip(" ") for v in values]
    values = [v for v in values if v != ""]
    if any("\x00" in v for v in values):  # in no DICOM character repertoire; PostgreSQL refuses it
        raise InvalidQuery(f"{keyword}: a value contains a NUL character")
    if not values:
        return Matcher(keyword, MatchKind.UNIVERSAL)
    if attr.vr == "UI":
        bad = [v for v in values if not lenient_uid(v)]
        if bad:
            raise InvalidQuery(f"{keyword}: not a UID")
        return Matcher(keyword, MatchKind.UID_LIST, tuple(values)) if len(values) > 1 else (
            Matcher(keyword, MatchKind.SINGLE, values[0]))
    if len(values) > 1:
        if keyword == "ModalitiesInStudy" or attr.vr in ("CS", "SH", "LO"):
            return Matcher(keyword, MatchKind.LIST, tuple(values))
        raise InvalidQuery(f"{keyword}: only one value allowed")
    value = values[0]
    if attr.vr in RANGE_VRS and "-" in value:
        return _range(keyword, attr.vr, value)
    if attr.person_name:
        value = normalise_pn(value)
    if ("*" in value or "?" in value) and attr.vr in WILDCARD_VRS:
        if set(value) == {"*"}:
            return Matcher(keyword, MatchKind.UNIVERSAL)
        return Matcher(keyword, MatchKind.WILDCARD, value)
    return _single(keyword, attr.vr, value)


def _single(keyword: str, vr: str, value: str) -> Matcher:
    if vr == "DA":
        _check_date(value, keyword)
    elif vr == "TM":
        _check_time(value, keyword)
        # a single time matches the whole period it names (e.g. 10 = 10:00-10:59:59)
        return Matcher(keyword, MatchKind.RANGE, (normalise_time(value), normalise_time(value, upper=True)))
    elif vr == "IS":
        try:
            number = int(value)
        except ValueError:
            raise InvalidQuery(f"{keyword}: not an integer") from None
        if not -(2**31) <= number < 2**31:  # IS range (PS3.5 Table 6.2-1); larger overflows SQL
            raise InvalidQuery(f"{keyword}: integer out of range")
        return Matcher(keyword, MatchKind.SINGLE, number)
    return Matcher(keyword, MatchKind.SINGLE, value)
