"""Frames and bulk data of a stored instance, read by byte range (PS3.18 10.4.1.1.4-5).

The archive side of WADO-RS Retrieve Frames and Retrieve Bulkdata (the HTTP side is
:mod:`dicomweb.frames`). Ingest recorded where every frame and every bulk data value
lies in the stored object (:mod:`pacs.parse`: ``frame_ranges``, ``bulk_ranges``), so:

* a native (uncompressed) frame is one ranged read of ``[offset, length]``;
* an encapsulated frame (PS3.5 A.4) is one ranged read spanning its fragments, the
  8-byte item headers cut out;
* a frame of a compressed object wanted uncompressed is that read, decoded alone by
  pydicom's decoders (pylibjpeg, pyjpegls) into native little-endian bytes;
* a bulk data value is one ranged read of its recorded range.

What ingest could not locate (Deflated objects, values inside sequences of defined
length, fragments of unknown grouping, Big Endian pixels) is found by reading and
decoding the whole object with pydicom: slower, same answer.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, UID
from sqlalchemy import select

from .decode_guard import check_frame
from .dicom_json import dataset_to_json_dict
from .errors import InvalidQuery, NotFound, PacsError, StorageUnavailable
from .index.models import Instance, Series, Study
from .storage import BlobNotFound
from .uids import lenient_uid

#: The transfer syntax of native frames and bulk data (PS3.18 Table 8.7.3-2 default).
NATIVE = ExplicitVRLittleEndian
#: Most frame numbers one request may list.
MAX_FRAMES_PER_REQUEST = 10_000

#: Image Pixel module attributes (PS3.3 C.7.6.3) a frame is decoded with: keyword,
#: DICOM JSON tag, pydicom decoding option name.
_PIXEL_ATTRIBUTES = (
    ("Rows", "00280010", "rows"),
    ("Columns", "00280011", "columns"),
    ("SamplesPerPixel", "00280002", "samples_per_pixel"),
    ("BitsAllocated", "00280100", "bits_allocated"),
    ("BitsStored", "00280101", "bits_stored"),
    ("PixelRepresentation", "00280103", "pixel_representation"),
    ("PhotometricInterpretation", "00280004", "photometric_interpretation"),
    ("PlanarConfiguration", "00280006", "planar_configuration"),
)


class DecodeFailure(PacsError):
    """A stored frame cannot be decoded (no decoder installed, or corrupt data): the
    representation asked for cannot be produced (PS3.18 8.7.4)."""

    http_status = 406


@dataclass(frozen=True)
class PixelSource:
    """What the index knows about one instance's pixel data and bulk data."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    number_of_frames: int | None
    pixel_offset: int | None
    pixel_length: int | None
    frame_ranges_text: str | None
    bulk_ranges_text: str | None
    dicom_json: str

    @cached_property
    def frame_ranges(self) -> list[list[list[int]]] | None:
        return json.loads(self.frame_ranges_text) if self.frame_ranges_text else None

    @cached_property
    def attributes(self) -> dict[str, Any]:
        """The Image Pixel attributes by keyword, from the stored DICOM JSON."""
        body = json.loads(self.dicom_json)
        out = {}
        for keyword, tag, _ in _PIXEL_ATTRIBUTES:
            values = body.get(tag, {}).get("Value")
            if values:
                out[keyword] = values[0]
        return out

    @property
    def frames(self) -> int:
        """Number of frames: 0 when the instance has no pixel data."""
        if self.number_of_frames is None and self.pixel_offset is None and not self.frame_ranges_text:
            return 0
        return self.number_of_frames or 1

    @property
    def compressed(self) -> bool:
        """Pixel data encapsulated in a compressed transfer syntax (PS3.5 A.4)."""
        return bool(UID(self.transfer_syntax_uid).is_compressed)


_COLUMNS = (Study.study_uid, Series.series_uid, Instance.sop_instance_uid, Instance.transfer_syntax_uid,
            Instance.blob_key, Instance.number_of_frames, Instance.pixel_offset, Instance.pixel_length,
            Instance.frame_ranges, Instance.bulk_ranges, Instance.dicom_json)


def _check_uid(value: str, name: str) -> str:
    if not lenient_uid(value):
        raise InvalidQuery(f"{name} is not a valid UID")
    return value


def locate(archive: Any, study: str, series: str, sop: str) -> PixelSource:
    """The instance addressed by a WADO-RS instance path (PS3.18 10.4.1.1): one SELECT.

    Raises :class:`InvalidQuery` (400) for a malformed UID, :class:`NotFound` (404)."""
    for value, name in ((study, "StudyInstanceUID"), (series, "SeriesInstanceUID"), (sop, "SOPInstanceUID")):
        _check_uid(value, name)
    stmt = (select(*_COLUMNS).select_from(Instance)
            .join(Series, Instance.series_fk == Series.id).join(Study, Series.study_fk == Study.id)
            .where(Instance.sop_instance_uid == sop, Series.series_uid == series, Study.study_uid == study))
    with archive.db.read() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        raise NotFound(f"instance {sop} of series {series} of study {study} not found")
    return PixelSource(*row)


def instances_of(archive: Any, study: str, series: str | None = None) -> list[PixelSource]:
    """The instances of a study or series, in (series, Instance Number, index) order."""
    _check_uid(study, "StudyInstanceUID")
    stmt = (select(*_COLUMNS).select_from(Instance)
            .join(Series, Instance.series_fk == Series.id).join(Study, Series.study_fk == Study.id)
            .where(Study.study_uid == study))
    if series is not None:
        stmt = stmt.where(Series.series_uid == _check_uid(series, "SeriesInstanceUID"))
    stmt = stmt.order_by(Series.id, Instance.instance_number, Instance.id)
    with archive.db.read() as conn:
        rows = conn.execute(stmt).all()
    if not rows:
        where = f"series {series} of study {study}" if series else f"study {study}"
        raise NotFound(f"{where} not found")
    return [PixelSource(*row) for row in rows]


# -- frame numbers ---------------------------------------------------------------------------
def parse_frame_list(text: str) -> list[int]:
    """The frame numbers of a ``{framelist}`` path segment (PS3.18 10.4.1.1.4: 1-based,
    comma-separated, in the order asked). 400 for an empty, zero or non-numeric entry."""
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise InvalidQuery(f"frame list {text[:40]!r}: frame numbers are positive integers (1-based)")
        numbers.append(int(part))
    if len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise InvalidQuery(f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    return numbers


def check_frames(source: PixelSource, numbers: list[int]) -> None:
    """404 when the instance has no pixel data or a number exceeds Number of Frames."""
    if source.frames == 0:
        raise NotFound(f"instance {source.sop_instance_uid} has no pixel data")
    beyond = [n for n in numbers if n > source.frames]
    if beyond:
        raise NotFound(f"frame {beyond[0]} beyond the {source.frames} frame(s) of instance {source.sop_instance_uid}")


# -- reading -------------------------------------------------------------------------------
def read_range(archive: Any, source: PixelSource, start: int, length: int) -> bytes:
    """``length`` bytes of the stored object from ``start``: one ranged read."""
    try:
        data = archive.store.read_range(source.blob_key, start, length)
    except BlobNotFound:
        raise StorageUnavailable(f"object of {source.sop_instance_uid} missing from the store") from None
    if len(data) != length:
        raise StorageUnavailable(f"object of {source.sop_instance_uid} shorter than its index says")
    return data


def load_dataset(archive: Any, source: PixelSource, stop_before_pixels: bool = False) -> Dataset:
    """The stored object decoded by pydicom (the slow path)."""
    try:
        with archive.store.open(source.blob_key) as fp:
            buffer = fp if fp.seekable() else io.BytesIO(fp.read())
            return dcmread(buffer, stop_before_pixels=stop_before_pixels)
    except BlobNotFound:
        raise StorageUnavailable(f"object of {source.sop_instance_uid} missing from the store") from None
    except PacsError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise DecodeFailure(f"stored object unreadable: {type(exc).__name__}") from exc


def _ranged_frame(archive: Any, source: PixelSource, ranges: list[list[int]]) -> bytes:
    """The bytes of one frame from its fragment ranges: one read from the first
    fragment's value to the last one's end, item headers between them cut out."""
    start = ranges[0][0]
    data = read_range(archive, source, start, ranges[-1][0] + ranges[-1][1] - start)
    if len(ranges) == 1:
        return data
    return b"".join(data[offset - start:offset - start + length] for offset, length in ranges)


def stored_frame(archive: Any, source: PixelSource, number: int) -> bytes:
    """Frame ``number`` (1-based) as stored: encapsulated frame bytes (all fragments
    joined) for a compressed object, the native pixel bytes otherwise."""
    ranges = source.frame_ranges
    if ranges is not None and ranges[number - 1]:
        return _ranged_frame(archive, source, ranges[number - 1])
    ds = load_dataset(archive, source)
    if source.compressed:
        return _encapsulated_frame(ds, source, number)
    if "PixelData" not in ds:
        raise NotFound(f"instance {source.sop_instance_uid} has no pixel data")
    return native_frame_from_dataset(ds, number)


def _encapsulated_frame(ds: Dataset, source: PixelSource, number: int) -> bytes:
    """Frame ``number`` of a loaded compressed object, its fragments joined (PS3.5 A.4)."""
    if "PixelData" not in ds:
        raise NotFound(f"instance {source.sop_instance_uid} has no pixel data")
    frames = generate_frames(ds.PixelData, number_of_frames=source.frames)
    for _ in range(number - 1):
        next(frames)
    return next(frames)


def native_frame_from_dataset(ds: Dataset, number: int) -> bytes:
    """Native little-endian bytes of frame ``number`` of a decoded dataset."""
    from pydicom.pixels import pixel_array

    try:
        array = pixel_array(ds, index=number - 1, raw=True)
    except Exception as exc:
        raise DecodeFailure(f"cannot decode frame {number}: {type(exc).__name__}") from exc
    return native_bytes(array, int(ds.get("BitsAllocated", 8) or 8))


def native_bytes(array: np.ndarray, bits_allocated: int) -> bytes:
    """A decoded frame as native pixel bytes (PS3.5 8.1.1): little endian, samples
    interleaved (Planar Configuration 0), 1-bit pixels packed."""
    if bits_allocated == 1:
        from pydicom.pixels import pack_bits

        return pack_bits(array, pad=False)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def decode_options(source: PixelSource) -> dict[str, Any]:
    """pydicom decoding options for one frame of ``source`` (PS3.3 C.7.6.3)."""
    attrs = source.attributes
    options = {option: attrs[keyword] for keyword, _, option in _PIXEL_ATTRIBUTES if keyword in attrs}
    options.setdefault("samples_per_pixel", 1)
    options.setdefault("pixel_representation", 0)
    options.setdefault("planar_configuration", 0)
    options["number_of_frames"] = 1
    options["pixel_keyword"] = "PixelData"
    return options


def decoded_frame_array(archive: Any, source: PixelSource, number: int, *, as_rgb: bool = True) -> np.ndarray:
    """Frame ``number`` decoded to a numpy array (rows, columns[, samples]); YBR
    converted to RGB when ``as_rgb``. A compressed frame is read alone and decoded alone."""
    from pydicom.pixels import get_decoder, pixel_array

    syntax = UID(source.transfer_syntax_uid)
    limit = archive.settings.max_decoded_bytes
    check_frame(source.attributes, None, limit)
    try:
        if source.compressed and source.frame_ranges is not None and source.frame_ranges[number - 1]:
            encoded = stored_frame(archive, source, number)
            check_frame(source.attributes, encoded, limit)
            decoder = get_decoder(syntax)
            array, _ = decoder.as_array(encapsulate([encoded]), index=0, raw=not as_rgb,
                                        **decode_options(source))  # type: ignore[arg-type]
            return array
        if not source.compressed and syntax != ExplicitVRBigEndian and source.frame_ranges is not None:
            data = stored_frame(archive, source, number)
            options = {**decode_options(source)}
            array, _ = get_decoder(ExplicitVRLittleEndian).as_array(data, index=0, raw=not as_rgb, **options)
            return array
        ds = load_dataset(archive, source)  # the slow path: read once, checked, decoded
        if source.compressed:  # the codestream's own header, before the decoder trusts it
            check_frame(source.attributes, _encapsulated_frame(ds, source, number), limit)
        return pixel_array(ds, index=number - 1, raw=not as_rgb)
    except PacsError:
        raise
    except Exception as exc:  # decoders raise many types (missing plugin, corrupt data)
        raise DecodeFailure(f"cannot decode frame {number} ({syntax.name}): {type(exc).__name__}") from exc


def native_frame(archive: Any, source: PixelSource, number: int) -> bytes:
    """Frame ``number`` as native little-endian pixel bytes (transfer syntax
    :data:`NATIVE`): as stored for a little-endian uncompressed object (one ranged
    read), else decoded."""
    if not source.compressed and source.transfer_syntax_uid != ExplicitVRBigEndian:
        return stored_frame(archive, source, number)
    array = decoded_frame_array(archive, source, number)
    return native_bytes(array, int(source.attributes.get("BitsAllocated", 8)))


def can_decode(source: PixelSource) -> bool:
    """Whether a compressed frame of ``source`` can be decoded here."""
    from .retrieve import can_decode as available

    return not source.compressed or available(source.transfer_syntax_uid)


# -- bulk data -------------------------------------------------------------------------------
def bulk_location(source: PixelSource, index: int) -> tuple[int, int] | None:
    """(offset, length) of bulk data value ``index`` (the ``n`` of ``bulk/<n>``,
    PS3.18 F.2.7) in the stored object, or None when ingest could not locate it.
    404 when the instance has no such value."""
    ranges = json.loads(source.bulk_ranges_text) if source.bulk_ranges_text else []
    if not 0 <= index < len(ranges):
        raise NotFound(f"instance {source.sop_instance_uid} has no bulk data {index}")
    offset, length = ranges[index]
    return None if offset < 0 else (int(offset), int(length))


def decoded_bulk_value(archive: Any, source: PixelSource, index: int) -> bytes:
    """Bulk data value ``index`` found by decoding the object's header with pydicom and
    numbering its bulk data values in the order ingest did (:func:`pacs.parse._build_json`)."""
    ds = load_dataset(archive, source, stop_before_pixels=True)
    values: list[bytes] = []

    def collect(elem: DataElement) -> str:
        values.append(elem.value if isinstance(elem.value, bytes) else bytes(elem.value or b""))
        return ""

    dataset_to_json_dict(ds, bulk_data_threshold=1024, bulk_data_element_handler=collect,
                         suppress_invalid_tags=True)
    if index >= len(values):
        raise NotFound(f"instance {source.sop_instance_uid} has no bulk data {index}")
    return values[index]


def pixel_data_location(source: PixelSource) -> tuple[int, int] | None:
    """(offset, length) of a native Pixel Data value, None when encapsulated or unknown."""
    if source.compressed or source.pixel_offset is None or source.pixel_length is None:
        return None
    return source.pixel_offset, source.pixel_length


def native_pixel_data(archive: Any, source: PixelSource) -> bytes:
    """The whole native Pixel Data value: one ranged read, or decoded (Deflated, Big Endian)."""
    location = pixel_data_location(source)
    if location is not None and source.transfer_syntax_uid != ExplicitVRBigEndian:
        return read_range(archive, source, *location)
    return b"".join(native_frame(archive, source, n) for n in range(1, source.frames + 1))
