"""Header-only parsing of a Part 10 object at ingest (PS3.10 7, PS3.5 7-8, PS3.18 F.2).

Reads everything up to Pixel Data, never the pixels themselves, and computes once what
the doors need later: the index attributes, the instance's DICOM JSON with bulk data
as BulkDataURIs, and the byte ranges of the pixel data, of each frame and of each
other bulk data element, so that a frame is one ranged read of the stored object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, UID

from .dicom_json import dataset_to_json_dict, to_json_text
from .errors import InvalidInstance
from .index.names import normalise_pn, normalise_time
from .structure import check_structure, dataset_start
from .uids import validate_uid

PIXEL_DATA_TAG = 0x7FE00010
#: VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
#: Marker the doors replace with their public base URL when serving DICOM JSON.
BULK_PREFIX = "bulk:"


@dataclass
class ParsedInstance:
    """What ingest learns from an object's header."""

    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient: dict[str, str]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    dicom_json: str = ""
    pixel_offset: int | None = None
    pixel_length: int | None = None
    frame_ranges: list[list[list[int]]] | None = None
    bulk_ranges: list[list[int]] = field(default_factory=list)


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


_TAGS = {keyword: _tag(keyword) for keyword in (
    "PatientName", "ReferringPhysicianName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
    "SpecificCharacterSet", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
    "SeriesDate", "SeriesTime", "StationName", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
    "NumberOfFrames",
)}


def _string(value: Any) -> str:
    if isinstance(value, dict):  # PN: the component groups, trailing empty ones dropped
        return "=".join((value.get("Alphabetic", ""), value.get("Ideographic", ""),
                         value.get("Phonetic", ""))).rstrip("=")
    return "" if value is None else str(value)


def _text(body: dict[str, Any], keyword: str, limit: int) -> str:
    """An attribute's value(s) as text, read from the instance's DICOM JSON. NULs (in no
    DICOM character repertoire; PostgreSQL text refuses them) are left out of the index."""
    values = body.get(_TAGS[keyword], {}).get("Value")
    if not values:
        return ""
    return "\\".join(_string(v) for v in values).replace("\x00", "").strip(" ")[:limit]


def _int(body: dict[str, Any], keyword: str) -> int | None:
    values = body.get(_TAGS[keyword], {}).get("Value")
    try:
        return int(values[0]) if values and values[0] not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _date(body: dict[str, Any], keyword: str) -> str:
    """A DA value as YYYYMMDD, accepting the old ACR-NEMA ``YYYY.MM.DD`` form; else ''."""
    raw = _text(body, keyword, 10).replace(".", "")
    return raw if len(raw) == 8 and raw.isdigit() else ""


def _extract_index_values(ds: dict[str, Any]) -> tuple[dict, dict, dict, dict]:
    patient_name = _text(ds, "PatientName", 324)
    referring = _text(ds, "ReferringPhysicianName", 324)
    patient = {
        "patient_id": _text(ds, "PatientID", 64),
        "issuer": _text(ds, "IssuerOfPatientID", 64),
        "patient_name": patient_name,
        "patient_name_norm": normalise_pn(patient_name),
        "birth_date": _date(ds, "PatientBirthDate"),
        "sex": _text(ds, "PatientSex", 16),
    }
    study = {
        "study_date": _date(ds, "StudyDate"),
        "study_time": normalise_time(_text(ds, "StudyTime", 16)),
        "accession_number": _text(ds, "AccessionNumber", 64),
        "study_id": _text(ds, "StudyID", 16),
        "study_description": _text(ds, "StudyDescription", 64),
        "referring_physician_name": referring,
        "referring_physician_norm": normalise_pn(referring),
        "specific_character_set": _text(ds, "SpecificCharacterSet", 128),
    }
    series = {
        "modality": _text(ds, "Modality", 16),
        "series_number": _int(ds, "SeriesNumber"),
        "series_description": _text(ds, "SeriesDescription", 64),
        "body_part_examined": _text(ds, "BodyPartExamined", 16),
        "series_date": _date(ds, "SeriesDate"),
        "series_time": normalise_time(_text(ds, "SeriesTime", 16)),
        "station_name": _text(ds, "StationName", 16),
    }
    instance = {
        "instance_number": _int(ds, "InstanceNumber"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "bits_allocated": _int(ds, "BitsAllocated"),
        "number_of_frames": _int(ds, "NumberOfFrames") or (1 if _TAGS["Rows"] in ds else None),
    }
    return patient, study, series, instance


def read_header(fp: BinaryIO) -> Dataset:
    """Parse a Part 10 object up to (not including) Pixel Data; ``fp`` is left there."""
    try:
        ds = dcmread(fp, stop_before_pixels=True)
    except (InvalidDicomError, EOFError) as exc:
        raise InvalidInstance("not a DICOM Part 10 object (no preamble, DICM prefix or File Meta)") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidInstance(f"cannot parse dataset: {type(exc).__name__}") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise InvalidInstance("file meta lacks TransferSyntaxUID")
    return ds


def parse_instance(fp: BinaryIO, size: int) -> ParsedInstance:
    """Parse and validate the header of the object in ``fp`` (``size`` bytes long).

    The single pass of :mod:`pacs.fastparse` answers for the common encodings; whatever
    it declines goes to :func:`parse_instance_reference`, which it always equals."""
    from .fastparse import try_fast_parse  # imported here: fastparse imports this module

    parsed = try_fast_parse(fp, size)
    return parsed if parsed is not None else parse_instance_reference(fp, size)


def parse_instance_reference(fp: BinaryIO, size: int) -> ParsedInstance:
    """:func:`parse_instance` with pydicom: the reference the fast path is held to."""
    ds = read_header(fp)
    pixel_pos = fp.tell()
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    if not ts.is_transfer_syntax:  # its byte order and VR encoding are unknown (PS3.5 10)
        raise InvalidInstance("TransferSyntaxUID is not a transfer syntax known to the archive")
    try:
        parsed = ParsedInstance(
            transfer_syntax_uid=validate_uid(ts, "TransferSyntaxUID"),
            sop_class_uid=validate_uid(ds.get("SOPClassUID"), "SOPClassUID"),
            sop_instance_uid=validate_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID"),
            study_uid=validate_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
            series_uid=validate_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
            patient={}, study={}, series={}, instance={},
        )
        meta_sop = ds.file_meta.get("MediaStorageSOPInstanceUID")
        if meta_sop and str(meta_sop).rstrip("\x00 ") != parsed.sop_instance_uid:
            raise InvalidInstance("MediaStorageSOPInstanceUID differs from SOPInstanceUID")
        track_offsets = ts != DeflatedExplicitVRLittleEndian
        body = _build_json(ds, parsed, track_offsets=track_offsets, fp=fp)
        values = _extract_index_values(body)
    except InvalidInstance:
        raise
    except Exception as exc:
        raise InvalidInstance(f"cannot read attributes: {type(exc).__name__}") from exc
    parsed.patient, parsed.study, parsed.series, parsed.instance = values
    if ts != DeflatedExplicitVRLittleEndian:
        check_structure(
            fp, dataset_start(fp, size), size,
            explicit=ts != ImplicitVRLittleEndian, little=ts.is_little_endian is not False,
        )
    deflated = ts == DeflatedExplicitVRLittleEndian  # file positions mean nothing there
    if not deflated and parsed.instance.get("rows") and pixel_pos >= size and _is_image_class(parsed.sop_class_uid):
        raise InvalidInstance("image without Pixel Data (truncated object?)")
    if ts != DeflatedExplicitVRLittleEndian and pixel_pos < size:
        _locate_pixel_data(fp, pixel_pos, size, ts, ds, parsed)
    add_pixel_data_json(body, parsed, compressed=bool(ts.is_compressed))
    parsed.dicom_json = to_json_text(body)
    return parsed


def add_pixel_data_json(body: dict[str, Any], parsed: ParsedInstance, *, compressed: bool) -> None:
    """Pixel Data as a BulkDataURI (PS3.18 F.2.7) once its bytes were located."""
    if parsed.pixel_offset is not None or parsed.frame_ranges is not None:
        vr = "OB" if compressed else ("OW" if (_int(body, "BitsAllocated") or 8) > 8 else "OB")
        body["7FE00010"] = {"vr": vr, "BulkDataURI": f"{BULK_PREFIX}pixeldata"}


def _is_image_class(sop_class_uid: str) -> bool:
    """Storage SOP classes whose IOD requires Pixel Data (image storage, PS3.4 B.5)."""
    name = UID(sop_class_uid).name  # e.g. "CT Image Storage"; the UID itself when unknown
    return name.endswith("Image Storage") and "Presentation" not in name


def _element_header(fp: BinaryIO, ts: UID) -> tuple[int, int, bool]:
    """Read the element header at ``fp``: (tag, value length, is-big-endian)."""
    big = ts.is_little_endian is False
    endian = ">" if big else "<"
    head = fp.read(8)
    if len(head) < 8:
        raise InvalidInstance("truncated before Pixel Data value")
    group, elem = struct.unpack(endian + "HH", head[:4])
    if ts == ImplicitVRLittleEndian:
        return (group << 16 | elem), struct.unpack("<L", head[4:8])[0], big
    vr = head[4:6]
    if vr in _LONG_VRS:
        length = struct.unpack(endian + "L", fp.read(4))[0]
    else:
        length = struct.unpack(endian + "H", head[6:8])[0]
    return (group << 16 | elem), length, big


class AttributeSource(Protocol):
    """What pixel data location reads attributes from: a Dataset, or its JSON's values."""

    def get(self, keyword: str, default: Any = None) -> Any: ...


def _locate_pixel_data(
    fp: BinaryIO, pos: int, size: int, ts: UID, ds: AttributeSource, parsed: ParsedInstance
) -> None:
    fp.seek(pos)
    tag, length, big = _element_header(fp, ts)
    if tag != PIXEL_DATA_TAG:
        return  # Float/Double Float Pixel Data or trailing elements: no frame index
    value_offset = fp.tell()
    frames = parsed.instance.get("number_of_frames") or 1
    if length != 0xFFFFFFFF:
        if value_offset + length > size:
            raise InvalidInstance("Pixel Data is truncated")
        parsed.pixel_offset, parsed.pixel_length = value_offset, length
        parsed.frame_ranges = _native_frames(ds, value_offset, length, frames)
        return
    try:
        parsed.frame_ranges, end = _encapsulated_frames(fp, frames, ds, big)
    except ValueError as exc:
        raise InvalidInstance(f"encapsulated Pixel Data is malformed: {exc}"[:120]) from exc
    if end > size:
        raise InvalidInstance("encapsulated Pixel Data is truncated")
    parsed.pixel_offset, parsed.pixel_length = value_offset, end - value_offset


def _native_frames(ds: AttributeSource, offset: int, length: int, frames: int) -> list | None:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    bits = ds.get("BitsAllocated")
    spp = ds.get("SamplesPerPixel", 1)
    if not (rows and cols and bits) or (rows * cols * spp * bits) % 8:
        return None
    frame_len = rows * cols * spp * bits // 8
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        frame_len = frame_len * 2 // 3  # two samples per pixel after 4:2:2 subsampling (PS3.3 C.7.6.3.1.2)
    if frame_len * frames > length:
        raise InvalidInstance("Pixel Data shorter than Rows x Columns x frames")
    return [[[offset + i * frame_len, frame_len]] for i in range(frames)]


def _encapsulated_frames(
    fp: BinaryIO, frames: int, ds: AttributeSource, big: bool
) -> tuple[list | None, int]:
    """Fragment ranges per frame (PS3.5 A.4), and the offset just past the sequence."""
    endian = ">" if big else "<"
    offsets = parse_basic_offsets(fp, endianness=endian)
    first = fp.tell()
    count, positions = parse_fragments(fp, endianness=endian)
    fragments = []
    for pos in positions:
        fp.seek(pos + 4)
        (flen,) = struct.unpack(endian + "L", fp.read(4))
        fragments.append([pos + 8, flen])
    end = (fragments[-1][0] + fragments[-1][1] + 8) if fragments else first + 8
    if frames == 1:
        return [fragments], end
    if count == frames:
        return [[f] for f in fragments], end
    if len(offsets) == frames:
        starts = [first + o for o in offsets] + [end]
        return [
            [f for f in fragments if starts[i] <= f[0] - 8 < starts[i + 1]] for i in range(frames)
        ], end
    return None, end  # fragments of unknown grouping: frames are found by decoding later


def _holds(fp: BinaryIO | None, offset: int, value: Any) -> bool:
    """Whether ``fp`` holds the bytes ``value`` at ``offset`` (its position is restored)."""
    if fp is None or not isinstance(value, (bytes, bytearray)):
        return False
    position = fp.tell()
    try:
        fp.seek(offset)
        return fp.read(len(value)) == value
    finally:
        fp.seek(position)


def _build_json(ds: Dataset, parsed: ParsedInstance, *, track_offsets: bool,
                fp: BinaryIO | None = None) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2) with bulk data replaced by ``bulk:`` relative URIs.

    A bulk value's byte range is kept only when the file holds that value there: inside a
    sequence of defined length pydicom's ``file_tell`` counts from the sequence, not the
    file, and such values get ``[-1, 0]`` (found by decoding when served)."""

    def bulk_handler(elem: DataElement) -> str:
        index = len(parsed.bulk_ranges)
        tell = getattr(elem, "file_tell", None)
        if track_offsets and tell is not None and elem.value is not None and _holds(fp, int(tell), elem.value):
            parsed.bulk_ranges.append([int(tell), len(elem.value)])
        else:
            parsed.bulk_ranges.append([-1, 0])
        return f"{BULK_PREFIX}{index}"

    try:
        body = dataset_to_json_dict(
            ds,
            bulk_data_threshold=1024,
            bulk_data_element_handler=bulk_handler,
            suppress_invalid_tags=True,
        )
    except Exception as exc:
        raise InvalidInstance(f"cannot convert to DICOM JSON: {type(exc).__name__}") from exc
    return body
