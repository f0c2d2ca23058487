"""Microseconds per C-FIND identifier: ``pacs.dimse.identifier`` against pydicom's path.

The body is a study-level response built from a sample instance's stored DICOM JSON
(``pacs.parse.parse_instance`` on ``sample_data/files``), the way the C-FIND SCP answers
a typical study query (17 elements; its names are not ASCII, so UTF-8 is used). Timed, best of ``--repeat`` runs:

* ours: ``needs_utf8`` + ``encode_identifier`` (implicit and explicit VR);
* pydicom: ``Dataset.from_json`` + ``write_dataset`` (the bytes ours must equal), and
  ``Dataset.from_json`` + pynetdicom's ``encode`` (what the SCP does today).

Usage: ``python bench/identifier.py [--number 5000] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filebase import DicomBytesIO  # noqa: E402
from pydicom.filewriter import write_dataset  # noqa: E402

from pacs.dimse.identifier import encode_identifier, needs_utf8  # noqa: E402
from pacs.parse import parse_instance  # noqa: E402

STUDY_KEYS = [
    "00080005", "00080020", "00080030", "00080050", "00080090", "00081030", "00100010",
    "00100020", "00100030", "00100040", "0020000D", "00200010",
]


def study_body() -> dict[str, dict]:
    """A study-level C-FIND response body from the first sample file."""
    path = sorted((ROOT / "sample_data" / "files").glob("*.dcm"))[0]
    with path.open("rb") as fp:
        stored = json.loads(parse_instance(fp, path.stat().st_size).dicom_json)
    body = {key: stored.get(key, {"vr": "CS" if key == "00080005" else "LO"}) for key in STUDY_KEYS}
    body["00080052"] = {"vr": "CS", "Value": ["STUDY"]}
    body["00080054"] = {"vr": "AE", "Value": ["PACS"]}
    body["00080061"] = {"vr": "CS", "Value": [stored.get("00080060", {}).get("Value", ["OT"])[0]]}
    body["00201206"] = {"vr": "IS", "Value": [3]}
    body["00201208"] = {"vr": "IS", "Value": [120]}
    return body


def ours(body: dict[str, dict], implicit: bool) -> bytes:
    return encode_identifier(body, implicit_vr=implicit, charset="ISO_IR 192" if needs_utf8(body) else None)


def pydicom_writer(body: dict[str, dict], implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, Dataset.from_json(body))
    return fp.getvalue()


def pynetdicom_encode(body: dict[str, dict], implicit: bool) -> bytes:
    from pynetdicom.dsutils import encode

    return encode(Dataset.from_json(body), implicit, True)


def per_call_us(fn, body: dict[str, dict], implicit: bool, number: int, repeat: int) -> float:
    times = timeit.repeat(lambda: fn(body, implicit), number=number, repeat=repeat)
    return min(times) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5000, help="calls per timed run (ours)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the best is kept")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    body = study_body()
    # pydicom is given the character set ours declares (UTF-8 when a value is not ASCII)
    reference = {**body, "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]}} if needs_utf8(body) else body
    for implicit in (True, False):
        if ours(body, implicit) != pydicom_writer(reference, implicit):
            raise SystemExit("encode_identifier differs from pydicom on the sample body")
    print(f"study-level body: {len(body)} elements, {len(ours(body, True))} bytes implicit")
    slow = max(args.number // 20, 50)
    rows = [
        ("ours needs_utf8 only", lambda b, i: needs_utf8(b), body, args.number),
        ("ours needs_utf8 + encode_identifier", ours, body, args.number),
        ("pydicom from_json + write_dataset", pydicom_writer, reference, slow),
        ("pydicom from_json + pynetdicom encode", pynetdicom_encode, reference, slow),
    ]
    print(f"{'path':40} {'implicit us':>12} {'explicit us':>12}")
    for name, fn, data, number in rows:
        imp = per_call_us(fn, data, True, number, args.repeat)
        exp = per_call_us(fn, data, False, number, args.repeat)
        print(f"{name:40} {imp:12.1f} {exp:12.1f}")
    total = per_call_us(ours, body, True, args.number, args.repeat) * 200 / 1000
    print(f"200 responses (ours, implicit): {total:.2f} ms")


if __name__ == "__main__":
    main()
