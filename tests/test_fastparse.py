"""pacs.fastparse answers exactly as the reference parse, or declines.

Every case parses the same bytes with :func:`pacs.parse.parse_instance_reference`
(pydicom) and :func:`pacs.fastparse.try_fast_parse`, and compares the ParsedInstance
field by field (the DICOM JSON as text, byte for byte); the fast path may decline (None)
but never accept what the reference refuses. :func:`pacs.parse.parse_instance`, which
wires the two, must give the reference's outcome: the same result or the same refusal.
Inputs: pydicom's bundled files, sample_data/files, instances made with tests/factory.py,
and truncated and corrupted variants of them (PS3.10 7.1, PS3.5 7.1 and 7.5).
"""

from __future__ import annotations

import io
import logging
import random
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.data
import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, ImplicitVRLittleEndian, RLELossless

from pacs import fastparse, parse
from pacs.errors import InvalidInstance
from pacs.parse import ParsedInstance

from .factory import make_ct, to_bytes

SAMPLE_FILES = sorted((Path(__file__).resolve().parent.parent / "sample_data" / "files").glob("*"))
_PYDICOM_DATA = Path(pydicom.data.__file__).parent
#: pydicom's bundled files, globbed: get_testdata_files would try to download the others.
PYDICOM_FILES = sorted(_PYDICOM_DATA.glob("test_files/**/*.dcm"))
PYDICOM_FILES += sorted(_PYDICOM_DATA.glob("charset_files/*.dcm"))
#: Bundled files the fast path must answer for (explicit VR LE, native and encapsulated).
FAST_PYDICOM = {"CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "test-SR.dcm",
                "SC_rgb_rle_2frame.dcm", "SC_ybr_full_422_uncompressed.dcm", "liver_1frame.dcm",
                "waveform_ecg.dcm", "chrFren.dcm", "chrX1.dcm", "reportsi.dcm"}
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@pytest.fixture(autouse=True)
def _quiet_and_no_failures() -> Iterator[None]:
    """pydicom warns about the broken input on purpose; the fast path must never crash."""
    failed = fastparse.counts["failed"]
    logging.disable(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)
    assert fastparse.counts["failed"] == failed, "the fast path raised instead of declining"


def _outcome(parser: Callable[[io.BytesIO, int], ParsedInstance | None], data: bytes) -> Any:
    """The parser's result, or its refusal as text (any other exception by its type)."""
    try:
        return parser(io.BytesIO(data), len(data))
    except InvalidInstance as exc:
        return f"InvalidInstance: {exc}"
    except Exception as exc:  # noqa: BLE001 - the reference's own failures are compared too
        return f"{type(exc).__name__}"


def _assert_same(actual: ParsedInstance, expected: ParsedInstance) -> None:
    for f in fields(ParsedInstance):
        assert getattr(actual, f.name) == getattr(expected, f.name), f.name
    assert actual.dicom_json == expected.dicom_json  # byte-identical text, key order included


def check(data: bytes, fast: bool | None = None) -> bool:
    """Compare the fast path and the wired parse with the reference; whether it was fast."""
    expected = _outcome(parse.parse_instance_reference, data)
    fp = io.BytesIO(data)
    before = dict(fastparse.counts)
    actual = fastparse.try_fast_parse(fp, len(data))
    if actual is None:
        assert fp.tell() == 0  # left where the reference starts
        assert fastparse.counts["declined"] == before["declined"] + 1
    else:
        assert isinstance(expected, ParsedInstance), f"accepted, the reference refuses: {expected}"
        _assert_same(actual, expected)
    wired = _outcome(parse.parse_instance, data)
    if isinstance(expected, ParsedInstance):
        assert isinstance(wired, ParsedInstance), wired
        _assert_same(wired, expected)
    else:
        assert wired == expected
    if fast is not None:
        assert (actual is not None) == fast
    return actual is not None


# --- files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PYDICOM_FILES + SAMPLE_FILES, ids=lambda p: p.name)
def test_files(path: Path) -> None:
    fast = True if path.name in FAST_PYDICOM else None
    check(path.read_bytes(), fast)


def test_most_sample_files_take_the_fast_path() -> None:
    taken = [check(path.read_bytes()) for path in SAMPLE_FILES]
    assert sum(taken) >= len(taken) // 2, taken


def test_generated_ct_and_tiny_take_the_fast_path(tmp_path: Path) -> None:
    from sample_data.__main__ import main as sample_main

    for kind in ("ct", "tiny"):
        assert sample_main([str(tmp_path / kind), "--set", kind, "2"]) == 0
        for path in sorted((tmp_path / kind).iterdir()):
            check(path.read_bytes(), fast=True)


# --- made with the factory -----------------------------------------------------------------

def _multiframe(frames: int = 4) -> Dataset:
    ds = make_ct(rows=8, columns=6)
    ds.NumberOfFrames = frames
    ds.PixelData = np.arange(8 * 6 * frames, dtype=np.uint16).tobytes()
    return ds


def _item(**values: Any) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _with_sequences(undefined: bool) -> Dataset:
    ds = make_ct()
    leaf = _item(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2", ReferencedSOPInstanceUID="1.2.3.4.5")
    outer = _item(CodeValue="T-D0050", CodingSchemeDesignator="SRT", CodeMeaning="Tissue")
    outer.add(DataElement(0x00081199, "SQ", Sequence([leaf, _item(ReferencedSOPInstanceUID="1.2.3.6")])))
    ds.ReferencedImageSequence = Sequence([leaf, _item(ReferencedSOPInstanceUID="1.2.3.7")])
    ds.AnatomicRegionSequence = Sequence([outer])
    ds.ProcedureCodeSequence = Sequence([])
    ds.add(DataElement(0x00400275, "SQ", Sequence([Dataset()])))  # one empty item
    for elem in _sequence_elements(ds):
        elem.is_undefined_length = undefined
        for item in elem.value:
            item.is_undefined_length_sequence_item = undefined
    return ds


def _sequence_elements(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:
        if elem.VR == "SQ":
            yield elem
            for item in elem.value:
                yield from _sequence_elements(item)


def _private(ds: Dataset | None = None) -> Dataset:
    ds = ds or make_ct()
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "DS", "1.5\\2")
    block.add_new(0x02, "OB", bytes(range(100)))
    block.add_new(0x03, "LO", "private text")
    block.add_new(0x04, "SQ", Sequence([_item(PatientID="nested")]))
    return ds


def _bulk(undefined: bool = True) -> Dataset:
    """Binary values longer than 768 bytes (BulkDataURI), at the top and in an item."""
    ds = _private()
    ds.add(DataElement(0x00091010, "OB", bytes(range(256)) * 8))
    item = _item(PatientID="with bulk")
    item.add(DataElement(0x00091010, "OB", bytes(range(200)) * 5))
    ds.add(DataElement(0x00091011, "SQ", Sequence([item])))
    ds[0x00091011].is_undefined_length = undefined
    ds.add(DataElement(0x00660023, "OB", bytes(900)))
    return ds


def _icon() -> Dataset:
    """Pixel Data inside an item (Icon Image Sequence) and values at the bulk data limit."""
    ds = make_ct()
    icon = _item(Rows=64, Columns=64, BitsAllocated=8, SamplesPerPixel=1)
    icon.PixelData = bytes(range(256)) * 16
    icon["PixelData"].VR = "OB"
    ds.IconImageSequence = Sequence([icon])
    ds["IconImageSequence"].is_undefined_length = True
    icon.is_undefined_length_sequence_item = True
    ds.add(DataElement(0x00660023, "OB", bytes(768)))
    ds.add(DataElement(0x00660024, "OB", bytes(770)))
    return ds


def _charset(term: str, name: str, text: str) -> Dataset:
    ds = make_ct(patient_name=name)
    ds.SpecificCharacterSet = term
    ds.StudyDescription = text
    ds.InstitutionName = text
    ds.ReferencedImageSequence = Sequence([_item(PatientName=name, StudyDescription=text)])
    return ds


def _item_charset() -> Dataset:
    """An item with a character set of its own (PS3.5 6.1.2.3) under a Latin-1 dataset."""
    ds = _charset("ISO_IR 100", "Müller^Zoë", "Straße")
    item = _item(SpecificCharacterSet="ISO_IR 192", PatientName="王^小東", StudyDescription="中文")
    ds.ReferencedImageSequence.append(item)
    return ds


def _implicit(ds: Dataset) -> Dataset:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _encapsulated(frames: int, offsets: bool) -> Dataset:
    ds = make_ct(rows=4, columns=4)
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([bytes([i]) * (10 + 2 * i) for i in range(frames)], has_bot=offsets)
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def _not_an_image() -> Dataset:
    ds = make_ct()
    del ds.PixelData
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
                    "PixelRepresentation", "PhotometricInterpretation"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.Modality = "SR"
    return ds


def _no_pixels() -> Dataset:
    ds = make_ct()
    del ds.PixelData
    return ds


def _trailing_padding() -> bytes:
    return to_bytes(make_ct()) + struct.pack("<HH2sHL", 0xFFFC, 0xFFFC, b"OB", 0, 6) + bytes(6)


def _big_header() -> Dataset:
    """A header longer than the first read: the walk asks for more bytes."""
    ds = make_ct()
    ds.add(DataElement(0x00091010, "OB", bytes(fastparse.FIRST_READ * 3)))
    ds.add(DataElement(0x00090010, "LO", "ACME"))
    return ds


#: name -> (the object's bytes, whether the fast path must take it)
CASES: dict[str, tuple[Callable[[], bytes], bool]] = {
    "plain": (lambda: to_bytes(make_ct()), True),
    "one-pixel": (lambda: to_bytes(make_ct(rows=1, columns=1)), True),
    "512x512": (lambda: to_bytes(make_ct(rows=512, columns=512)), True),
    "multiframe": (lambda: to_bytes(_multiframe()), True),
    "sequences-undefined": (lambda: to_bytes(_with_sequences(True)), True),
    "sequences-defined": (lambda: to_bytes(_with_sequences(False)), True),
    "private": (lambda: to_bytes(_private()), True),
    "bulk": (lambda: to_bytes(_bulk()), True),
    "bulk-in-defined-sequence": (lambda: to_bytes(_bulk(undefined=False)), True),
    "icon-and-bulk-limit": (lambda: to_bytes(_icon()), True),
    "utf8": (lambda: to_bytes(_charset("ISO_IR 192", "Wang^XiaoDong=王^小東", "中文 テキスト")), True),
    "latin1": (lambda: to_bytes(_charset("ISO_IR 100", "Müller^Zoë", "Straße Café")), True),
    "greek": (lambda: to_bytes(_charset("ISO_IR 126", "Διονυσιος", "abc")), False),
    "empty-charset": (lambda: to_bytes(_charset("", "Zoë^Ann", "Café")), True),
    "item-charset": (lambda: to_bytes(_item_charset()), True),
    "implicit": (lambda: to_bytes(_implicit(_with_sequences(False))), True),
    "implicit-undefined": (lambda: to_bytes(_implicit(_with_sequences(True))), True),
    "implicit-private": (lambda: to_bytes(_implicit(_private())), False),
    "rle-frames": (lambda: to_bytes(_encapsulated(3, offsets=False)), True),
    "rle-offsets": (lambda: to_bytes(_encapsulated(3, offsets=True)), True),
    "rle-one-frame": (lambda: to_bytes(_encapsulated(1, offsets=False)), True),
    "not-an-image": (lambda: to_bytes(_not_an_image()), True),
    "image-without-pixels": (lambda: to_bytes(_no_pixels()), False),  # refused: the reference decides
    "trailing-padding": (_trailing_padding, True),
    "big-header": (lambda: to_bytes(_big_header()), True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated(name: str) -> None:
    make, fast = CASES[name]
    check(make(), fast)


@pytest.mark.parametrize("first_read", [1, 7, 150, 1000])
def test_small_first_reads(monkeypatch: pytest.MonkeyPatch, first_read: int) -> None:
    """The walk asks for more of the object wherever the bytes read so far end."""
    monkeypatch.setattr(fastparse, "FIRST_READ", first_read)
    for name in ("plain", "sequences-undefined", "sequences-defined", "implicit-undefined", "bulk",
                 "rle-offsets", "item-charset"):
        make, fast = CASES[name]
        check(make(), fast)


def test_utf8_values_in_json() -> None:
    data = to_bytes(_charset("ISO_IR 192", "Wang^XiaoDong=王^小東", "中文"))
    parsed = fastparse.try_fast_parse(io.BytesIO(data), len(data))
    assert parsed is not None and "王^小東" in parsed.dicom_json and "中文" in parsed.dicom_json
    assert parsed.patient["patient_name"] == "Wang^XiaoDong=王^小東"


def test_frames_and_bulk_ranges() -> None:
    data = to_bytes(_multiframe(4))
    parsed = fastparse.try_fast_parse(io.BytesIO(data), len(data))
    assert parsed is not None and parsed.pixel_length == 8 * 6 * 4 * 2
    assert parsed.frame_ranges == [[[parsed.pixel_offset + i * 96, 96]] for i in range(4)]
    data = to_bytes(_bulk())
    parsed = fastparse.try_fast_parse(io.BytesIO(data), len(data))
    assert parsed is not None and len(parsed.bulk_ranges) == 3
    for offset, length in parsed.bulk_ranges:  # they point at the values themselves
        assert data[offset:offset + length] in (bytes(range(256)) * 8, bytes(range(200)) * 5, bytes(900))


def test_declines_outside_pydicom_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    data = to_bytes(make_ct())
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    assert fastparse.try_fast_parse(io.BytesIO(data), len(data)) is None
    monkeypatch.undo()
    monkeypatch.setattr(config, "use_DS_decimal", True)
    assert fastparse.try_fast_parse(io.BytesIO(data), len(data)) is None


def test_declines_when_not_at_the_start() -> None:
    data = to_bytes(make_ct())
    fp = io.BytesIO(b"x" + data)
    fp.seek(1)
    assert fastparse.try_fast_parse(fp, len(data)) is None and fp.tell() == 1


# --- truncated and corrupted ---------------------------------------------------------------

def _pixel_offset(data: bytes) -> int:
    return data.rindex(b"\xe0\x7f\x10\x00")


def _length_fields(data: bytes, explicit: bool = True) -> list[tuple[int, int]]:
    """(offset, width) of the length field of every element, item and delimiter before
    Pixel Data, and of Pixel Data, found by walking the dataset (PS3.5 7.1, 7.5)."""
    found: list[tuple[int, int]] = []

    def element(pos: int) -> tuple[int, int, bool]:
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4:pos + 6] if explicit and group != 0xFFFE else None
        if vr in LONG_VRS:
            found.append((pos + 8, 4))
            return pos + 12, struct.unpack_from("<L", data, pos + 8)[0], vr == b"SQ"
        width = 2 if vr else 4
        found.append((pos + 8 - width, width))
        length = struct.unpack_from("<H" if width == 2 else "<L", data, pos + 8 - width)[0]
        return pos + 8, length, vr is None and group != 0xFFFE and _is_sq(group << 16 | elem)

    def items(pos: int, end: int) -> int:
        while pos < end:
            tag = struct.unpack_from("<L", data, pos)[0]
            pos, length, _ = element(pos)
            if tag == 0xE0DDFFFE:
                return pos
            pos = elements(pos, None if length == 0xFFFFFFFF else pos + length)
        return pos

    def elements(pos: int, end: int | None) -> int:
        while pos < (end or len(data)):
            tag = struct.unpack_from("<L", data, pos)[0]
            start = pos
            pos, length, sq = element(pos)
            if tag == 0xE00DFFFE or (tag == 0x00107FE0 and start == _pixel_offset(data)):
                return pos
            pos = items(pos, len(data) if length == 0xFFFFFFFF else pos + length) if sq else pos + length
        return pos

    elements(132 + 12 + struct.unpack_from("<L", data, 140)[0], None)
    return found


def _is_sq(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _with_length(data: bytes, offset: int, width: int, value: int) -> bytes:
    field = struct.pack("<H" if width == 2 else "<L", value % (1 << 8 * width))
    return data[:offset] + field + data[offset + width:]


def test_length_field_walker_finds_the_sequences() -> None:
    data = to_bytes(_with_sequences(True))
    assert len(_length_fields(data)) > 40  # elements, items and delimiters


@pytest.mark.parametrize("name", ["plain", "sequences-undefined", "sequences-defined", "implicit",
                                  "implicit-undefined", "bulk", "utf8", "rle-offsets", "multiframe"])
def test_truncated(name: str) -> None:
    data = CASES[name][0]()
    header_end = _pixel_offset(data) + 16
    cuts = list(range(0, min(header_end, len(data)), 1 if name == "plain" else 3))
    cuts += list(range(header_end, len(data), 97)) + [len(data) - 2, len(data) - 1]
    fast = [cut for cut in cuts if check(data[:cut])]
    assert all(cut <= header_end for cut in fast), fast  # a cut into Pixel Data is refused


@pytest.mark.parametrize("name", ["plain", "sequences-undefined", "sequences-defined", "implicit",
                                  "implicit-undefined", "bulk", "rle-offsets", "private"])
def test_length_fields_changed(name: str) -> None:
    data = CASES[name][0]()
    found = _length_fields(data, explicit=not name.startswith("implicit"))
    assert found
    for offset, width in found:
        old = struct.unpack_from("<H" if width == 2 else "<L", data, offset)[0]
        for value in {old + 1, old + 2, old - 2, old + 8, 0, (1 << 8 * width) - 1, len(data)}:
            check(_with_length(data, offset, width, value))


@pytest.mark.parametrize("name", ["plain", "sequences-undefined", "utf8", "implicit", "bulk"])
def test_random_corruption(name: str) -> None:
    data = CASES[name][0]()
    rng = random.Random(name)
    header_end = _pixel_offset(data) + 12
    for _ in range(300):
        corrupt = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 4])):
            pos = rng.randrange(128, header_end)
            corrupt[pos] = rng.choice([0, 0xFF, 0x5C, 0x20, 0x1B, rng.randrange(256), corrupt[pos] ^ 1])
        check(bytes(corrupt))


def test_every_cut_of_a_small_file_is_refused_or_equal() -> None:
    data = (_PYDICOM_DATA / "test_files" / "MR_small_RLE.dcm").read_bytes()
    for cut in range(0, len(data), 5):
        check(data[:cut])


# --- what the fast path leaves to pydicom --------------------------------------------------

def _element(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element with a short header (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def _spliced(data: bytes, before: bytes, elements: bytes) -> bytes:
    """``data`` with ``elements`` inserted just before the element starting with ``before``."""
    at = data.index(before)
    return data[:at] + elements + data[at:]


def test_elements_out_of_order_or_repeated_are_declined() -> None:
    data = to_bytes(make_ct())
    name, patient_id = data.index(b"\x10\x00\x10\x00PN"), data.index(b"\x10\x00\x20\x00LO")
    end = data.index(b"\x10\x00\x30\x00DA")
    swapped = data[:name] + data[patient_id:end] + data[name:patient_id] + data[end:]
    check(swapped, fast=False)
    repeated = _spliced(data, b"\x10\x00\x20\x00LO", _element(0x00100010, "PN", b"Other^Name"))
    check(repeated, fast=False)


def test_text_before_the_character_set_is_declined() -> None:
    """A (0005,0010) text precedes (0008,0005): pydicom decodes it with the dataset's
    final character set, which the walk did not know yet."""
    data = to_bytes(_charset("ISO_IR 192", "Wang^XiaoDong=王^小東", "中文"))
    odd = _spliced(data, b"\x08\x00\x05\x00CS", _element(0x00050010, "LO", "Zoë".encode() + b" "))
    check(odd, fast=False)


def _meta_part(part10: bytes) -> bytes:
    return part10[:144 + struct.unpack_from("<L", part10, 140)[0]]


def test_dataset_in_the_other_vr_encoding_is_declined() -> None:
    """pydicom reads the dataset in the encoding its first element shows (not the File
    Meta's transfer syntax); the fast path leaves that to it."""
    explicit, implicit = to_bytes(make_ct(sop="1.2.3.4")), to_bytes(_implicit(make_ct(sop="1.2.3.4")))
    check(_meta_part(implicit) + explicit[len(_meta_part(explicit)):], fast=False)
    check(_meta_part(explicit) + implicit[len(_meta_part(implicit)):], fast=False)


def test_unusual_encodings_are_declined() -> None:
    data = to_bytes(make_ct())
    check(_spliced(data, b"\x08\x00\x16\x00UI", _element(0x00080008, "UN", b"ORIGINAL")), fast=False)
    check(_spliced(data, b"\x08\x00\x16\x00UI", _element(0x00080008, "XX", b"ORIGINAL")), fast=False)
    check(data[:128] + b"DICX" + data[132:], fast=False)
    check(to_bytes(_charset("ISO_IR 100\\ISO 2022 IR 87", "Doe^John", "text")), fast=False)


@pytest.mark.parametrize("undefined", [True, False])
def test_bulk_ranges_point_at_the_values(undefined: bool) -> None:
    """Every recorded bulk range holds exactly its value's bytes in the file; a value the
    reference cannot locate (inside a sequence of defined length) is recorded [-1, 0]."""
    import io

    from pydicom import dcmread

    data = to_bytes(_bulk(undefined=undefined))
    parsed = parse.parse_instance(io.BytesIO(data), len(data))
    ds = dcmread(io.BytesIO(data))
    values = [e.value for e in ds.iterall() if e.VR in ("OB", "OW", "UN") and e.tag != 0x7FE00010
              and isinstance(e.value, bytes) and len(e.value) > 1024 * 3 // 4]
    assert len(parsed.bulk_ranges) == len(values) >= 2
    located = [r for r in parsed.bulk_ranges if r != [-1, 0]]
    assert all(data[o:o + n] in values for o, n in located)
    assert (len(located) == len(values)) is undefined  # defined length: the nested one unknown


def test_element_cache_keys_on_the_character_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated elements come from the cache of converted elements: the same bytes decoded
    under another character set are converted again. Explicit and implicit VR objects of
    the same data set, parsed in turn, share the cache and still equal the reference."""
    monkeypatch.setattr(fastparse, "_ELEMENTS", {})
    utf8 = "Müller^Zoë".encode()
    ds_latin, ds_utf8 = (_charset(term, "x", "y") for term in ("ISO_IR 100", "ISO_IR 192"))
    for ds in (ds_latin, ds_utf8):  # the same bytes in both: UTF-8 text read as Latin-1 too
        ds["PatientName"].value = utf8.decode("latin-1") if ds is ds_latin else utf8.decode()
    first, second = to_bytes(ds_latin), to_bytes(ds_utf8)
    assert utf8 in first and utf8 in second
    for data in (first, second, first, second):  # cold, then warm cache
        assert check(data, True)
    parsed = [fastparse.try_fast_parse(io.BytesIO(d), len(d)) for d in (first, second)]
    assert parsed[0] is not None and parsed[1] is not None
    assert parsed[0].patient["patient_name"] == "MÃ¼ller^ZoÃ«"
    assert parsed[1].patient["patient_name"] == "Müller^Zoë"
    assert len(fastparse._ELEMENTS) > 0
    explicit, implicit = to_bytes(make_ct(seed=3)), to_bytes(_implicit(make_ct(seed=3)))
    for data in (explicit, implicit, explicit, implicit):
        assert check(data, True)


def test_element_cache_is_emptied_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastparse, "_ELEMENTS", {})
    monkeypatch.setattr(fastparse, "ELEMENTS_KEPT", 10)
    for seed in range(3):
        assert check(to_bytes(make_ct(seed=seed)), True)
        assert 0 < len(fastparse._ELEMENTS) <= 10
