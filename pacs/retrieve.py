"""Retrieve: which instances a C-MOVE / C-GET names, and their bytes, one at a time.

The archive side of PS3.4 C.4.2 (C-MOVE) and C.4.3 (C-GET); the DIMSE adapters are
:mod:`pacs.dimse.move` and :mod:`pacs.dimse.get`.

* :func:`query_from_identifier` turns a retrieve identifier into a
  :class:`~pacs.query.Query` on the one query model. Per PS3.4 C.4.2.2.1 / C.4.3.2.1
  (hierarchical retrieve) only unique keys are used: the unique key of every level above
  the Query/Retrieve level (one value each) and the unique key of the level itself (one
  value, or a list of UIDs). Wildcards, empty values and unique keys below the level are
  refused (:class:`~pacs.errors.InvalidQuery`, DIMSE 0xA900); other keys are ignored.
* :func:`plan` runs the query once and returns small :class:`RetrieveItem` rows; the
  database connection is closed before anything is sent.
* The bytes: :func:`stream_dataset` yields an object's dataset bytes as stored (file meta
  skipped) in chunks; :func:`load_dataset` decodes one object; :func:`transcode` turns a
  compressed or otherwise unaccepted encoding into Explicit/Implicit VR Little Endian
  with pydicom's pixel decoders (pylibjpeg, pyjpegls, Pillow). Only one object is ever
  open or held, so memory does not grow with the size of the study.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Collection, Iterator

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID,
)

from .decode_guard import check_object
from .errors import InvalidQuery, PacsError
from .index.models import Instance, Series, Study
from .query import Level, Query, make_matcher
from .query.model import level_of
from .query.attributes import UNIQUE_KEYS
from .query.sql import compile_query
from .storage import BlobNotFound

if TYPE_CHECKING:
    from .archive import Archive

log = logging.getLogger(__name__)

#: Uncompressed little-endian syntaxes we transcode to, in order of preference.
TRANSCODE_TARGETS: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Syntaxes re-encoded by pydicom without touching pixel data (no decoder needed).
_REENCODABLE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
_CHUNK = 1 << 20


class RetrieveFailure(PacsError):
    """One instance cannot be sent (object missing, no decoder, decoding failed).

    The retrieve goes on; the instance counts as a failed sub-operation and is listed in
    the Failed SOP Instance UID List (PS3.4 C.4.2.1.4.2, C.4.3.1.3.2).
    """

    dimse_status = 0xA702
    http_status = 406


@dataclass(frozen=True, slots=True)
class RetrieveItem:
    """What a sub-operation needs to know about one stored instance."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int


#: Type 2 study attributes an SR copies from its first evidence (PS3.3 C.7.2.1): present,
#: empty when the archive holds no value.
_STUDY_TYPE2 = ("StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDate", "StudyTime")


def header_dataset(dicom_json: str) -> Dataset:
    """An instance's stored DICOM JSON as a Dataset without bulk data, with every Type 2
    study attribute present: what the archive's own SRs (reports, AI findings) take their
    patient and study modules from."""
    ds = Dataset.from_json(dicom_json, bulk_data_uri_handler=lambda *_: b"")
    for keyword in _STUDY_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


# -- the identifier ---------------------------------------------------------------------
def _values(identifier: Dataset, keyword: str) -> list[str] | None:
    """The values of ``keyword`` (None when absent)."""
    if keyword not in identifier:
        return None
    value = identifier[keyword].value
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v).strip() for v in value]
    return [v.strip() for v in str(value).split("\\")]


def _unique_values(keyword: str, values: list[str] | None, allow_list: bool) -> list[str]:
    """Validate a unique key's values: present, no wildcard, one value unless a UID list."""
    if not values or not any(values):
        raise InvalidQuery(f"retrieve needs a value for {keyword}")
    if any(not v or "*" in v or "?" in v for v in values):
        raise InvalidQuery(f"{keyword}: wildcards and empty values are not allowed in a retrieve")
    if len(values) > 1 and not allow_list:
        raise InvalidQuery(f"{keyword}: only one value allowed at this level")
    return values


def query_from_identifier(identifier: Dataset, levels: tuple[Level, ...]) -> Query:
    """The IMAGE-level query naming the instances of a C-MOVE/C-GET identifier.

    ``levels`` are the levels of the information model (Patient Root: all four; Study
    Root: STUDY, SERIES, IMAGE). Raises :class:`InvalidQuery` (0xA900) when the level is
    missing or not in the model, a needed unique key is missing, empty or a pattern, or
    a unique key below the level is present (PS3.4 C.4.2.2.1, C.4.3.2.1).
    """
    level = level_of(identifier, levels)
    query = Query(Level.IMAGE)
    for upper in levels:
        keyword = UNIQUE_KEYS[upper]
        values = _values(identifier, keyword)
        if upper.depth > level.depth:
            if values:
                raise InvalidQuery(f"{keyword} is below the {level.value} level")
            continue
        allow_list = upper == level and upper != Level.PATIENT
        query.matchers.append(make_matcher(keyword, _unique_values(keyword, values, allow_list)))
    return query


# -- which instances -------------------------------------------------------------------
def plan(archive: Archive, query: Query) -> list[RetrieveItem]:
    """The instances ``query`` names, in index order, from one SELECT.

    The connection goes back to the pool before this returns: nothing holds the database
    while objects are sent. Raises :class:`~pacs.errors.StorageUnavailable` when the
    index cannot be read.
    """
    stmt = compile_query(Query(Level.IMAGE, query.matchers)).with_only_columns(
        Instance.sop_class_uid, Instance.sop_instance_uid, Instance.transfer_syntax_uid,
        Instance.blob_key, Instance.size, maintain_column_froms=True,
    )
    with archive.db.read() as conn:
        rows = conn.execute(stmt).all()
    return [RetrieveItem(*row) for row in rows]


# -- transfer syntaxes -------------------------------------------------------------------
def can_decode(transfer_syntax: str) -> bool:
    """True when pydicom has a working pixel decoder for ``transfer_syntax``."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):
        return False


def choose_syntax(stored: str, accepted: Collection[str]) -> str | None:
    """The syntax to send an object stored in ``stored`` when the peer accepted ``accepted``.

    The stored syntax when accepted (bytes sent as stored); else Explicit, then Implicit
    VR Little Endian when accepted and reachable: re-encoding for the uncompressed little
    endian syntaxes and Deflate, decoding for compressed ones with an available decoder.
    None when the object cannot be sent (Big Endian is not converted: pydicom would not
    swap the pixel bytes).
    """
    if stored in accepted:
        return stored
    if stored == ExplicitVRBigEndian:
        return None
    if stored not in _REENCODABLE and not (UID(stored).is_compressed and can_decode(stored)):
        return None
    return next((ts for ts in TRANSCODE_TARGETS if ts in accepted), None)


# -- reading objects ---------------------------------------------------------------------
def _open(archive: Archive, item: RetrieveItem) -> BinaryIO:
    try:
        return archive.store.open(item.blob_key)
    except BlobNotFound:
        raise RetrieveFailure(f"object of {item.sop_instance_uid} missing from the store") from None


def load_dataset(archive: Archive, item: RetrieveItem) -> Dataset:
    """The whole object, decoded by pydicom (pixel data still encoded as stored)."""
    with _open(archive, item) as fp:
        source = fp if fp.seekable() else io.BytesIO(fp.read())
        try:
            return dcmread(source)
        except Exception as exc:  # pydicom raises many types on corrupt input
            raise RetrieveFailure(f"stored object unreadable: {type(exc).__name__}") from exc


def transcode(ds: Dataset, target: str, max_decoded_bytes: int = 0) -> Dataset:
    """``ds`` made sendable in ``target`` (Explicit or Implicit VR Little Endian).

    Compressed pixel data is decoded (``decompress(generate_instance_uid=False)``: the
    SOP Instance UID never changes; YCbCr becomes RGB). The File Meta Transfer Syntax UID
    is set to ``target``; the dataset is re-encoded when it is written. An object that
    would decode to more than ``max_decoded_bytes`` (0: no limit) is refused first
    (:mod:`pacs.decode_guard`).
    """
    stored = UID(str(ds.file_meta.TransferSyntaxUID))
    if stored.is_compressed:
        _check_decoded_size(ds, max_decoded_bytes)
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # decoders raise many types
            raise RetrieveFailure(f"cannot decode {stored.name}: {type(exc).__name__}") from exc
    ds.file_meta.TransferSyntaxUID = UID(target)
    return ds


def _check_decoded_size(ds: Dataset, limit: int) -> None:
    """Every frame header read (not decoded) and the object's declared size checked."""
    if not limit or "PixelData" not in ds:
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    attrs = {key: ds.get(key) for key in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated")}
    try:  # one frame at a time: only each header is read
        check_object(attrs, generate_frames(ds.PixelData, number_of_frames=frames), frames, limit)
    except PacsError:
        raise
    except Exception as exc:  # malformed encapsulation: the decoder would fail the same way
        raise RetrieveFailure(f"cannot read the encapsulated frames: {type(exc).__name__}") from exc


def encode_dataset(ds: Dataset, target: str) -> bytes:
    """The dataset (no file meta) encoded in ``target`` (an uncompressed LE syntax)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = target == ImplicitVRLittleEndian
    fp.is_little_endian = True
    try:
        write_dataset(fp, ds)
    except Exception as exc:
        raise RetrieveFailure(f"cannot encode as {UID(target).name}: {type(exc).__name__}") from exc
    return fp.parent.getvalue()  # type: ignore[attr-defined]


def transcoded_bytes(archive: Archive, item: RetrieveItem, target: str) -> bytes:
    """The object's dataset re-encoded (and decoded, if compressed) in ``target``."""
    ds = transcode(load_dataset(archive, item), target, archive.settings.max_decoded_bytes)
    return encode_dataset(ds, target)


def transcoded_part10(archive: Archive, item: RetrieveItem, target: str) -> bytes:
    """The whole Part 10 object in ``target``: preamble, the object's own File Meta
    Information with only its Transfer Syntax UID changed (PS3.10 7.1), the dataset
    re-encoded (decoded first if compressed). Held in memory, one object at a time."""
    ds = transcode(load_dataset(archive, item), target, archive.settings.max_decoded_bytes)
    meta = DicomBytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return meta.parent.getvalue() + encode_dataset(ds, target)  # type: ignore[attr-defined]


# -- metadata from the index -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MetadataRow:
    """One instance's stored DICOM JSON and the UIDs that address it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sha256: str
    dicom_json: str = ""


def instance_metadata(archive: Archive, query: Query, with_json: bool = True) -> list[MetadataRow]:
    """The instances matching an IMAGE-level ``query``, in index order, answered by the
    index alone (one SELECT; no object is opened). Without ``with_json`` only the UIDs
    and digests (enough for an entity tag)."""
    columns: list = [Study.study_uid, Series.series_uid, Instance.sop_instance_uid, Instance.sha256]
    if with_json:
        columns.append(Instance.dicom_json)
    stmt = compile_query(query).with_only_columns(*columns, maintain_column_froms=True)
    with archive.db.read() as conn:
        return [MetadataRow(*row) for row in conn.execute(stmt).all()]


def _read_exact(fp: BinaryIO, count: int) -> bytes:
    data = fp.read(count)
    if len(data) != count:
        raise RetrieveFailure("stored object truncated in its file meta")
    return data


def _skip_file_meta(fp: BinaryIO) -> bytes:
    """Read past the preamble and the File Meta group (PS3.10 7.1) without seeking.

    Returns the bytes already read that belong to the dataset (its first element's tag).
    """
    head = _read_exact(fp, 132)
    if head[128:] != b"DICM":
        raise RetrieveFailure("stored object is not a Part 10 file")
    while True:
        tag = fp.read(4)
        if len(tag) < 4 or int.from_bytes(tag[:2], "little") != 0x0002:
            return tag
        vr = _read_exact(fp, 2)
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            length = int.from_bytes(_read_exact(fp, 6)[2:], "little")
        else:
            length = int.from_bytes(_read_exact(fp, 2), "little")
        _read_exact(fp, length)


def stream_dataset(archive: Archive, item: RetrieveItem, chunk_size: int = _CHUNK) -> Iterator[bytes]:
    """The object's dataset bytes exactly as stored, in chunks of at most ``chunk_size``
    (the first may be a few bytes longer). The object is closed when the generator ends
    or is closed; only the current chunk is held.
    """
    with _open(archive, item) as fp:
        chunk = _skip_file_meta(fp) + fp.read(chunk_size)
        while chunk:
            yield chunk
            chunk = fp.read(chunk_size)
