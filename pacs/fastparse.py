"""Single-pass header parse at ingest: the fast path of :func:`pacs.parse.parse_instance`.

One walk over the bytes of a Part 10 object held in memory up to Pixel Data (PS3.10 7.1:
128-byte preamble, "DICM", File Meta group in Explicit VR Little Endian), for datasets in
Explicit or Implicit VR Little Endian (PS3.5 A.2, A.1). Every data element (PS3.5 7.1.2,
7.1.3) is checked to fit in the object and in its item, and sequences and items of defined
and undefined length (PS3.5 7.5) are followed, which is what :mod:`pacs.structure` proves
for the header; its walk is kept for Pixel Data and what follows it. Values become DICOM
JSON (PS3.18 F.2) through the raw value converters of :mod:`pacs.dicom_json`, binary
values too long for InlineBinary as ``bulk:<n>`` BulkDataURIs with their byte ranges
(F.2.7), and the index attributes are read from that JSON as the reference reads them.

The result must equal :func:`pacs.parse.parse_instance_reference` (pydicom) exactly, so
the walk only reads what it knows pydicom reads the same way. Anything else raises
:class:`Declined` and the caller uses the reference instead: another transfer syntax, a
Specific Character Set other than none, ISO_IR 100 or ISO_IR 192, VR UN or a VR the file
does not decide (implicit VR "US or SS", "OB or OW"), private tags in implicit VR, an
undefined length other than a sequence's or Pixel Data's, elements out of order, a
Command Set group, a value the fast converters leave to pydicom, and every error: the
reference decides which refusal (:class:`~pacs.errors.InvalidInstance`) to report.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, BinaryIO

from pydicom import config
from pydicom.uid import UID

from .dicom_json import implicit_vr, pydicom_defaults, raw_value_json, to_json_text
from .errors import InvalidInstance
from .parse import (
    BULK_PREFIX,
    ParsedInstance,
    _extract_index_values,
    _is_image_class,
    _locate_pixel_data,
    add_pixel_data_json,
)
from .structure import check_structure
from .uids import lenient_uid, validate_uid

logger = logging.getLogger(__name__)

EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
#: Transfer syntaxes read here: their datasets are Implicit VR or Explicit VR Little Endian
#: (PS3.5 A.1, A.2; encapsulated pixel data A.4: JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG).
_TRANSFER_SYNTAXES = {str(uid): uid for uid in map(UID, (
    IMPLICIT_LE, EXPLICIT_LE, *(f"1.2.840.10008.1.2.4.{n}" for n in (
        "50 51 57 70 80 81 90 91 92 93 201 202 203 100 100.1 101 101.1 102 102.1 103 103.1 "
        "104 104.1 105 105.1 106 106.1 107 108").split()), "1.2.840.10008.1.2.5",
))}
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
PIXEL_DATA, FLOAT_PIXEL_DATA = 0x7FE00010, 0x7FE00008  # pydicom stops before 7FE0,0008-0010
CHARSET, META_SOP_INSTANCE, META_TRANSFER_SYNTAX = 0x00080005, 0x00020003, 0x00020010
#: Top-level UIDs ingest validates (pydicom converts them before the JSON is made).
UID_TAGS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID",
            0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID"}
#: Specific Character Set values taken here, and the codec pydicom decodes text with.
_CODECS = {b"": "latin-1", b"ISO_IR 100": "latin-1", b"ISO_IR 192": "utf-8"}
_VRS = {vr.encode(): vr for vr in (
    "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    "UR US UT UV").split()}
#: VRs with 2 reserved bytes and a 4-byte length in Explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_BINARY_VRS = frozenset("OB OD OF OL OV OW".split())
#: VRs decoded with the character set (PS3.5 6.1.2.3), and sequences, whose items inherit it.
_CHARSET_VRS = frozenset("SH LO UC ST LT UT PN SQ".split())
#: Binary values longer than this are bulk data: over 1024 characters in base64 (F.2.7).
BULK_LIMIT = (1024 // 4) * 3
MAX_DEPTH = 16
FIRST_READ = 32768
_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_TAG_LENGTH = struct.Struct("<HHL").unpack_from
_U32 = struct.Struct("<L").unpack_from
#: Attributes pixel data location reads, and their DICOM JSON keys.
_PIXEL_KEYS = {"Rows": "00280010", "Columns": "00280011", "BitsAllocated": "00280100",
               "SamplesPerPixel": "00280002", "PhotometricInterpretation": "00280004"}

#: Objects parsed here, declined to the reference, and failed here (a bug: also declined).
counts = {"fast": 0, "declined": 0, "failed": 0}
#: DICOM JSON of recently seen elements, by their encoded bytes (header and value) and
#: the character set, which decide it: the instances of a series repeat most of their
#: attributes (patient, study, equipment, acquisition), so most elements are converted
#: once per series, not once per instance. Emptied when full. The attribute dicts are
#: shared: nothing may change them after the parse. The VR encoding needs no place in the
#: key: bytes that are an explicit VR element read, as implicit VR, as a length of at
#: least 0x4141 (the VR's letters), far above ELEMENT_CACHED_BYTES.
_ELEMENTS: dict[tuple[bytes, str], tuple[str, dict[str, Any]]] = {}
ELEMENTS_KEPT = 4096
#: Longer elements are converted every time (they rarely repeat and would crowd the cache).
ELEMENT_CACHED_BYTES = 256


class Declined(Exception):
    """The fast path cannot promise the reference's result for this object."""


class _NeedMore(Exception):
    """The walk needs the object's bytes up to ``end``, more than were read."""

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end


def try_fast_parse(fp: BinaryIO, size: int) -> ParsedInstance | None:
    """``parse_instance`` of the object in ``fp`` (``size`` bytes) in one pass, or None
    with ``fp`` back where it was when the reference must parse it instead."""
    start = fp.tell()
    try:
        if start != 0 or not pydicom_defaults() or config.settings.reading_validation_mode == config.RAISE:
            raise Declined("not at the start of the object, or pydicom not in its default configuration")
        parsed = _parse(fp, size)
    except Declined as exc:
        counts["declined"] += 1
        logger.debug("fast header parse declined: %s", exc)
    except Exception:  # noqa: BLE001 - a bug here must not refuse an object: the reference decides
        counts["failed"] += 1
        logger.warning("fast header parse failed; using the reference parse", exc_info=True)
    else:
        counts["fast"] += 1
        return parsed
    fp.seek(start)
    return None


def _parse(fp: BinaryIO, size: int) -> ParsedInstance:
    """Read the header into memory, more whenever the walk needs it, and parse it."""
    buf = fp.read(min(size, FIRST_READ))
    while True:
        try:
            return _parse_header(buf, fp, size)
        except _NeedMore as more:
            target = min(size, max(more.end + FIRST_READ, 2 * len(buf)))
            fp.seek(len(buf))
            buf += fp.read(target - len(buf))
            if len(buf) != target:
                raise Declined("the object is shorter than its size") from None


def _parse_header(buf: bytes, fp: BinaryIO, size: int) -> ParsedInstance:
    """The whole parse, given the object's first bytes ``buf`` (PS3.10 7.1)."""
    pos, ts, media_sop = _file_meta(buf, size)
    walker = _Walker(buf, size, explicit=ts != IMPLICIT_LE)
    body, pixel_pos = walker.top(pos)
    parsed = _identify(ts, walker.uids, media_sop)
    parsed.bulk_ranges = walker.bulk
    parsed.patient, parsed.study, parsed.series, parsed.instance = _extract_index_values(body)
    _pixel_data(fp, pixel_pos, size, ts, body, parsed)
    add_pixel_data_json(body, parsed, compressed=_TRANSFER_SYNTAXES[ts].is_compressed)
    parsed.dicom_json = to_json_text(body)
    return parsed


def _need(buf: bytes, end: int, size: int) -> None:
    """Decline if the object ends before ``end``; ask for more bytes if ``buf`` does."""
    if end > size:
        raise Declined("an element runs past the end of the object")
    if end > len(buf):
        raise _NeedMore(end)


def _file_meta(buf: bytes, size: int) -> tuple[int, str, str]:
    """Dataset offset, transfer syntax and MediaStorageSOPInstanceUID from the preamble,
    prefix and File Meta group (PS3.10 7.1), read as pydicom and ``dataset_start`` do."""
    _need(buf, 132, size)
    if buf[128:132] != b"DICM":
        raise Declined("no preamble and DICM prefix")
    pos, last, meta = 132, -1, {}
    while pos + 8 <= size:
        _need(buf, pos + 8, size)
        group, elem, vr_bytes, length = _EXPLICIT(buf, pos)
        if group != 2:
            break
        tag, vr = group << 16 | elem, _VRS.get(vr_bytes)
        if vr is None or tag <= last:
            raise Declined("unusual File Meta element")
        last, pos = tag, pos + 8
        if vr in _LONG_VRS:
            _need(buf, pos + 4, size)
            length, pos = _U32(buf, pos)[0], pos + 4
        _need(buf, pos + length, size)  # also declines an undefined length
        if tag in (META_SOP_INSTANCE, META_TRANSFER_SYNTAX):
            if vr != "UI":
                raise Declined("File Meta UID not a UI")
            meta[tag] = buf[pos:pos + length].decode("latin-1").rstrip("\x00 ")
        pos += length
    ts, media_sop = meta.get(META_TRANSFER_SYNTAX), meta.get(META_SOP_INSTANCE, "")
    if ts not in _TRANSFER_SYNTAXES:
        raise Declined(f"transfer syntax {ts!r} not read here")
    if "\\" in media_sop:
        raise Declined("refused by the reference: MediaStorageSOPInstanceUID has several values")
    return pos, ts, media_sop.strip()  # as pydicom's UID keeps it


def _identify(ts: str, uids: dict[int, str], media_sop: str) -> ParsedInstance:
    """A ParsedInstance with the validated UIDs, as the reference validates them."""
    try:
        parsed = ParsedInstance(
            transfer_syntax_uid=ts,
            sop_class_uid=validate_uid(uids.get(0x00080016), "SOPClassUID"),
            sop_instance_uid=validate_uid(uids.get(0x00080018), "SOPInstanceUID"),
            study_uid=validate_uid(uids.get(0x0020000D), "StudyInstanceUID"),
            series_uid=validate_uid(uids.get(0x0020000E), "SeriesInstanceUID"),
            patient={}, study={}, series={}, instance={},
        )
    except InvalidInstance as exc:
        raise Declined(f"refused by the reference: {exc}") from exc
    if media_sop and media_sop != parsed.sop_instance_uid:
        raise Declined("refused by the reference: MediaStorageSOPInstanceUID differs")
    return parsed


def _pixel_data(fp: BinaryIO, pos: int, size: int, ts: str, body: dict, parsed: ParsedInstance) -> None:
    """The structure of Pixel Data and what follows (PS3.5 7.1, A.4), and its byte ranges,
    by the reference's own functions: they read a few element headers from ``fp``."""
    if pos >= size:
        if parsed.instance.get("rows") and _is_image_class(parsed.sop_class_uid):
            raise Declined("refused by the reference: image without Pixel Data")
        return
    try:
        check_structure(fp, pos, size, explicit=ts != IMPLICIT_LE, little=True)
        _locate_pixel_data(fp, pos, size, _TRANSFER_SYNTAXES[ts], _JsonAttributes(body), parsed)
    except InvalidInstance as exc:
        raise Declined(f"refused by the reference: {exc}") from exc


class _JsonAttributes:
    """``Dataset.get`` for the attributes pixel data location reads, from the JSON."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def get(self, keyword: str, default: Any = None) -> Any:
        """The single value as pydicom gives it; an empty or multiple value declines."""
        attribute = self.body.get(_PIXEL_KEYS[keyword])
        if attribute is None:
            return default
        values = attribute.get("Value")
        if not values or len(values) != 1 or type(values[0]) not in (int, str):
            raise Declined(f"{keyword} is not one number or text")
        return values[0]


class _Walker:
    """One pass over the dataset's elements in ``buf`` (PS3.5 7.1, 7.5), making the
    DICOM JSON (PS3.18 F.2) of each dataset and item in file order, as pydicom orders it."""

    def __init__(self, buf: bytes, size: int, explicit: bool) -> None:
        self.buf, self.size, self.explicit = buf, size, explicit
        self.bulk: list[list[int]] = []
        self.uids: dict[int, str] = {}
        self.depth = 0
        self.defined = 0  # enclosing sequences of defined length

    def top(self, pos: int) -> tuple[dict[str, Any], int]:
        """The top-level dataset up to Pixel Data: its JSON and the offset it stopped at.
        Like pydicom, the first element's VR bytes tell explicit from implicit VR."""
        if pos + 6 <= self.size:
            _need(self.buf, pos + 6, self.size)
            first = self.buf[pos:pos + 6]
            if first[:2] == b"\0\0":
                raise Declined("a Command Set group precedes the dataset")
            if (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B) != self.explicit:
                raise Declined("the dataset's VR encoding differs from its transfer syntax")
        return self.dataset(pos, None, "latin-1", top=True)

    def header(self, pos: int) -> tuple[int, str, int, int]:
        """Tag, VR, value length and value offset of the element at ``pos`` (PS3.5 7.1)."""
        buf = self.buf
        if pos + 12 > len(buf):  # near the end of the bytes read: is the header there?
            _need(buf, pos + 8, self.size)
        if self.explicit:
            group, elem, vr_bytes, length = _EXPLICIT(buf, pos)
            vr = _VRS.get(vr_bytes)
            if vr is not None and group != 0xFFFE:
                if vr not in _LONG_VRS:
                    return group << 16 | elem, vr, length, pos + 8
                _need(buf, pos + 12, self.size)
                return group << 16 | elem, vr, _U32(buf, pos + 8)[0], pos + 12
            if group != 0xFFFE:
                raise Declined(f"VR {vr_bytes!r} at offset {pos}")
            return group << 16 | elem, "", _U32(buf, pos + 4)[0], pos + 8
        group, elem, length = _TAG_LENGTH(buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:
            return tag, "", length, pos + 8
        vr = implicit_vr(tag)
        if vr is None:
            raise Declined(f"no dictionary VR for ({tag:08X}) in implicit VR")
        return tag, vr, length, pos + 8

    def dataset(self, pos: int, end: int | None, codec: str, top: bool = False) -> tuple[dict, int]:
        """Elements from ``pos`` to ``end`` (item of defined length), to the Item Delimitation
        Item (undefined length, PS3.5 7.5.2) or, at the top, to Pixel Data or the end."""
        out: dict[str, Any] = {}
        buf, header, stop, last = self.buf, self.header, self.size if end is None else end, -1
        while pos < stop:
            start = pos
            tag, vr, length, pos = header(pos)
            if tag <= last or tag >> 16 == 0xFFFE:
                if tag == ITEM_END and end is None and not top:
                    return out, pos
                raise Declined(f"({tag:08X}) out of order or out of place")
            last = tag
            if top and FLOAT_PIXEL_DATA <= tag <= PIXEL_DATA:
                if tag != PIXEL_DATA:
                    raise Declined("Float or Double Float Pixel Data")
                return out, start
            if length == UNDEFINED or vr == "SQ":
                out[f"{tag:08X}"], pos = self.sequence_element(tag, vr, pos, length, stop, codec)
                continue
            if pos + length > stop:
                raise Declined(f"({tag:08X}) runs past its item or the object")
            if pos + length > len(buf):
                raise _NeedMore(pos + length)
            if tag == CHARSET:
                codec = self.charset(vr, out, pos, length)
            if top and tag in UID_TAGS:
                out[f"{tag:08X}"] = self.uid(tag, vr, pos, length)
            elif length > BULK_LIMIT and vr in _BINARY_VRS:
                out[f"{tag:08X}"] = self.bulk_uri(vr, pos, length)
            else:
                key, attribute = self.element(buf, start, tag, vr, pos, length, codec)
                out[key] = attribute
            pos += length
        if end is None and not top:
            raise Declined("item without its delimitation item")
        return out, pos

    def element(self, buf: bytes, start: int, tag: int, vr: str, pos: int, length: int,
                codec: str) -> tuple[str, dict[str, Any]]:
        """The JSON key and attribute of the element from ``start`` to the end of its value
        at ``pos + length``, by the reference's converter; from :data:`_ELEMENTS` when seen."""
        cacheable = pos + length - start <= ELEMENT_CACHED_BYTES
        if cacheable:
            cache_key = (buf[start:pos + length], codec)
            seen = _ELEMENTS.get(cache_key)
            if seen is not None:
                return seen
        try:  # the reference's converter: None or an error leaves the value to pydicom
            attribute = raw_value_json(tag, vr, length, buf[pos:pos + length], codec, True, BULK_LIMIT)
        except Exception as exc:  # noqa: BLE001 - e.g. UnicodeDecodeError
            raise Declined(f"({tag:08X}) {vr} value left to pydicom: {exc}") from exc
        if attribute is None:
            raise Declined(f"({tag:08X}) {vr} value left to pydicom")
        converted = f"{tag:08X}", attribute
        if cacheable:
            if len(_ELEMENTS) >= ELEMENTS_KEPT:
                _ELEMENTS.clear()
            _ELEMENTS[cache_key] = converted
        return converted

    def sequence_element(self, tag: int, vr: str, pos: int, length: int, stop: int,
                         codec: str) -> tuple[dict, int]:
        """A sequence of undefined or defined length (PS3.5 7.5), within ``stop``."""
        if vr != "SQ":
            raise Declined(f"undefined length {vr} ({tag:08X})")
        if length == UNDEFINED:
            return self.sequence(pos, None, codec)
        if pos + length > stop:
            raise Declined(f"({tag:08X}) runs past its item or the object")
        return self.sequence(pos, pos + length, codec)

    def sequence(self, pos: int, end: int | None, codec: str) -> tuple[dict, int]:
        """A sequence's items (PS3.5 7.5.1), to ``end`` or the Sequence Delimitation Item."""
        self.depth, self.defined = self.depth + 1, self.defined + (end is not None)
        if self.depth > MAX_DEPTH:
            raise Declined("sequences nested too deeply")
        stop, items = self.size if end is None else end, []
        while end is None or pos < end:
            if pos + 8 > stop:
                raise Declined("sequence truncated or items overrun it")
            _need(self.buf, pos + 8, self.size)
            group, elem, length = _TAG_LENGTH(self.buf, pos)
            tag, pos = group << 16 | elem, pos + 8
            if tag == SEQ_END and end is None:
                break
            if tag != ITEM:
                raise Declined(f"({tag:08X}) where an item was expected")
            if length == UNDEFINED:
                item, pos = self.dataset(pos, None, codec)
            elif pos + length > stop:
                raise Declined("item runs past its sequence or the object")
            else:
                item, pos = self.dataset(pos, pos + length, codec)
            items.append(item)
        self.depth, self.defined = self.depth - 1, self.defined - (end is not None)
        return {"vr": "SQ", "Value": items}, pos

    def charset(self, vr: str, out: dict[str, Any], pos: int, length: int) -> str:
        """The codec of a Specific Character Set value (PS3.3 C.12.1.1.2), if one of ours
        and set before any text or sequence was read (pydicom would decode those apart)."""
        codec = _CODECS.get(self.buf[pos:pos + length].rstrip(b" "))
        if vr != "CS" or codec is None:
            raise Declined("Specific Character Set other than none, ISO_IR 100 or ISO_IR 192")
        if any(attribute["vr"] in _CHARSET_VRS for attribute in out.values()):
            raise Declined("Specific Character Set after text or sequences")
        return codec

    def bulk_uri(self, vr: str, pos: int, length: int) -> dict:
        """A BulkDataURI for a binary value too long for InlineBinary (F.2.7)."""
        # Inside a sequence of defined length the reference cannot locate the value in the
        # file (pydicom counts from the sequence) and records it unknown: so do we.
        self.bulk.append([-1, 0] if self.defined else [pos, length])
        return {"vr": vr, "BulkDataURI": f"{BULK_PREFIX}{len(self.bulk) - 1}"}

    def uid(self, tag: int, vr: str, pos: int, length: int) -> dict:
        """A UID ingest validates: pydicom's value (trailing NUL and spaces dropped) if the
        reference accepts it (:func:`pacs.uids.validate_uid`)."""
        text = self.buf[pos:pos + length].decode("latin-1").rstrip("\x00 ")
        if vr != "UI" or not lenient_uid(text):
            raise Declined(f"refused by the reference: {UID_TAGS[tag]} not a valid UI")
        self.uids[tag] = text
        return {"vr": "UI", "Value": [text]}
