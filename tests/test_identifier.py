"""Tests for ``pacs.dimse.identifier``: byte equality with pydicom's from_json + writer.

Every case is encoded by ``encode_identifier`` and by ``Dataset.from_json`` then
``pydicom.filewriter.write_dataset`` (Little Endian, Implicit and Explicit VR), and the
bytes must be equal; supported cases are also decoded back with pydicom and compared
as DICOM JSON. Real bodies come from ``pacs.parse.parse_instance`` on the sample data
and on pydicom's own test files.
"""

from __future__ import annotations

import base64
import copy
import json
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from pacs.dimse.identifier import encode_identifier, needs_utf8
from pacs.errors import InvalidInstance
from pacs.parse import parse_instance

UTF8 = "ISO_IR 192"
UID = "1.2.826.0.1.3680043.8.498.10006033424553191197925756243934006896"
B64 = base64.b64encode


def pydicom_bytes(body: dict[str, Any], implicit: bool) -> bytes:
    """What pydicom writes for ``Dataset.from_json(body)`` (the path being replaced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = Dataset.from_json(copy.deepcopy(body))
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = implicit
        write_dataset(fp, ds)
    return fp.getvalue()


def decode(data: bytes, implicit: bool) -> dict[str, Any]:
    """The DICOM JSON pydicom reads back from ``data``, normalised by :func:`normal`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_dataset(BytesIO(data), is_implicit_VR=implicit, is_little_endian=True)
        return normal(ds.to_json_dict())


def normal(body: dict[str, Any]) -> dict[str, Any]:
    """One spelling of an empty value (no "Value" rather than [] or [""]); VRs as str."""
    out = {}
    for key, elem in body.items():
        elem = {**elem, "vr": str(elem["vr"])}
        if elem.get("Value") in ([], [""]):
            del elem["Value"]
        if elem["vr"] == "SQ" and elem.get("Value"):
            elem["Value"] = [normal(item) for item in elem["Value"]]
        out[key] = elem
    return out


def el(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


STUDY = {
    "00080005": el("CS", "ISO_IR 100"),
    "00080020": el("DA", "20240105"),
    "00080030": el("TM", "101112.123"),
    "00080050": el("SH", "ACC123456"),
    "00080052": el("CS", "STUDY"),
    "00080054": el("AE", "PACS"),
    "00080061": el("CS", "CT", "SR"),
    "00080090": el("PN", {"Alphabetic": "REF^DOC"}),
    "00081030": el("LO", "CT CHEST W/O CONTRAST"),
    "00100010": el("PN", {"Alphabetic": "DOE^JOHN"}),
    "00100020": el("LO", "PID0001"),
    "00100030": el("DA", "19700101"),
    "00100040": el("CS", "M"),
    "0020000D": el("UI", UID),
    "00200010": el("SH", "1"),
    "00201206": el("IS", 2),
    "00201208": el("IS", 120),
}

#: (id, body, round-trips through pydicom's reader unchanged)
CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("study", STUDY, True),
    ("text-vrs", {
        "00080054": el("AE", "STORESCP"), "00101010": el("AS", "045Y"), "00080060": el("CS", "CT"),
        "00080020": el("DA", "20240101"), "0008002A": el("DT", "20240101120000.5+0100"),
        "00081030": el("LO", "odd"), "00104000": el("LT", "line1\r\nline2"),
        "00080050": el("SH", "ACC"), "00081090": el("LO", "X"), "00324000": el("LT", "comment"),
        "00080030": el("TM", "1200"), "00400031": el("UT", "long text"), "00081190": el("UR", "http://x/y"),
        "00080018": el("UI", "1.2.3"), "0040A160": el("UT", "abc"), "00080119": el("UC", "ucvalue"),
        "00204000": el("LT", "even"), "00321060": el("LO", "desc"), "00080081": el("ST", "addr"),
    }, True),
    ("numbers", {
        "00280010": el("US", 512), "00280011": el("US", 1, 2, 3), "00189219": el("SS", -5),
        "00081163": el("FD", 1.5, -2.25), "00186020": el("SL", -70000), "00189327": el("FD", 3),
        "00280106": el("US", 0), "00189310": el("FD", 0.1), "00181149": el("IS", 1, 2),
        "00700253": el("FL", 0.5), "00280008": el("IS", 3), "00081199": el("SQ"),
        "00289001": el("UL", 4000000000), "00720082": el("SV", -(2 ** 40), 5), "0008040C": el("UV", 2 ** 50),
    }, True),
    ("at", {"00209165": el("AT", "00100010", "7FE00010"), "00209167": el("AT", "00080020")}, True),
    ("empty", {
        "00100010": el("PN"), "00100020": el("LO"), "00280010": el("US"), "00181050": el("DS"),
        "00200013": el("IS"), "00080018": el("UI"), "00081115": el("SQ"), "00209165": el("AT"),
        "00111010": el("UN"), "00080020": el("DA"),
    }, True),
    ("empty-value-lists", {
        "00100010": {"vr": "PN", "Value": []}, "00280010": {"vr": "US", "Value": []},
        "00081115": {"vr": "SQ", "Value": []}, "00080050": {"vr": "SH", "Value": []}, "7FE00010": el("OB"),
    }, False),
    ("nulls", {
        "00100010": el("PN", None), "00100020": el("LO", None), "00280010": el("US", None),
        "00181050": el("DS", None), "00200013": el("IS", None), "00080061": el("CS", "CT", None, "MR"),
        "00080018": el("UI", None), "00209165": el("AT", None),
    }, False),
    ("multi-values", {
        "00080008": el("CS", "ORIGINAL", "PRIMARY", "AXIAL"), "00200037": el("DS", 1, 0, 0, 0, 1, 0),
        "00280030": el("DS", 0.5, 0.5), "00081032": el("SQ"), "00201041": el("DS", -12.5),
        "00181030": el("LO", "a", "bc", ""), "00080090": el("PN", {"Alphabetic": "A"}, {"Alphabetic": "B^C"}),
        "0020000D": el("UI", "1.2.3", "1.2.840.10008.1.2"),
    }, True),
    ("pn-groups", {
        "00100010": el("PN", {"Alphabetic": "Yamada^Tarou", "Ideographic": "YAMADA", "Phonetic": "yamada"}),
        "00080090": el("PN", {"Alphabetic": "A^B", "Phonetic": "p"}),
        "00081050": el("PN", {"Ideographic": "I"}, {}, {"Alphabetic": "X", "Ideographic": "", "Phonetic": ""}),
        "00081060": el("PN", "raw^string"),
    }, False),
    ("ds-is-forms", {
        "00181050": el("DS", 1.5, 3, "1.50", "0.0000001", 1e20, 0.12345678901234567, "  -2 ", 10),
        "00200013": el("IS", 1, "0012", 3.0, "-4", 2 ** 31),
        "00280030": el("DS", "0.3", 0.3), "00181100": el("DS", 250.0),
    }, False),
    ("ds-is-roundtrip", {"00181050": el("DS", 1.5, -0.25), "00200013": el("IS", 7, -8)}, True),
    ("odd-even-padding", {
        "00100020": el("LO", "ODD"), "00100021": el("LO", "EVEN"), "00080018": el("UI", "1.2.3"),
        "00080016": el("UI", "1.23"), "00080060": el("CS", "C"), "00200010": el("SH", ""),
        "00081090": el("LO", " lead"),
    }, True),
    ("ui-spaces", {"00080018": el("UI", " 1.2.3 ")}, False),
    ("sequence", {
        "00081115": el("SQ", {}, {
            "00081150": el("UI", "1.2.840.10008.5.1.4.1.1.2"), "00081155": el("UI", "1.2.3.4"),
            "00081199": el("SQ", {"00081150": el("UI", "1.2"), "00081155": el("UI", "1.2.5")}),
        }, {"00100020": el("LO", "item3"), "00081160": el("IS", 1, 2)}),
        "00100020": el("LO", "after"),
        "00080100": el("SH", "before"),
    }, True),
    ("sequence-null-item", {"00081115": el("SQ", None, {"00080100": el("SH", "x")})}, False),
    ("sequence-empty-nested", {"00400275": el("SQ", {"00321064": el("SQ"), "00400007": el("LO", "step")})}, True),
    ("private", {
        "00090010": el("LO", "ACME 1.0"), "00091001": el("LO", "private text"),
        "00091002": {"vr": "UN", "InlineBinary": B64(b"\x01\x02\x03\x04").decode()},
        "00091003": el("UN"), "00191010": el("LO", "x"), "00191011": el("DS", 2.5),
    }, False),
    ("inline-binary", {
        "00091002": {"vr": "OB", "InlineBinary": B64(b"\x00\x01\x02").decode()},
        "00091003": {"vr": "OW", "InlineBinary": [B64(b"\x01\x00\x02\x00").decode()]},
        "00091004": {"vr": "OF", "InlineBinary": B64(b"\x00\x00\x80\x3f").decode()},
        "00091005": {"vr": "OD", "InlineBinary": B64(bytes(8)).decode()},
        "00091006": {"vr": "OL", "InlineBinary": B64(bytes(4)).decode()},
        "00091007": {"vr": "OV", "InlineBinary": B64(bytes(8)).decode()},
        "00091008": {"vr": "UN", "InlineBinary": ""},
    }, False),
    ("long-ut", {"00400031": el("UT", "x" * 70001), "00100020": el("LO", "short")}, True),
    ("long-lt", {"00104000": el("LT", "y" * 70000)}, False),  # explicit: LT > 64 KiB -> UN
    ("group-lengths", {
        "00080000": el("UL", 4), "00100000": el("UL", 4), "00020000": el("UL", 4), "00100020": el("LO", "x"),
    }, False),
    ("us-or-ss", {"00280106": {"vr": "US or SS", "Value": [3]}, "00280103": el("US", 1)}, False),
    ("us-or-ss-empty", {"00280106": {"vr": "US or SS"}, "00280107": {"vr": "US or SS", "Value": [7]}}, False),
]

UNICODE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("latin", {"00100010": el("PN", {"Alphabetic": "Müller^Jürgen"}), "00081030": el("LO", "Étude thorax")}),
    ("japanese", {"00100010": el(
        "PN", {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"})}),
    ("odd-utf8", {"00100020": el("LO", "é"), "00081030": el("LO", "aé"), "00324000": el("LT", "ÿ"),
                  "00400031": el("UT", "ü" * 3), "00080081": el("ST", "ß"), "00200010": el("SH", "ñ")}),
    ("nested", {"00081115": el("SQ", {"00100010": el("PN", {"Alphabetic": "Ωmega"})}), "00100020": el("LO", "id")}),
    ("charset-in-body", {"00080005": el("CS", UTF8), "00100010": el("PN", {"Alphabetic": "Zoë"})}),
    ("ascii-with-utf8", {"00100010": el("PN", {"Alphabetic": "PLAIN"})}),
]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("body", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_equals_pydicom(body: dict[str, Any], implicit: bool) -> None:
    assert encode_identifier(body, implicit_vr=implicit) == pydicom_bytes(body, implicit)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("body", [c[1] for c in CASES if c[2]], ids=[c[0] for c in CASES if c[2]])
def test_round_trip(body: dict[str, Any], implicit: bool) -> None:
    assert decode(encode_identifier(body, implicit_vr=implicit), implicit) == normal(body)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("body", [c[1] for c in UNICODE_CASES], ids=[c[0] for c in UNICODE_CASES])
def test_unicode_equals_pydicom_and_round_trips(body: dict[str, Any], implicit: bool) -> None:
    expected_body = {**body, "00080005": el("CS", UTF8)}
    data = encode_identifier(body, implicit_vr=implicit, charset=UTF8)
    assert data == pydicom_bytes(expected_body, implicit)
    assert decode(data, implicit) == normal(expected_body)


def test_needs_utf8() -> None:
    assert not needs_utf8(STUDY)
    for _, body in UNICODE_CASES[:-1]:
        assert needs_utf8(body)
    assert not needs_utf8(UNICODE_CASES[-1][1])
    assert needs_utf8({"00080060": el("CS", None, "É")})
    assert needs_utf8({"00100010": el("PN", None, {"Ideographic": "山田"})})
    assert not needs_utf8({"00100010": el("PN", None, {}), "00081115": el("SQ", None, {}), "00280010": el("US", 1)})
    binary = {"00091002": {"vr": "UN", "InlineBinary": "AAE="}, "7FE00010": {"vr": "OB", "BulkDataURI": "bulk:ü"}}
    assert not needs_utf8(binary)


def test_non_ascii_without_charset_raises() -> None:
    with pytest.raises(ValueError, match="ISO_IR 192"):
        encode_identifier(UNICODE_CASES[0][1], implicit_vr=True)
    with pytest.raises(ValueError, match="charset"):
        encode_identifier(STUDY, implicit_vr=True, charset="ISO_IR 100")
    assert encode_identifier(STUDY, implicit_vr=True, charset="ISO_IR 6") == pydicom_bytes(STUDY, True)


def test_utf8_replaces_other_charsets_in_body_and_items() -> None:
    body = {"00080005": el("CS", "ISO_IR 100"),
            "00081115": el("SQ", {"00080005": el("CS", "ISO 2022 IR 87"), "00100010": el("PN", {"Alphabetic": "é"})})}
    expected = {"00080005": el("CS", UTF8),
                "00081115": el("SQ", {"00080005": el("CS", UTF8), "00100010": el("PN", {"Alphabetic": "é"})})}
    for implicit in (True, False):
        assert encode_identifier(body, implicit_vr=implicit, charset=UTF8) == pydicom_bytes(expected, implicit)
    assert body["00080005"]["Value"] == ["ISO_IR 100"]  # the caller's body is not modified


def test_bulk_data_uri_left_out() -> None:
    body = {"00100020": el("LO", "x"), "7FE00010": {"vr": "OW", "BulkDataURI": "bulk:pixeldata"},
            "00081115": el("SQ", {"00091010": {"vr": "OB", "BulkDataURI": "bulk:0"}, "00080100": el("SH", "v")})}
    without = {"00100020": el("LO", "x"), "00081115": el("SQ", {"00080100": el("SH", "v")})}
    for implicit in (True, False):
        assert encode_identifier(body, implicit_vr=implicit) == pydicom_bytes(without, implicit)


def test_explicit_long_value_becomes_un() -> None:
    data = encode_identifier({"00104000": el("LT", "y" * 70000)}, implicit_vr=False)
    assert data[:12] == b"\x10\x00\x00\x40UN\x00\x00" + (70000).to_bytes(4, "little")
    assert len(data) == 12 + 70000
    assert encode_identifier({"00400031": el("UT", "y" * 70001)}, implicit_vr=False)[4:8] == b"UT\x00\x00"


def test_differences_from_pydicom() -> None:
    """Where pydicom's output is not valid DICOM, ours follows PS3.5 6.2 (see module doc)."""
    assert encode_identifier({"00181050": el("DS", 1.5, None)}, implicit_vr=True).endswith(b"\x04\0\0\x001.5\\")
    assert encode_identifier({"00200013": el("IS", "", 2)}, implicit_vr=True).endswith(b"\\2")
    odd_un = {"00091002": {"vr": "UN", "InlineBinary": B64(b"abc").decode()}}
    assert encode_identifier(odd_un, implicit_vr=True) == b"\x09\x00\x02\x10\x04\x00\x00\x00abc\x00"


@pytest.mark.parametrize("body", [
    {"00280010": el("US", -1)}, {"00280010": el("US", 70000)}, {"00280010": el("US", 1, None)},
    {"00280010": el("US", "x")}, {"00209165": el("AT", "zz")}, {"00181050": el("DS", "abc")},
    {"00200013": el("IS", "1.5")}, {"00100020": {"vr": "LO", "Value": "notalist"}},
    {"00100020": {"vr": "XX", "Value": ["x"]}}, {"7FE00010": {"vr": "OB or OW"}},
    {"0010002": el("LO", "x")}, {"0010002g": el("LO", "x")}, {"0010002a": el("LO", "x")},
    {"00091002": {"vr": "OB", "Value": [1]}}, {"00100020": {"vr": "LO", "InlineBinary": "AAE="}},
    {"00091002": {"vr": "OB", "InlineBinary": 12}},
], ids=lambda b: json.dumps(b)[:40])
def test_invalid_raises_value_error(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        encode_identifier(body, implicit_vr=False)


# -- real bodies ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
REAL_FILES = sorted((ROOT / "sample_data" / "files").glob("*.dcm")) + sorted(
    (PYDICOM_DATA / "test_files").glob("*.dcm")) + sorted((PYDICOM_DATA / "charset_files").glob("*.dcm"))


def _drop_bulk(body: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, elem in body.items():
        if "BulkDataURI" in elem:
            continue
        if elem["vr"] == "SQ" and elem.get("Value"):
            elem = {**elem, "Value": [_drop_bulk(item) if item else item for item in elem["Value"]]}
        out[key] = elem
    return out


def _reference_body(body: dict[str, Any], utf8: bool) -> dict[str, Any]:
    """``body`` as we encode it, for pydicom: odd UN padded, UTF-8 declared at every level."""
    out = {}
    for key, elem in body.items():
        if elem["vr"] == "UN" and "InlineBinary" in elem:
            raw = base64.b64decode(elem["InlineBinary"])
            elem = {**elem, "InlineBinary": B64(raw + b"\x00" * (len(raw) & 1)).decode()}
        if elem["vr"] == "SQ" and elem.get("Value"):
            elem = {**elem, "Value": [_reference_body(i, utf8) if i else i for i in elem["Value"]]}
        out[key] = elem
    if utf8 and "00080005" in out:
        out["00080005"] = el("CS", UTF8)
    return out


def _real_body(path: Path) -> dict[str, Any]:
    """The stored DICOM JSON of ``path`` as ingest makes it; for a file ingest rejects, the
    same conversion (bulk data over 1 KiB as URIs) straight from pydicom."""
    with path.open("rb") as fp:
        try:
            return json.loads(parse_instance(fp, path.stat().st_size).dicom_json)
        except InvalidInstance:
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: "bulk:x",
                               suppress_invalid_tags=True)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_real_bodies_equal_pydicom(path: Path) -> None:
    body = _drop_bulk(_real_body(path))
    utf8 = needs_utf8(body)
    reference = _reference_body(body, utf8)
    if utf8:
        reference["00080005"] = el("CS", UTF8)
    for implicit in (True, False):
        ours = encode_identifier(body, implicit_vr=implicit, charset=UTF8 if utf8 else None)
        assert ours == pydicom_bytes(reference, implicit)


def test_real_bodies_cover_charsets() -> None:
    """The real-body test is not vacuous: some files ingest and need UTF-8."""
    names = {p.name for p in REAL_FILES}
    assert len(REAL_FILES) >= 50 and {"chrH31.dcm", "chrRuss.dcm", "CT_small.dcm"} <= names
    path = PYDICOM_DATA / "charset_files" / "chrRuss.dcm"
    with path.open("rb") as fp:
        body = json.loads(parse_instance(fp, path.stat().st_size).dicom_json)  # ingestible, not a fallback
    assert needs_utf8(body)


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("name", ["DOE^JOHN", "Müller^Jürgen"])
def test_cached_answers_follow_the_computed_values(name: str, implicit: bool) -> None:
    """The C-FIND SCP caches whole identifiers (pacs/dimse/find.py RESPONSES): a repeat
    with the same counts comes from the cache, changed counts are encoded afresh; each
    equals encoding the whole answer."""
    from pacs.dimse.find import _response
    from pacs.query import Level
    from pacs.query.run import Match

    stored = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
              "0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00080020": {"vr": "DA", "Value": ["20240101"]}}
    tags = ["00080005", "00080020", "00080050", "00100010", "0020000D", "00201208", "00080061"]
    answers = []
    for count, modalities in [(3, ["CT"]), (4, ["CT", "MR"]), (3, ["CT"])]:  # the 3rd repeats the 1st
        computed = {"00201208": {"vr": "IS", "Value": [count]}, "00080061": {"vr": "CS", "Value": modalities}}
        match = Match(1, {**stored, **computed}, stored_key=("test", name, implicit), computed=frozenset(computed))
        whole = {**stored, **computed, "00080005": {"vr": "CS"}, "00080050": {"vr": "SH"},
                 "00080052": {"vr": "CS", "Value": ["STUDY"]}, "00080054": {"vr": "AE", "Value": ["PACS"]}}
        expected = encode_identifier(whole, implicit_vr=implicit, charset="ISO_IR 192" if needs_utf8(whole) else None)
        answers.append(_response(match, tags, Level.STUDY, "PACS", implicit))
        assert answers[-1] == expected
    assert answers[2] is answers[0] and answers[1] is not answers[0]  # the repeat came from the cache
