"""pacs.dicom_json gives pydicom's DICOM JSON (PS3.18 F.2), bulk handler calls included.

Each case converts two independent parses of the same bytes, one with pydicom's
``Dataset.to_json_dict`` and one with ``dataset_to_json_dict``, and compares the
documents (after a JSON round trip) and the bulk data handler's calls, in order.
"""

from __future__ import annotations

import json
import logging
import random
import struct
import warnings
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.hooks import hooks, raw_element_value_fix_separator
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs import parse
from pacs.dicom_json import dataset_to_json_dict

SAMPLE_FILES = sorted((Path(__file__).resolve().parent.parent / "sample_data" / "files").glob("*.dcm"))
#: The files get_testdata_files("*.dcm") finds in pydicom's package, without its downloads of
#: the others (15 s of failures offline), and the character set ones (Japanese, Korean, ...).
PYDICOM_FILES = sorted(str(p) for p in (Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))
PYDICOM_FILES += sorted(get_charset_files("*.dcm"))
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
TEXT_VRS = set("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UR UT".split())
UNDEFINED = 0xFFFFFFFF
TRANSFER_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian,
                     "big": ExplicitVRBigEndian}


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    """pydicom warns and logs about the invalid values these tests feed it on purpose."""
    logging.disable(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def _convert(ds: Dataset, fast: bool, suppress: bool) -> tuple[Any, list]:
    """The JSON document (or the exception type) and the handler's calls."""
    calls: list = []

    def handler(elem: DataElement) -> str:
        calls.append((int(elem.tag), elem.VR, elem.file_tell, len(elem.value)))
        return f"bulk:{len(calls)}"

    kwargs = dict(bulk_data_threshold=1024, bulk_data_element_handler=handler,
                  suppress_invalid_tags=suppress)
    try:
        body = dataset_to_json_dict(ds, **kwargs) if fast else ds.to_json_dict(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the same failure is the expected outcome
        return type(exc).__name__, calls
    return json.loads(json.dumps(body)), calls


def _assert_same(read: Callable[[], Dataset], suppress: bool = True,
                 prepare: Callable[[Dataset], Any] | None = None) -> Any:
    """Compare the two conversions of two fresh datasets from ``read``; pydicom's result."""
    old_ds, new_ds = read(), read()
    if prepare:
        prepare(old_ds)
        prepare(new_ds)
    expected = _convert(old_ds, False, suppress)
    actual = _convert(new_ds, True, suppress)
    assert actual[0] == expected[0]
    assert actual[1] == expected[1]
    return expected[0]


TOUCHED = ("SOPInstanceUID", "StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate",
           "StudyDate", "StudyTime", "ReferringPhysicianName", "Modality", "SeriesNumber",
           "InstanceNumber", "Rows", "Columns", "BitsAllocated", "ImageType", "PixelSpacing",
           "SliceThickness", "WindowCenter", "ImagePositionPatient", "SpecificCharacterSet")


def _index_values(ds: Dataset) -> None:
    """Read some attributes first, as an ingest may: pydicom converts those elements."""
    for keyword in TOUCHED:
        try:
            ds.get(keyword)
        except Exception:  # noqa: BLE001 - invalid values may not convert
            pass


def _reader(path: Path | str, **kwargs: Any) -> Callable[[], Dataset] | None:
    """A function reading ``path`` anew, or None if pydicom cannot read it."""
    try:
        dcmread(path, **kwargs)
    except Exception:  # noqa: BLE001 - some of pydicom's test files are broken on purpose
        return None
    return lambda: dcmread(path, **kwargs)


@pytest.mark.parametrize("path", PYDICOM_FILES + SAMPLE_FILES, ids=lambda p: Path(p).name)
def test_files_match_pydicom(path: str) -> None:
    read = _reader(path, stop_before_pixels=True)
    if read is None:
        pytest.skip("unreadable by pydicom")
    _assert_same(read)
    _assert_same(read, prepare=_index_values)
    _assert_same(read, suppress=False)
    read_all = _reader(path)  # with the pixel data too: bulk data
    if read_all is not None:
        _assert_same(read_all, prepare=_index_values)


# --- constructed datasets, encoded by hand so that any byte string can be fed in ----------

def _element(tag: int, vr: str, value: bytes, syntax: str, length: int | None = None) -> bytes:
    """One data element (PS3.5 7.1); ``length`` overrides the value length."""
    end = ">" if syntax == "big" else "<"
    length = len(value) if length is None else length
    head = struct.pack(f"{end}HH", tag >> 16, tag & 0xFFFF)
    if syntax == "implicit":
        return head + struct.pack("<L", length) + value
    if vr in LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack(f"{end}L", length) + value
    return head + vr.encode() + struct.pack(f"{end}H", length) + value


def _body(elements: list[tuple], syntax: str) -> bytes:
    """Elements of (tag, vr, bytes or list of item element lists [, undefined length])."""
    out = b""
    for tag, vr, value, *undefined in sorted(elements, key=lambda e: e[0]):
        if vr != "SQ":
            pad = b" " * (len(value) % 2) if vr in TEXT_VRS else b""  # binary: as given
            out += _element(tag, vr, value + pad, syntax)
            continue
        items = b"".join(_item(_body(item, syntax), syntax, bool(undefined)) for item in value)
        if undefined:
            out += _element(tag, vr, items + _marker(0xE0DD, 0, syntax), syntax, UNDEFINED)
        else:
            out += _element(tag, vr, items, syntax)
    return out


def _marker(element: int, length: int, syntax: str) -> bytes:
    """An item or delimitation tag (FFFE,xxxx) and its length (PS3.5 7.5)."""
    return struct.pack(">HHL" if syntax == "big" else "<HHL", 0xFFFE, element, length)


def _item(body: bytes, syntax: str, undefined: bool) -> bytes:
    if not undefined:
        return _marker(0xE000, len(body), syntax) + body
    return _marker(0xE000, UNDEFINED, syntax) + body + _marker(0xE00D, 0, syntax)


def _part10(elements: list[tuple], syntax: str = "explicit") -> Callable[[], Dataset]:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = TRANSFER_SYNTAXES[syntax]
    fp = BytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    data = fp.getvalue() + _body(elements, syntax)
    return lambda: dcmread(BytesIO(data))


def _texts(*values: tuple[int, str, str]) -> list[tuple]:
    return [(tag, vr, text.encode("latin-1")) for tag, vr, text in values]


VALUES = _texts(
    (0x00080008, "CS", "ORIGINAL\\PRIMARY\\AXIAL"), (0x00080060, "CS", " CT \\MR"),
    (0x00080016, "UI", "1.2.840.10008.5.1.4.1.1.2\0"), (0x00080018, "UI", "1.2.3\\4.5.6"),
    (0x00080020, "DA", "20240102"), (0x00080030, "TM", "101010.123456 "),
    (0x0008002A, "DT", "20240102101010"), (0x00101010, "AS", "059Y"),
    (0x00080054, "AE", "  STORE_SCP \\ OTHER"), (0x00080070, "LO", "Maker  \\\\Other \0"),
    (0x00081010, "SH", "STATION1"), (0x00081030, "LO", ""), (0x00180050, "DS", "2.5 "),
    (0x00200032, "DS", " -199.6094\\ -199.6094 \\-1.25e1 "), (0x00200037, "DS", "1\\0.\\.0\\+0\\1E0\\-0"),
    (0x00281050, "DS", "  "), (0x00200013, "IS", "  12 "), (0x00181150, "IS", "+5\\ -3 \\0"),
    (0x00200012, "IS", " "), (0x00100010, "PN", "Doe^John^^Dr.=Ideo^Graphic=Pho^Netic"),
    (0x00080090, "PN", "Adams^Grace\\Smith^Jo="), (0x00081050, "PN", "=Only^Ideographic"),
    (0x00324000, "LT", "line one\r\nline \\ two  "), (0x00081080, "LO", "A\\B\\C"),
    (0x00400280, "ST", "comments \\ kept\0"), (0x00700080, "CS", ""),
    (0x0040A160, "UT", "Unlimited text   "), (0x0040A30A, "DS", "1.5"),
    (0x00080120, "UR", "http://example.com/a?b=c  "), (0x00189913, "UC", "one\\two "),
)
NUMBERS = [
    (0x00280010, "US", struct.pack("<H", 512)), (0x00280011, "US", struct.pack("<H", 0)),
    (0x00280106, "SS", struct.pack("<h", -2000)), (0x00189215, "SL", struct.pack("<2l", -5, 7)),
    (0x00281052, "DS", b"-1024"), (0x00189306, "FD", struct.pack("<3d", 0.5, -1e300, 3.25)),
    (0x00189320, "FL", struct.pack("<f", 0.1)), (0x00200020, "CS", b"L\\P"),
    (0x00189327, "FD", struct.pack("<d", 1.0)), (0x00280009, "AT", struct.pack("<HH", 0x0018, 0x1063)),
    (0x00209165, "AT", struct.pack("<4H", 0x0020, 0x9056, 0x0020, 0x9057)),
    (0x00082128, "SV", struct.pack("<q", -(2**40))), (0x0008040C, "UV", struct.pack("<Q", 2**63)),
    (0x00080005, "CS", b""), (0x00080000, "UL", struct.pack("<L", 10)),
]
INVALID = _texts(
    (0x00180050, "DS", "1.00000000000000001"), (0x00180060, "DS", "1\\\\2"), (0x00180088, "DS", "nan"),
    (0x00180090, "DS", "1,5"), (0x00181100, "DS", " 1.000000000000001"), (0x00200013, "IS", "1.0"),
    (0x00181151, "IS", "123456789012345"),
    (0x00181152, "IS", "2147483648"), (0x00181170, "IS", "1\\"), (0x0020000D, "UI", "1.02.3"),
    (0x0020000E, "UI", "1.2 \\3"), (0x00081030, "LO", "x" * 65), (0x00081010, "SH", "ABCDEFGHIJKLMNOPQ"),
    (0x00100010, "PN", "A=B=C=D"), (0x00080090, "PN", "Adams^Grace\\"), (0x00081050, "PN", "y" * 65),
    (0x00400280, "ST", "s" * 1025), (0x00321060, "LO", "ok"),
) + [(0x00280101, "US", b"\x10\x00\x00"), (0x00209165, "AT", b"\x20\x00\x56\x90\x00\x00")]


def _binary(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def _sequences() -> list[tuple]:
    leaf = [(0x00081150, "UI", b"1.2.840.10008.5.1.4.1.1.2"), (0x00081155, "UI", b"1.2.3.4.5")]
    item_with_bulk = [(0x00080100, "SH", b"CODE"), (0x00660023, "OB", _binary(1500)),
                      (0x00081199, "SQ", [leaf, leaf], True)]
    return [
        (0x00081140, "SQ", [leaf, leaf + [(0x00081160, "IS", b"1\\2")]]),
        (0x00081115, "SQ", [item_with_bulk, [(0x00081140, "SQ", [leaf], True)]], True),
        (0x00082112, "SQ", [[(0x00660023, "OB", _binary(2000)), (0x00200013, "IS", b"1.5")]]),
        (0x00081250, "SQ", [], True), (0x00400275, "SQ", [[]]),
    ]


def _privates() -> list[tuple]:
    return [
        (0x00090010, "LO", b"ACME 1.0"), (0x00091001, "DS", b"1.5\\2"), (0x00091002, "UN", b"raw"),
        (0x00091003, "SQ", [[(0x00091004, "LO", b"nested")]], True), (0x00091005, "OB", _binary(900)),
        (0x00291010, "OW", _binary(4096)), (0x00291011, "UN", b"1\\2"),
    ]


def _binaries() -> list[tuple]:
    return [(0x00660023, "OB", _binary(767)), (0x00660024, "OB", _binary(768)),
            (0x00660025, "OW", _binary(769)), (0x00660026, "OF", _binary(16)),
            (0x00660027, "OL", b""), (0x7FE00008, "OF", _binary(3000)), (0x00283006, "US", _binary(64)),
            (0x00283002, "SS", struct.pack("<3h", -1, 0, 16)),
            (0x00281101, "US", struct.pack("<3H", 256, 0, 8))]


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "big"])
@pytest.mark.parametrize("case", ["values", "numbers", "invalid", "sequences", "privates", "binaries"])
def test_constructed_datasets_match_pydicom(case: str, syntax: str) -> None:
    elements = {"values": VALUES, "numbers": NUMBERS, "invalid": INVALID, "sequences": _sequences(),
                "privates": _privates(), "binaries": _binaries()}[case]
    if syntax == "big":
        elements = [_swapped(e) for e in elements]
    read = _part10(list(elements), syntax)
    body = _assert_same(read)
    assert isinstance(body, dict) and body  # the comparison had something to compare
    _assert_same(read, suppress=False)
    _assert_same(read, prepare=_index_values)


def _swapped(element: tuple) -> tuple:
    """A little endian test element with its binary numbers in big endian order."""
    tag, vr, value, *rest = element
    sizes = {"US": 2, "SS": 2, "AT": 2, "SL": 4, "UL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}
    if vr in sizes and len(value) % sizes[vr] == 0:
        size = sizes[vr]
        value = b"".join(value[i:i + size][::-1] for i in range(0, len(value), size))
    return (tag, vr, value, *rest)


CHARSET_CASES = {
    "latin1": (b"ISO_IR 100", "Müller^Zoë".encode("latin-1"), "Straße\\Café".encode("latin-1")),
    "utf8": (b"ISO_IR 192", "Wang^XiaoDong=王^小東=".encode(), "中文\\テキスト".encode()),
    "utf8-invalid": (b"ISO_IR 192", b"Bad^\xff\xfe", b"\xc3"),
    "japanese": (b"\\ISO 2022 IR 87", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B="
                 b"\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B", b"\x1b$B;3ED\x1b(B"),
    "korean": (b"\\ISO 2022 IR 149", b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7="
               b"\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf", b"Plain ASCII"),
    "greek": (b"ISO_IR 126", "Διονυσιος".encode("iso8859_7"), b"abc"),
    "unknown": (b"ISO_IR 999", b"Doe^John", b"text"),
    "default": (b"", b"Doe^John", b"text"),
}


@pytest.mark.parametrize("syntax", ["explicit", "implicit"])
@pytest.mark.parametrize("charset", sorted(CHARSET_CASES))
def test_character_sets_match_pydicom(charset: str, syntax: str) -> None:
    term, name, text = CHARSET_CASES[charset]
    read = _part10([(0x00080005, "CS", term), (0x00100010, "PN", name), (0x00081030, "LO", text),
                    (0x00324000, "LT", text), (0x00081140, "SQ", [[(0x00100010, "PN", name)]], True)],
                   syntax)
    _assert_same(read)
    _assert_same(read, suppress=False)
    _assert_same(read, prepare=_index_values)


def _built() -> Dataset:
    """A dataset made in code: converted elements only, of every value type."""
    ds = Dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientName = "Doe^John=Ideo=Phon"
    ds.add(DataElement(0x00080090, "PN", ["A^B", "C^D=E"]))
    ds.add(DataElement(0x00081060, "PN", ""))
    ds.PixelSpacing = [0.5, "0.25"]
    ds.SliceThickness = "1.25"
    ds.InstanceNumber = "7"
    ds.add(DataElement(0x00181150, "IS", ["1", "2"]))
    ds.Rows = 16
    ds.add(DataElement(0x00189306, "FD", [1.5, 2.5]))
    ds.add(DataElement(0x00189307, "FD", 3))
    ds.add(DataElement(0x00280009, "AT", [0x00181063, 0x00185065]))
    ds.add(DataElement(0x00081030, "LO", ""))
    ds.add(DataElement(0x00081040, "LO", None))
    ds.add(DataElement(0x00660023, "OB", _binary(2000)))
    ds.add(DataElement(0x00660024, "OB", b"\x01\x02"))
    item = Dataset()
    item.PatientName, item.SliceThickness = "Item^Name", "2.5"
    item.add(DataElement(0x00660023, "OB", _binary(1500)))
    ds.add(DataElement(0x00081250, "SQ", [Dataset(), item]))
    return ds


def test_datasets_built_in_code_match_pydicom() -> None:
    body = _assert_same(_built)
    names = [{"Alphabetic": "Doe^John", "Ideographic": "Ideo", "Phonetic": "Phon"}]
    assert body["00100010"]["Value"] == names
    _assert_same(_built, suppress=False)


def test_known_values() -> None:
    """A few values spelled out, so that pydicom's own semantics are pinned here too."""
    body = _assert_same(_part10(VALUES + NUMBERS))
    assert body["00200032"] == {"vr": "DS", "Value": [-199.6094, -199.6094, -12.5]}
    assert body["00181150"] == {"vr": "IS", "Value": [5, -3, 0]}
    assert body["00281050"] == {"vr": "DS"} and body["00200012"] == {"vr": "IS"}
    assert body["00080090"]["Value"] == [{"Alphabetic": "Adams^Grace"}, {"Alphabetic": "Smith^Jo"}]
    assert body["00081050"]["Value"] == [{"Alphabetic": "", "Ideographic": "Only^Ideographic"}]
    assert body["00080054"]["Value"] == ["STORE_SCP", "OTHER"]
    assert body["00209165"]["Value"] == ["00209056", "00209057"]
    assert body["00280106"]["Value"] == [-2000]
    assert body["00081030"] == {"vr": "LO"}


def test_numbers_are_plain_json_numbers() -> None:
    """DS and IS values are float and int, not pydicom's DSfloat and IS (F.2.3.1)."""
    ds = _part10(VALUES)()
    _index_values(ds)
    assert ds.SliceThickness  # converted by pydicom before the JSON, as are these:
    ds.add(DataElement(0x00181150, "IS", ["1", "2"]))
    body = dataset_to_json_dict(ds, suppress_invalid_tags=True)
    numbers = [v for e in body.values() if e["vr"] in ("DS", "IS") for v in e.get("Value", [])]
    assert len(numbers) > 10 and {type(v) for v in numbers} == {int, float}


def test_invalid_elements_are_dropped_like_pydicom() -> None:
    body = _assert_same(_part10(INVALID))
    assert set(body) == {"00321060"}  # the only valid one


def test_bulk_data_and_order_of_handler_calls() -> None:
    body = _assert_same(_part10(_sequences() + _binaries() + _privates()))
    assert body["00660023"]["InlineBinary"] and body["00660025"]["BulkDataURI"].startswith("bulk:")
    assert "00082112" not in body  # an invalid IS in its item drops the whole sequence


def test_non_default_pydicom_hooks_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "raw_element_value", raw_element_value_fix_separator)
    monkeypatch.setattr(hooks, "raw_element_kwargs", {"target_VRs": ("DS",), "separator": b","})
    body = _assert_same(_part10(VALUES + NUMBERS + INVALID[3:4]))
    assert body["00180090"]["Value"] == [1.0, 5.0]


def test_build_json_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """parse._build_json gives the same text and bulk ranges as with pydicom's converter."""
    def build(path: Path, converter: Callable | None) -> tuple[Any, list]:
        if converter:
            monkeypatch.setattr(parse, "dataset_to_json_dict", converter)
        with open(path, "rb") as fp:
            parsed = parse.parse_instance(fp, path.stat().st_size)
        monkeypatch.undo()
        return json.loads(parsed.dicom_json), parsed.bulk_ranges

    def pydicom_converter(ds: Dataset, **kwargs: Any) -> dict:
        return ds.to_json_dict(**kwargs)

    for path in SAMPLE_FILES:
        assert build(path, None) == build(path, pydicom_converter)


FUZZ_TAGS = {"CS": 0x00080060, "DS": 0x00180050, "IS": 0x00200013, "UI": 0x00080018, "PN": 0x00100010,
             "LO": 0x00081030, "SH": 0x00081010, "ST": 0x00400280, "UT": 0x0040A160, "AE": 0x00080054,
             "UR": 0x00080120, "TM": 0x00080030, "US": 0x00280010, "FD": 0x00189306, "AT": 0x00280009}


@pytest.mark.parametrize("seed", range(4))
def test_random_values_match_pydicom(seed: int) -> None:
    """Values drawn from the characters that matter (digits, signs, separators, padding,
    escape and non-ASCII bytes) in every VR, character set and encoding."""
    rng = random.Random(seed)
    alphabet = b"0123456789 .\\+-eE\0=^AZaz_\t\n,:/\xe9\xff\x1b\xc3\xa9"
    for _ in range(25):
        charset = rng.choice([b"", b"ISO_IR 100", b"ISO_IR 192", b"\\ISO 2022 IR 87"])
        elements = [(0x00080005, "CS", charset)]
        for vr, tag in FUZZ_TAGS.items():
            pool = alphabet if vr not in ("US", "FD", "AT") else bytes(range(256))
            pool = b"0123456789 .\\" if rng.random() < 0.4 and vr in TEXT_VRS | {"UI"} else pool
            size = rng.choice([0, 1, 2, 4, 8, 12, 13, 16, 17, 64, 65])
            elements.append((tag, vr, bytes(rng.choice(pool) for _ in range(size))))
        read = _part10(elements, rng.choice(sorted(TRANSFER_SYNTAXES)))
        prepare = _index_values if rng.random() < 0.3 else None
        _assert_same(read, suppress=rng.random() < 0.7, prepare=prepare)


def test_stored_json_text_is_valid_json_and_matches_the_standard_library() -> None:
    """pacs.dicom_json.to_json_text: json.dumps' compact UTF-8 output, but a non-finite
    float becomes null (NaN is not JSON, and the search could not read it back), and an
    integer beyond 64 bits still encodes."""
    import json

    from pacs.dicom_json import to_json_text

    body = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
            "00181050": {"vr": "DS", "Value": [0.5, 12]}}
    assert to_json_text(body) == json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert to_json_text({"00189087": {"vr": "FD", "Value": [float("nan"), float("inf")]}}) == \
        '{"00189087":{"vr":"FD","Value":[null,null]}}'
    assert json.loads(to_json_text({"x": {"vr": "UV", "Value": [2**70]}}))["x"]["Value"] == [2**70]
