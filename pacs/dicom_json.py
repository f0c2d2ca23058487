"""Fast DICOM JSON (PS3.18 F.2) for datasets read by pydicom.

:func:`dataset_to_json_dict` returns the same document as pydicom's
``Dataset.to_json_dict`` (F.2.2 attribute objects keyed by tag, F.2.3 "vr" and "Value",
F.2.4 no value key when empty, F.2.7 InlineBinary or BulkDataURI) but converts the
common elements straight from the bytes pydicom left unconverted in ``ds._dict``.
A fast conversion only takes values it is sure of; anything else (a value pydicom would
reject, an odd VR or character set, an escape sequence, a wrong length, bulk data, an
error) goes to pydicom's own conversion of that element at the same point of the walk,
so dropped elements and the order of bulk data handler calls are pydicom's.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import orjson
from pydicom import config, valuerep
from pydicom import hooks as default_hooks
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import IS, DSfloat, PersonName

JsonDict = dict[str, Any]
BulkHandler = Callable[[DataElement], str]

#: Codecs for the first character set pydicom decodes with: default, ISO_IR 100, ISO_IR 192.
_CODECS = {"iso8859": "latin-1", "latin_1": "latin-1", "UTF8": "utf-8"}
#: Maximum value lengths (in characters) pydicom checks when reading (PS3.5 table 6.2-1).
_MAX_LEN = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
#: LUT Descriptor tags, whose first value pydicom reinterprets as unsigned (PS3.3 C.11.1.1.1).
_LUT_DESCRIPTORS = frozenset((0x00281101, 0x00281102, 0x00281103, 0x00283002))
_UI_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DS_RE = re.compile(r"[+-]?([0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_IS_RE = re.compile(r" *[+-]?[0-9]+ *")
_NUMBERS = {"US": ("H", 2), "SS": ("h", 2), "UL": ("L", 4), "SL": ("l", 4),
            "UV": ("Q", 8), "SV": ("q", 8), "FL": ("f", 4), "FD": ("d", 8)}
_STRING_VRS = frozenset("AE AS CS DA DT TM UI LO SH UC LT ST UT UR".split())
logger = logging.getLogger(__name__)


def to_json_text(body: Any) -> str:
    """DICOM JSON as compact UTF-8 text, as stored in the index: orjson (a tenth of
    ``json.dumps``' time on a typical instance: ~4 instead of ~46 µs), whose output is
    byte for byte that of ``json.dumps(body, separators=(",", ":"), ensure_ascii=False)``
    except that a non-finite float becomes ``null`` (``NaN`` is not JSON; PS3.18 F.2.3).
    Integers beyond 64 bits, which orjson refuses, fall back to ``json.dumps``."""
    try:
        return orjson.dumps(body).decode()
    except TypeError:  # orjson.JSONEncodeError derives from TypeError
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def dataset_to_json_dict(
    ds: Dataset, *, bulk_data_threshold: int = 1024,
    bulk_data_element_handler: BulkHandler | None = None, suppress_invalid_tags: bool = False,
) -> JsonDict:
    """``ds`` as a DICOM JSON Model object (PS3.18 F.2), equal to pydicom's
    ``ds.to_json_dict(...)`` with the same arguments; like it, elements read from the
    file may be converted in place. A value longer than ``bulk_data_threshold`` once
    base64 encoded goes to ``bulk_data_element_handler`` for its BulkDataURI (F.2.7)."""
    if not pydicom_defaults():
        return ds.to_json_dict(bulk_data_threshold, bulk_data_element_handler, suppress_invalid_tags)
    walker = _Walker(bulk_data_element_handler, bulk_data_threshold)
    with config.strict_reading() if suppress_invalid_tags else nullcontext():
        return walker.dataset(ds, suppress_invalid_tags)


def pydicom_defaults() -> bool:
    """Whether pydicom converts values the way the fast paths assume (default config)."""
    hooks = default_hooks.hooks
    return (
        config.data_element_callback is None and not hooks.raw_element_kwargs
        and hooks.raw_element_vr is default_hooks.raw_element_vr
        and hooks.raw_element_value is default_hooks.raw_element_value
        and not (config.datetime_conversion or config.use_DS_numpy or config.use_IS_numpy)
        and not (config.use_DS_decimal or config.use_none_as_empty_text_VR_value)
        and valuerep.DSclass is DSfloat
    )


class _Walker:
    """Walks a dataset and its sequence items in pydicom's element order (F.2.1)."""

    def __init__(self, handler: BulkHandler | None, threshold: int) -> None:
        self.handler, self.threshold = handler, threshold
        # Base64 makes a value 4/3 longer (F.2.7): bytes beyond this go to the handler.
        self.limit = (threshold // 4) * 3 if handler is not None else None

    def dataset(self, ds: Dataset, suppress: bool) -> JsonDict:
        """One dataset; a failing element is dropped if ``suppress``, else raised."""
        out: JsonDict = {}
        codec, limit, elements = _dataset_codec(ds), self.limit, ds._dict
        for tag in list(elements):
            elem = elements[tag]
            try:
                try:
                    raw = type(elem) is RawDataElement
                    body = _raw_json(elem, codec, limit) if raw else _converted_json(elem)
                except Exception:  # anything unexpected: pydicom's conversion decides
                    body = None
                if body is None:
                    body = self.by_pydicom(ds, tag)
            except Exception as exc:
                if not suppress:
                    raise
                logger.warning("element %08X left out of DICOM JSON: %s", tag, exc)
                continue
            out[f"{tag:08X}"] = body
        return out

    def by_pydicom(self, ds: Dataset, tag: int) -> JsonDict:
        """One attribute object (F.2.2) from pydicom's conversion of the element."""
        full = ds[tag]
        if full.VR == "SQ":  # items are nested datasets (F.2.2), not suppressed by pydicom
            return {"vr": "SQ", "Value": [self.dataset(item, False) for item in full.value]}
        return full.to_json_dict(self.handler, self.threshold)


def _dataset_codec(ds: Dataset) -> str | None:
    """The codec pydicom decodes this dataset's raw text with, if a fast one."""
    encodings = ds.original_character_set or [""]
    return _CODECS.get(encodings if isinstance(encodings, str) else encodings[0])


@lru_cache(maxsize=4096)
def implicit_vr(tag: int) -> str | None:
    """The dictionary VR of a public tag read as implicit VR ("US or SS" etc. have no
    converter here: pydicom resolves them); private tags are pydicom's too."""
    try:
        return None if (tag >> 16) & 1 else dictionary_VR(tag)
    except KeyError:
        return None


def _raw_json(raw: RawDataElement, codec: str | None, limit: int | None) -> JsonDict | None:
    """A not-yet-converted element straight from its bytes, or None if unsure."""
    vr = raw.VR if raw.VR is not None else implicit_vr(int(raw.tag))
    return raw_value_json(int(raw.tag), vr, raw.length, raw.value, codec, raw.is_little_endian, limit)


def raw_value_json(
    tag: int, vr: str | None, length: int, value: bytes | None, codec: str | None,
    little: bool, limit: int | None,
) -> JsonDict | None:
    """The attribute object (F.2.2) of an element's encoded value, or None if unsure.

    ``vr`` is the explicit VR or, for implicit VR, :func:`implicit_vr`; ``codec`` the
    Python codec of the dataset's character set (None if not a fast one); ``limit`` the
    value length beyond which binary data is bulk data (also None: left to pydicom)."""
    convert = _CONVERTERS.get(vr)  # type: ignore[arg-type]
    if convert is None or length == 0xFFFFFFFF or tag in _LUT_DESCRIPTORS:
        return None
    if length == 0:
        return {"vr": vr}  # F.2.4: empty value, no "Value"
    if not value:
        return None  # deferred or truncated
    return convert(value, vr, codec, little, limit)


def _values(vr: str, values: list) -> JsonDict:
    """An attribute object from split string values; one empty value is no value."""
    return {"vr": vr} if len(values) == 1 and not values[0] else {"vr": vr, "Value": values}


def _plain(value: bytes, vr: str, *_: Any) -> JsonDict | None:
    """AS, CS, DA, DT, TM (default repertoire, trailing padding dropped), AE (spaces
    around each value dropped), UR (one value, trailing spaces dropped)."""
    text = value.decode("latin-1")
    if vr == "AE":
        return _values(vr, [v.strip() for v in text.split("\\")])
    return _values(vr, [text.rstrip()] if vr == "UR" else text.rstrip(" \x00").split("\\"))


def _ui(value: bytes, vr: str, *_: Any) -> JsonDict | None:
    """UI: only values pydicom accepts unchanged (PS3.5 9.1, at most 64 chars)."""
    values = value.decode("latin-1").rstrip("\x00 ").split("\\")
    if any(v and (len(v) > 64 or not _UI_RE.fullmatch(v)) for v in values):
        return None
    return _values(vr, values)


def _ds(value: bytes, vr: str, *_: Any) -> JsonDict | None:
    """DS as JSON numbers (F.2.3.1); any empty or invalid value is left to pydicom."""
    text = value.decode("latin-1").strip().rstrip(" \x00")
    if not text:
        return {"vr": vr}
    items = [v.strip() for v in text.split("\\")] if " " in text else text.split("\\")
    if max(map(len, items)) > 16 or not all(map(_DS_RE.fullmatch, items)):
        return None
    return {"vr": vr, "Value": list(map(float, items))}


def _is(value: bytes, vr: str, *_: Any) -> JsonDict | None:
    """IS as JSON numbers (F.2.3.1); any empty or invalid value is left to pydicom."""
    text = value.decode("latin-1").rstrip(" \x00")
    if not text:
        return {"vr": vr}
    items = text.split("\\")
    if max(map(len, items)) > 12 or not all(map(_IS_RE.fullmatch, items)):
        return None
    numbers = list(map(int, items))
    if not -(2**31) <= min(numbers) <= max(numbers) < 2**31:
        return None
    return {"vr": vr, "Value": numbers}


def _text(value: bytes, vr: str, codec: str | None, *_: Any) -> JsonDict | None:
    """SH, LO, UC (multi-valued) and ST, LT, UT (one value) in the dataset's character set."""
    if codec is None or 0x1B in value:
        return None
    text = value.decode(codec)
    parts = [text] if vr in ("ST", "LT", "UT") else text.split("\\")
    if max(map(len, parts)) > _MAX_LEN.get(vr, len(text)):
        return None
    return _values(vr, [p.rstrip("\x00 ") for p in parts])


def _pn(value: bytes, vr: str, codec: str | None, *_: Any) -> JsonDict | None:
    """PN as Alphabetic/Ideographic/Phonetic objects (F.2.2, table F.2.2-1)."""
    if codec is None or 0x1B in value:
        return None
    names = []
    for name in value.rstrip(b"\x00 ").decode(codec).split("\\"):
        groups = name.split("=")
        if len(groups) > 3 or max(map(len, groups)) > 64:
            return None
        while groups and not groups[-1]:
            groups.pop()
        if not groups:
            return None
        names.append(_pn_groups(groups))
    return {"vr": vr, "Value": names}


def _pn_groups(groups: Iterable[str]) -> dict[str, str]:
    """The PN component groups keyed by their names (F.2.2)."""
    return dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups))


def _numbers(value: bytes, vr: str, _codec: Any, little: bool, *_: Any) -> JsonDict | None:
    """US, SS, UL, SL, UV, SV, FL, FD as JSON numbers in the dataset's byte order."""
    code, size = _NUMBERS[vr]
    count, rest = divmod(len(value), size)
    if rest:
        return None
    return {"vr": vr, "Value": list(struct.unpack(f"{'<' if little else '>'}{count}{code}", value))}


def _at(value: bytes, vr: str, _codec: Any, little: bool, *_: Any) -> JsonDict | None:
    """AT as 8-digit uppercase hex strings (F.2.3.1)."""
    count, rest = divmod(len(value), 4)
    if rest:
        return None
    half = struct.unpack(f"{'<' if little else '>'}{2 * count}H", value)
    return {"vr": vr, "Value": [f"{g << 16 | e:08X}" for g, e in zip(half[::2], half[1::2])]}


def _binary(value: bytes, vr: str, _codec: Any, _little: bool, limit: int | None) -> JsonDict | None:
    """OB, OD, OF, OL, OV, OW inline as base64 (F.2.7); bulk data is left to pydicom."""
    if limit is not None and len(value) > limit:
        return None
    return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}


#: Raw-value converters: (value bytes, VR, text codec or None, little endian, bulk limit).
_CONVERTERS: dict[str, Callable[..., JsonDict | None]] = {
    **dict.fromkeys(("AE", "AS", "CS", "DA", "DT", "TM", "UR"), _plain),
    **dict.fromkeys(("SH", "LO", "UC", "ST", "LT", "UT"), _text),
    **dict.fromkeys(_NUMBERS, _numbers),
    **dict.fromkeys(("OB", "OD", "OF", "OL", "OV", "OW"), _binary),
    "UI": _ui, "DS": _ds, "IS": _is, "PN": _pn, "AT": _at,
}


def _converted_json(elem: DataElement) -> JsonDict | None:
    """An element pydicom already converted, for plain value types; else None."""
    vr, value = elem.VR, elem.value
    kind = _CONVERTED.get(vr)
    if kind is None:
        return _converted_pn(value) if vr == "PN" else None
    types, cast = kind
    if type(value) in types:  # a single value: VM 1, or VM 0 for an empty string (F.2.4)
        if vr in _STRING_VRS and not value:
            return {"vr": vr}
        return {"vr": vr, "Value": [cast(value) if cast else value]}
    values = _same_type(value, types, cast)
    return None if values is None else {"vr": vr, "Value": values}


#: Value types of converted elements taken as they are, and the JSON number type.
_CONVERTED: dict[str, tuple[tuple[type, ...], Callable | None]] = {
    **dict.fromkeys(_STRING_VRS, ((str, UID), None)),
    **dict.fromkeys(("US", "SS", "UL", "SL", "UV", "SV"), ((int,), None)),
    **dict.fromkeys(("FL", "FD"), ((float,), None)),
    "DS": ((DSfloat,), float), "IS": ((IS,), int),
}


def _same_type(value: Any, types: tuple[type, ...], cast: Callable | None = None) -> list | None:
    """``value``'s values as a list if it is a multi-value (VM > 1) of exactly ``types``."""
    if type(value) in (MultiValue, list) and len(value) > 1 and all(type(v) in types for v in value):
        return [cast(v) for v in value] if cast else list(value)
    return None


def _converted_pn(value: Any) -> JsonDict | None:
    """A converted PN value: empty, or each name with its component groups."""
    if type(value) is PersonName and not value:
        return {"vr": "PN"}  # VM 0 (F.2.4)
    names = [value] if type(value) is PersonName else _same_type(value, (PersonName,))
    if names is None or any(not n.components for n in names):
        return None
    return {"vr": "PN", "Value": [_pn_groups(n.components) for n in names]}
