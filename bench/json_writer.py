"""Time ingest's DICOM JSON (PS3.18 F.2) generation: pydicom's ``to_json_dict`` vs
``pacs.dicom_json.dataset_to_json_dict``, each followed by the same ``json.dumps``.

Usage: ``python bench/json_writer.py [--repeat N] [FILE ...]``. Without files it times a
CT header made by ``python -m sample_data`` (into a temporary folder) and a few of
pydicom's test files. Each call gets a freshly parsed header (``pacs.parse.read_header``,
then the UIDs read as ``parse_instance`` reads them), since conversion changes the dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pacs.dicom_json import dataset_to_json_dict  # noqa: E402
from pacs.parse import read_header  # noqa: E402

#: Files shipped inside pydicom's package (test_files/ and charset_files/): nothing downloaded.
PYDICOM_FILES = ["test_files/CT_small.dcm", "test_files/MR_small.dcm", "test_files/MR_small_implicit.dcm",
                 "test_files/MR_small_bigendian.dcm", "test_files/JPEG2000.dcm", "test_files/rtplan.dcm",
                 "charset_files/chrH31.dcm", "charset_files/chrX2.dcm"]


def _old(ds: Dataset, handler: Callable) -> str:
    body = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=handler,
                           suppress_invalid_tags=True)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _new(ds: Dataset, handler: Callable) -> str:
    body = dataset_to_json_dict(ds, bulk_data_threshold=1024, bulk_data_element_handler=handler,
                                suppress_invalid_tags=True)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _headers(data: bytes, count: int) -> list[Dataset]:
    """``count`` independent parses of the header in ``data``, as ingest has them."""
    headers = []
    for _ in range(count):
        ds = read_header(io.BytesIO(data))
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            ds.get(keyword)
        headers.append(ds)
    return headers


def _time(data: bytes, writer: Callable[[Dataset, Callable], str], repeat: int) -> float:
    """Best of five, in ms per call."""
    best = float("inf")
    for _ in range(5):
        headers = _headers(data, repeat)
        started = time.perf_counter()
        for ds in headers:
            writer(ds, lambda elem: "bulk:0")
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e3


def _inputs(files: list[str]) -> list[tuple[str, bytes]]:
    if files:
        return [(Path(f).name, Path(f).read_bytes()) for f in files]
    import pydicom.data

    from sample_data.__main__ import main as sample_main

    out = tempfile.mkdtemp(prefix="json-bench-")
    with contextlib.redirect_stdout(io.StringIO()):
        sample_main([out, "--set", "ct", "1"])
    inputs = [("sample CT", next(Path(out).glob("*.dcm")).read_bytes())]
    root = Path(pydicom.data.__file__).parent
    inputs += [(Path(name).name, (root / name).read_bytes()) for name in PYDICOM_FILES]
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*",
                        help="Part 10 files (default: a sample CT and pydicom test files)")
    parser.add_argument("--repeat", type=int, default=200, help="calls per timing (default 200)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    print(f"{'input':34} {'elements':>8} {'pydicom ms':>11} {'fast ms':>8} {'speedup':>8}")
    for name, data in _inputs(args.files):
        ds = _headers(data, 1)[0]
        same: Any = json.loads(_old(ds, lambda e: "bulk:0")) == json.loads(
            _new(_headers(data, 1)[0], lambda e: "bulk:0"))
        old, new = _time(data, _old, args.repeat), _time(data, _new, args.repeat)
        flag = "" if same else "  (OUTPUT DIFFERS)"
        print(f"{name[:34]:34} {len(ds):>8} {old:>11.3f} {new:>8.3f} {old / new:>7.1f}x{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
