"""A bounded fuzz run (hypothesis) against one real server: STOW-RS bodies, QIDO-RS
parameters and C-FIND identifiers.

What must hold for every generated input (docs/security.md "Fuzzing"):

* HTTP: never a 5xx; a 4xx carries a reason (``{"error": ...}``, or a Store Instances
  Response with a ``Warning`` header); a 200 QIDO-RS answer is a JSON array of DICOM JSON
  objects.
* STOW-RS: the instances the answer lists as stored are exactly the ones that appeared
  in the index, each with its object in the blob store and retrievable by WADO-RS;
  nothing else appeared (no row, no study or series row, no object, no spool file left).
* C-FIND: every response status is pending, success or a failure with an Error Comment
  (never an abort, never "internal error"), and the association stays usable.
* Nothing is logged at ERROR by the server (an unexpected exception is a bug even when
  it is answered), ``/healthz`` answers, and a bystander client polling QIDO-RS and
  C-ECHO all along is served every time.

The run is bounded and repeatable (derandomized, no example database). A longer, random
run by hand: ``PACS_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz.py``
(that many examples per test, a new random seed each run; a failure prints the
``@reproduce_failure`` blob to replay it).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import struct
import threading
import time
import warnings
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, event, given, reject, settings, strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PatientRootFind,
    StudyRootQueryRetrieveInformationModelFind as StudyRootFind,
    Verification,
)
from sqlalchemy import select

from pacs.archive import Archive
from pacs.index.models import Instance, Series, Study
from pacs.query.attributes import COMPUTED, MATCHABLE
from pacs.settings import load_settings
from pacs.storage.folder import TEMP_DIR_NAME

from .factory import make_ct, short_uid, to_bytes
from .query_cases import build_datasets
from .servers import ThreadedServer

#: Bad input makes pydicom warn (on both sides): expected here, not worth a line each.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
#: Examples per test by hand (``PACS_FUZZ_EXAMPLES``): then random, not derandomized.
BY_HAND = int(os.environ.get("PACS_FUZZ_EXAMPLES", "0") or 0)
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'
ANY_TS = f"{DICOM_MULTIPART}; transfer-syntax=*"
#: The C-FIND endings that are not failures (PS3.4 C.4.1.1.4): success, cancel. The
#: failures are out of resources (A7xx), identifier does not match the SOP class (A9xx),
#: unable to process (Cxxx), refused or SOP class not supported (0124, 0122).
FIND_FINAL_OK = {0x0000, 0xFE00}
LOGGERS = ("pacs", "dicomweb", "worklist", "ai_hooks", "aiohttp")


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings of one fuzz test: ``examples`` by default, derandomized."""
    return settings(
        max_examples=BY_HAND or examples, deadline=None, derandomize=not BY_HAND, database=None,
        print_blob=bool(BY_HAND),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def sometimes(rare: st.SearchStrategy[Any], usual: Any) -> st.SearchStrategy[Any]:
    """``rare`` one time in five, else ``usual`` (a value or a strategy)."""
    common = usual if isinstance(usual, st.SearchStrategy) else st.just(usual)
    return st.integers(0, 4).flatmap(lambda i: rare if i == 4 else common)  # 0 is what hypothesis tries most


# -- the server, its data and its watchers --------------------------------------------------
class ErrorLog(logging.Handler):
    """ERROR records of the server's loggers (unexpected exceptions, even when answered)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code == 400:
            return  # aiohttp answered a malformed HTTP message with 400 (and logs it so)
        if record.name.split(".")[0] in LOGGERS:
            self.records.append(f"{record.name}: {record.getMessage()}\n{record.exc_text or ''}")

    def take(self) -> list[str]:
        taken, self.records = self.records, []
        return taken


@dataclass
class Bystander:
    """Another client served all along: QIDO-RS every 50 ms, a C-ECHO every second."""

    server: ThreadedServer
    served: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        last_echo = 0.0
        while not self._stop.wait(0.05):
            try:
                status, body, _ = http_get(self.server, "/dicom-web/studies?limit=1")
                if status != 200 or len(json.loads(body)) != 1:
                    self.failures.append(f"QIDO-RS {status}: {body[:200]!r}")
                if time.monotonic() - last_echo > 1:
                    last_echo = time.monotonic()
                    if not echo(self.server):
                        self.failures.append("C-ECHO failed")
                self.served += 1
            except Exception as exc:  # any failure to be served is the finding
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Fuzzed:
    """The module's server, its seeded study labels and the watchers."""

    server: ThreadedServer
    labels: dict[str, str]
    errors: ErrorLog
    bystander: Bystander
    #: A study STOW-RS examples add series to (its ModalitiesInStudy keeps growing).
    shared_study: str

    @property
    def archive(self) -> Archive:
        assert self.server.archive is not None
        return self.server.archive

    def check_alive(self) -> None:
        """Nothing logged at ERROR, /healthz answers, the bystander was always served."""
        assert self.errors.take() == []
        status, body, _ = http_get(self.server, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert self.bystander.failures == []


@pytest.fixture(scope="module")
def fuzzed(module_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """One real server (HTTP and DIMSE) with the matching data set of tests/query_cases.py,
    an ERROR log watcher and a bystander client."""
    settings_ = load_settings(env={}, data_dir=tmp_path_factory.mktemp("fuzz-data"),
                              database_url=module_database_url, dimse_port=0, http_port=0, stable_seconds=60,
                              shutdown_timeout=5)
    archive = Archive(settings_)
    datasets, labels = build_datasets()
    shared = short_uid()  # the shared study, of make_ct's patient (STOW-RS examples add series)
    for ds in datasets + [make_ct(study=shared, rows=4, columns=4)]:
        archive.ingest_bytes(to_bytes(ds), source="test")
    server = ThreadedServer(settings_, archive).start()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    bystander = Bystander(server)
    thread = threading.Thread(target=bystander.run, daemon=True)
    thread.start()
    try:
        yield Fuzzed(server, labels, errors, bystander, shared)
    finally:
        bystander.stop()
        thread.join(10)
        logging.getLogger().removeHandler(errors)
        server.stop()
        archive.close()


def http_request(server: ThreadedServer, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One request on a fresh connection, the path sent as written: status, body, headers."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value.encode("latin-1"))
        framed = {k.lower() for k in headers or {}} & {"content-length", "transfer-encoding"}
        if body is not None and not framed:
            conn.putheader("Content-Length", str(len(body)))
        conn.putheader("Connection", "close")
        conn.endheaders(body)
        answer = conn.getresponse()
        return answer.status, answer.read(), {k.lower(): v for k, v in answer.getheaders()}
    finally:
        conn.close()


def http_get(server: ThreadedServer, path: str, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    return http_request(server, "GET", path, headers={"Accept": "application/dicom+json", **headers})


def echo(server: ThreadedServer) -> bool:
    ae = AE(ae_title="BYSTANDER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.settings.ae_title)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().get("Status") == 0
    assoc.release()
    return ok


def assert_reason(status: int, body: bytes, headers: dict[str, str]) -> None:
    """A 4xx says why: a JSON ``error`` text, a ``Warning`` header or a text body."""
    assert 400 <= status < 500, (status, body[:500])
    if headers.get("content-type", "").startswith("application/json"):
        assert json.loads(body)["error"].strip()
    elif "warning" in headers:
        assert headers["warning"].startswith("299 ")
    else:
        assert body.strip(), status


# -- STOW-RS ---------------------------------------------------------------------------------
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                     "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.3.4", "", "x" * 80)
BAD_UIDS = ("", "1..2", "1.2.", ".1.2", "01.2", "abc", "1.2.3/../x", "../../etc/passwd", "1." + "2" * 70,
            "1.2\\3.4", "1.2.3 4", "1.2.3\x00", "1.2.%2e%2e", "*", "1.2.3?")
#: Elements whose length field a mutation may corrupt: tag, explicit-VR length offset and size.
LENGTH_FIELDS = {
    "meta group length": (0x00020000, 6, 2), "transfer syntax": (0x00020010, 6, 2),
    "SOP instance": (0x00080018, 6, 2), "patient name": (0x00100010, 6, 2),
    "study uid": (0x0020000D, 6, 2), "rows": (0x00280010, 6, 2), "pixel data": (0x7FE00010, 8, 4),
}
PART_TYPES = (None, "application/dicom", "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
              "APPLICATION/DICOM", "text/plain", "application/octet-stream", "application/dicom+json",
              "garbage", "multipart/related; boundary=inner", "application/dicom; charset=\xff")
INDEXED = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientSex", "PatientBirthDate", "StudyDate",
           "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
           "SeriesDescription", "BodyPartExamined", "SeriesDate", "SeriesTime", "StationName", "SeriesNumber",
           "InstanceNumber")
INDEX_VALUES = ("A\x00B", "\x00", "ß" * 40, "ß" * 400, "ﬃ" * 200, "x" * 70, "x" * 400, "CT\\MR", "\\" * 20, " ",
                "^^^", "=", "20261399", "2026.01.02", "25:61", "-", "2.5", "99999999999", "\u202e", "Ø^Å")
MODALITY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
BOUNDARY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=? "


@dataclass(frozen=True)
class PartRecipe:
    """How one part is made: a fresh valid instance, then the listed damage."""

    bad_uids: tuple[tuple[str, str], ...] = ()
    transfer_syntax: str | None = None
    mutations: tuple[tuple[Any, ...], ...] = ()
    other_study: bool = False
    copy_previous: bool = False
    part_type: str | None = "application/dicom"
    extra_headers: tuple[tuple[str, str], ...] = ()
    #: Values of indexed attributes (NULs, long or lengthening text, not numbers, ...).
    values: tuple[tuple[str, str], ...] = ()

    @property
    def clean(self) -> bool:
        return not (self.bad_uids or self.transfer_syntax is not None or self.mutations or self.copy_previous
                    or self.values)


@dataclass(frozen=True)
class BodyRecipe:
    parts: tuple[PartRecipe, ...]
    boundary: str
    content_type: str
    framing: str
    cut: float
    chunked: bool
    route: str
    accept: str | None


def _mutation() -> st.SearchStrategy[tuple[Any, ...]]:
    fraction = st.floats(0, 1)
    return st.one_of(
        st.tuples(st.just("truncate"), fraction),
        st.tuples(st.just("flip"), fraction, st.integers(1, 255)),
        st.tuples(st.just("length"), st.sampled_from(sorted(LENGTH_FIELDS)),
                  st.sampled_from([0, 1, 3, 0xFF, 0xFFFE, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])),
        st.tuples(st.just("insert"), fraction, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("replace"), st.binary(max_size=512)),
        st.tuples(st.just("no preamble")),
    )


def _part_recipe() -> st.SearchStrategy[PartRecipe]:
    uid_keywords = st.sampled_from(["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"])
    bad_uid = st.one_of(st.sampled_from(BAD_UIDS), st.text(st.characters(max_codepoint=255), max_size=80))
    header = st.tuples(st.sampled_from(["Content-Length", "Content-Transfer-Encoding", "Content-Location",
                                        "X-Fuzz"]), st.sampled_from(["0", "-1", "abc", "99999999999", "base64", "\xe9"]))
    return st.builds(
        PartRecipe,
        bad_uids=st.lists(st.tuples(uid_keywords, bad_uid), max_size=2).map(tuple),
        transfer_syntax=st.one_of(st.none(), st.sampled_from(TRANSFER_SYNTAXES)),
        mutations=st.lists(_mutation(), max_size=3).map(tuple),
        other_study=st.booleans(),
        copy_previous=st.booleans(),
        part_type=st.sampled_from(("application/dicom",) * 12 + PART_TYPES),
        extra_headers=st.lists(header, max_size=2).map(tuple),
        values=st.lists(st.tuples(st.sampled_from(INDEXED), st.one_of(st.sampled_from(INDEX_VALUES), st.text(max_size=20))),
                        max_size=3).map(tuple),
    )


def _clean_part() -> st.SearchStrategy[PartRecipe]:
    return st.builds(PartRecipe, part_type=st.sampled_from([None, "application/dicom"]))


def _body_recipe() -> st.SearchStrategy[BodyRecipe]:
    boundary = st.one_of(st.sampled_from(["stow-fuzz", "x", "=_Part_0.1", "a" * 70, "with space"]),
                         st.text(BOUNDARY_CHARS, min_size=1, max_size=70))
    content_type = st.one_of(
        st.sampled_from(["multipart"] * 4 + ["unquoted type", "no type", "json type", "no boundary",
                                             "wrong boundary", "single", "text/plain", "missing"]),
        st.text(st.characters(max_codepoint=255), max_size=60).map(lambda t: "raw:" + t))
    return st.builds(
        BodyRecipe,
        parts=st.lists(st.one_of(_clean_part(), _part_recipe()), min_size=1, max_size=4).map(tuple),
        boundary=boundary, content_type=content_type,
        framing=st.sampled_from(["ok"] * 4 + ["no close", "truncate", "lf", "preamble", "epilogue", "glued"]),
        cut=st.floats(0, 1), chunked=st.booleans(),
        route=st.sampled_from(["/studies"] * 3 + ["/studies/{study}", "/studies/1..2", "/studies/%2e%2e"]),
        accept=st.sampled_from(["application/dicom+json"] * 4 + [None, "*/*", "application/dicom+xml"]),
    )


def set_transfer_syntax(blob: bytes, uid: str) -> bytes:
    """``blob`` with another (0002,0010) value and the meta group length fixed."""
    at = blob.find(b"\x02\x00\x10\x00UI")
    old = struct.unpack("<H", blob[at + 6:at + 8])[0] if 0 <= at < len(blob) - 8 else -1
    value = uid.encode("latin-1") + (b"\x00" if len(uid) % 2 else b"")
    group = struct.unpack("<L", blob[140:144])[0] + len(value) - old if len(blob) >= 144 else -1
    if old < 0 or not 0 <= group < 2**32 or at + 8 + old > len(blob):
        return blob  # already damaged: no transfer syntax to change
    out = blob[:140] + struct.pack("<L", group) + blob[144:at + 6] + struct.pack("<H", len(value))
    return out + value + blob[at + 8 + old:]


def mutate(blob: bytes, mutation: tuple[Any, ...]) -> bytes:
    """One piece of damage to an encoded object."""
    kind, args = mutation[0], mutation[1:]
    where = int(args[0] * len(blob)) if args and isinstance(args[0], float) else 0
    if kind == "truncate":
        return blob[:where]
    if kind == "flip" and blob:
        where = min(where, len(blob) - 1)
        return blob[:where] + bytes([blob[where] ^ args[1]]) + blob[where + 1:]
    if kind == "length":
        tag, offset, size = LENGTH_FIELDS[args[0]]
        at = blob.find(struct.pack("<HH", tag >> 16, tag & 0xFFFF))
        if at < 0:
            return blob
        packed = struct.pack("<H" if size == 2 else "<L", args[1] & (0xFFFF if size == 2 else 0xFFFFFFFF))
        return blob[:at + offset] + packed + blob[at + offset + size:]
    if kind == "insert":
        return blob[:where] + args[1] + blob[where:]
    if kind == "replace":
        return args[0]
    if kind == "no preamble":
        return blob[132:]
    return blob


def encode_loosely(ds: Dataset) -> bytes:
    """Part 10 bytes of ``ds`` whatever its values (pydicom refuses some bad UIDs in
    the file meta: then the meta is written as it is); a value pydicom cannot encode at
    all (a CS outside Latin-1) makes the example void."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return to_bytes(ds)
        except (AttributeError, TypeError, ValueError):  # pydicom turns a UnicodeEncodeError into a TypeError
            buf = BytesIO()
            try:
                ds.save_as(buf, enforce_file_format=False)
            except (TypeError, ValueError):
                reject()
            return b"\0" * 128 + b"DICM" + buf.getvalue() if buf.getvalue()[128:132] != b"DICM" else buf.getvalue()


def set_values(ds: Dataset, recipe: PartRecipe) -> None:
    """The recipe's bad UIDs and indexed values, as far as pydicom takes them."""
    for keyword, value in recipe.bad_uids:
        setattr(ds, keyword, value)
        if keyword in ("SOPInstanceUID", "SOPClassUID"):
            setattr(ds.file_meta, "MediaStorage" + keyword, value)
    if recipe.values:
        ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in recipe.values:
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError, OverflowError):  # e.g. "2.5" as an IS
            pass


def make_part(recipe: PartRecipe, study: str, series: str, previous: bytes | None) -> tuple[bytes, str]:
    """The bytes of one part, and the SOP Instance UID it was made with."""
    if recipe.copy_previous and previous is not None:
        blob, sop = previous, ""
    else:
        sop = short_uid()
        ds = make_ct(study=short_uid() if recipe.other_study else study, series=series, sop=sop,
                     rows=4, columns=4)
        set_values(ds, recipe)
        blob = encode_loosely(ds)
    if recipe.transfer_syntax is not None:
        blob = set_transfer_syntax(blob, recipe.transfer_syntax)
    for mutation in recipe.mutations:
        blob = mutate(blob, mutation)
    return blob, sop


def content_type_of(recipe: BodyRecipe) -> str | None:
    """The request's Content-Type for the recipe's choice (None: no header)."""
    if recipe.content_type.startswith("raw:"):
        return "".join(c for c in recipe.content_type[4:] if c >= " ")
    quoted = f'"{recipe.boundary}"'
    return {
        "multipart": f"{DICOM_MULTIPART}; boundary={quoted}",
        "unquoted type": f"multipart/related; type=application/dicom; boundary={quoted}",
        "no type": f"multipart/related; boundary={quoted}",
        "json type": f'multipart/related; type="application/dicom+json"; boundary={quoted}',
        "no boundary": DICOM_MULTIPART,
        "wrong boundary": f'{DICOM_MULTIPART}; boundary="not-{recipe.boundary}"',
        "single": "application/dicom", "text/plain": "text/plain", "missing": None,
    }[recipe.content_type]


def build_body(recipe: BodyRecipe, blobs: list[bytes]) -> bytes:
    """The multipart/related body (RFC 2046 5.1.1), framed or broken as the recipe says."""
    if recipe.content_type == "single":
        body = blobs[0]
    else:
        nl = b"\n" if recipe.framing == "lf" else b"\r\n"
        delimiter = b"--" + recipe.boundary.encode("latin-1")
        out = bytearray(b"a preamble" + nl if recipe.framing == "preamble" else b"")
        for part, blob in zip(recipe.parts, blobs):
            out += delimiter + nl
            if part.part_type is not None:
                out += b"Content-Type: " + part.part_type.encode("latin-1") + nl
            for name, value in part.extra_headers:
                out += f"{name}: {value}".encode("latin-1") + nl
            out += nl + blob + (b"" if recipe.framing == "glued" else nl)
        if recipe.framing != "no close":
            out += delimiter + b"--" + nl
        if recipe.framing == "epilogue":
            out += b"an epilogue" + nl
        body = bytes(out)
    return body[:int(recipe.cut * len(body))] if recipe.framing == "truncate" else body


def chunked(body: bytes, size: int = 4096) -> bytes:
    """``body`` in HTTP/1.1 chunked transfer coding (RFC 9112 7.1)."""
    pieces = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(pieces) + b"0\r\n\r\n"


@dataclass(frozen=True)
class Snapshot:
    """What the archive holds: index rows, objects in the store, spool files."""

    instances: dict[str, str]  # SOP Instance UID -> blob key
    studies: frozenset[str]
    series: frozenset[str]
    blobs: frozenset[str]
    spooled: tuple[str, ...]


def snapshot(archive: Archive) -> Snapshot:
    with archive.db.read() as conn:
        instances = dict(conn.execute(select(Instance.sop_instance_uid, Instance.blob_key)).all())
        studies = frozenset(conn.execute(select(Study.study_uid)).scalars())
        series = frozenset(conn.execute(select(Series.series_uid)).scalars())
    root = Path(archive.store.root)  # type: ignore[attr-defined]
    blobs = frozenset(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and p.relative_to(root).parts[0] != TEMP_DIR_NAME)
    return Snapshot(instances, studies, series, blobs, tuple(sorted(os.listdir(archive.incoming_dir))))


@dataclass(frozen=True)
class StowAnswer:
    """What a STOW-RS answer says: Retrieve URL of each stored instance and Failure Reason
    of each failed one (by SOP Instance UID, "" when unnamed), and whether reading stopped
    early (Other Failures Sequence, or no Store Instances Response at all)."""

    stored: dict[str, str]
    failed: dict[str, int]
    stopped: bool


def read_answer(status: int, body: bytes, headers: dict[str, str]) -> StowAnswer:
    if status >= 400:
        assert_reason(status, body, headers)
    if not headers.get("content-type", "").startswith("application/dicom+json"):
        assert status >= 400, (status, body[:300])
        return StowAnswer({}, {}, True)
    module = json.loads(body)
    stored = {item["00081155"]["Value"][0]: item["00081190"]["Value"][0]
              for item in module.get("00081199", {}).get("Value", [])}
    failed = {(item["00081155"].get("Value") or [""])[0]: item["00081197"]["Value"][0]
              for item in module.get("00081198", {}).get("Value", [])}
    assert all(failed.values())  # each failure has its reason
    assert (status == 200) == (bool(stored) and not failed and "0008119A" not in module and "warning" not in headers)
    return StowAnswer(stored, failed, "0008119A" in module)


def check_no_partial_store(before: Snapshot, after: Snapshot, stored: dict[str, str]) -> None:
    """Exactly the listed instances appeared: rows, their objects, their studies and series;
    nothing vanished and no spool file is left."""
    new = {sop: key for sop, key in after.instances.items() if sop not in before.instances}
    assert set(new) == set(stored)
    assert before.instances.items() <= after.instances.items()
    assert after.blobs == before.blobs | set(new.values())
    assert set(after.spooled) <= set(before.spooled)
    new_studies = {url.split("/studies/")[1].split("/")[0] for url in stored.values()}
    new_series = {url.split("/series/")[1].split("/")[0] for url in stored.values()}
    assert after.studies - before.studies <= new_studies
    assert after.series - before.series <= new_series


def check_retrievable(server: ThreadedServer, stored: dict[str, str]) -> None:
    for sop, url in stored.items():
        path = "/dicom-web" + url.split("/dicom-web", 1)[1]
        status, body, _ = http_get(server, path, Accept=ANY_TS)
        assert status == 200 and sop.encode() in body, (status, body[:300])


def post_stow(server: ThreadedServer, recipe: BodyRecipe, body: bytes, study: str) -> tuple[int, bytes, dict[str, str]]:
    headers: dict[str, str] = {}
    content_type = content_type_of(recipe)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if recipe.accept is not None:
        headers["Accept"] = recipe.accept
    if recipe.chunked:
        headers["Transfer-Encoding"] = "chunked"
        body = chunked(body)
    return http_request(server, "POST", "/dicom-web" + recipe.route.format(study=study), body, headers)


def all_read_as_dicom(recipe: BodyRecipe) -> bool:
    """Whether every part of the recipe is framed and typed so that it must be read."""
    return (recipe.content_type in ("multipart", "unquoted type", "no type")
            and recipe.framing in ("ok", "preamble", "epilogue")
            and all(p.part_type in (None, "application/dicom", "APPLICATION/DICOM") and not p.extra_headers
                    for p in recipe.parts))


@fuzz_settings(150)
@given(recipe=_body_recipe())
def test_stow_bodies(fuzzed: Fuzzed, recipe: BodyRecipe) -> None:
    study, series = short_uid(), short_uid()
    blobs, sops, previous = [], [], None
    for part in recipe.parts:
        previous, sop = make_part(part, study, series, previous)
        blobs.append(previous)
        sops.append(sop)
    before = snapshot(fuzzed.archive)
    status, body, headers = post_stow(fuzzed.server, recipe, build_body(recipe, blobs), study)
    after = snapshot(fuzzed.archive)
    assert fuzzed.errors.take() == []
    assert status < 500, (status, body[:500], headers.get("warning"))
    answer = read_answer(status, body, headers)
    event(f"HTTP {status}, {'some' if answer.stored else 'none'} stored")  # --hypothesis-show-statistics
    check_no_partial_store(before, after, answer.stored)
    check_retrievable(fuzzed.server, answer.stored)
    if status in (200, 202, 409) and not answer.stopped and all_read_as_dicom(recipe):
        check_undamaged_parts(recipe, sops, answer)
    fuzzed.check_alive()


def check_undamaged_parts(recipe: BodyRecipe, sops: list[str], answer: StowAnswer) -> None:
    """An undamaged part is stored, or refused only as a conflict with another part (a
    study under another patient, a series under another study, a SOP Instance UID sent
    twice with different content) or with the study of the URL; all are stored when no
    part is damaged or of another study."""
    undamaged = [sop for part, sop in zip(recipe.parts, sops) if part.clean]
    for sop in undamaged:
        assert sop in answer.stored or answer.failed.get(sop) in (0xC001, 0xC002, 0xC409), (sop, answer)
    if all(part.clean and not part.other_study for part in recipe.parts):
        assert set(undamaged) == set(answer.stored), answer


def test_valid_stow_after_the_fuzz(fuzzed: Fuzzed) -> None:
    """The server still stores a well-formed request after every broken one."""
    datasets = [make_ct(study=short_uid(), rows=4, columns=4, seed=i) for i in range(2)]
    recipe = BodyRecipe(parts=(PartRecipe(), PartRecipe()), boundary="after", content_type="multipart",
                        framing="ok", cut=1.0, chunked=False, route="/studies", accept="application/dicom+json")
    before = snapshot(fuzzed.archive)
    status, body, headers = post_stow(fuzzed.server, recipe, build_body(recipe, list(map(to_bytes, datasets))), "")
    answer = read_answer(status, body, headers)
    assert status == 200 and set(answer.stored) == {ds.SOPInstanceUID for ds in datasets}
    check_no_partial_store(before, snapshot(fuzzed.archive), answer.stored)
    check_retrievable(fuzzed.server, answer.stored)
    fuzzed.check_alive()


def series_part() -> st.SearchStrategy[tuple[str, tuple[tuple[str, str], ...]]]:
    """A new series of the shared study: its modality (up to the 16 characters of CS) and
    other indexed values."""
    values = st.tuples(st.sampled_from(INDEXED), st.one_of(st.sampled_from(INDEX_VALUES), st.text(max_size=20)))
    return st.tuples(st.text(MODALITY_CHARS, min_size=6, max_size=16), st.lists(values, max_size=2).map(tuple))


@fuzz_settings(60)
@given(parts=st.lists(series_part(), min_size=1, max_size=4))
def test_stow_indexed_values(fuzzed: Fuzzed, parts: list[tuple[str, tuple[tuple[str, str], ...]]]) -> None:
    """Well-formed requests adding series to one study, with odd index values (NULs, text
    longer than its column, or lengthened by normalising): stored or refused per part
    (never 5xx, never "internal error"), and ModalitiesInStudy agrees with the series."""
    blobs = [make_part(PartRecipe(values=values + (("Modality", modality),)), fuzzed.shared_study, short_uid(), None)[0]
             for modality, values in parts]
    recipe = BodyRecipe(parts=tuple(PartRecipe() for _ in parts), boundary="series", content_type="multipart",
                        framing="ok", cut=1.0, chunked=False, route="/studies", accept="application/dicom+json")
    before = snapshot(fuzzed.archive)
    status, body, headers = post_stow(fuzzed.server, recipe, build_body(recipe, blobs), fuzzed.shared_study)
    assert fuzzed.errors.take() == []
    answer = read_answer(status, body, headers)
    assert status in (200, 202, 409) and not answer.stopped, (status, body[:300])
    assert all(reason != 0x0110 for reason in answer.failed.values()), headers.get("warning")
    check_no_partial_store(before, snapshot(fuzzed.archive), answer.stored)
    check_retrievable(fuzzed.server, answer.stored)
    check_modalities_in_study(fuzzed.server, fuzzed.shared_study)
    fuzzed.check_alive()


def check_modalities_in_study(server: ThreadedServer, study: str) -> None:
    """The study's ModalitiesInStudy (QIDO-RS) are modalities of its series."""
    status, body, _ = http_get(server, f"/dicom-web/studies?StudyInstanceUID={study}&includefield=ModalitiesInStudy")
    assert status == 200
    [result] = json.loads(body)
    status, body, _ = http_get(server, f"/dicom-web/studies/{study}/series?includefield=Modality")
    assert status == 200
    series = {(r.get("00080060", {}).get("Value") or [""])[0] for r in json.loads(body)}
    modalities = result.get("00080061", {}).get("Value", [])
    assert modalities and set(modalities) <= series


# -- QIDO-RS ---------------------------------------------------------------------------------
QIDO_ROUTES = ("/studies", "/series", "/instances", "/studies/{study}/series", "/studies/{study}/instances",
               "/studies/{study}/series/{series}/instances")
QIDO_KEYS = (sorted(MATCHABLE) + sorted(COMPUTED)
             + ["includefield", "fuzzymatching", "limit", "offset", "emptyvaluematching", "multiplevaluematching"]
             + ["StudyComments", "PixelData", "ReferencedSOPSequence", "Rows", "SpecificCharacterSet",
                "QueryRetrieveLevel", "RetrieveURL", "InstanceAvailability", "TimezoneOffsetFromUTC",
                "PatientAge", "AcquisitionDateTime", "ReferencedSeriesSequence.SeriesInstanceUID",
                "00100010", "0020000d", "7FE00010", "FFFFFFFF", "00000000", "00090010", "0008103E",
                "PatientName.Alphabetic", "Includefield", "LIMIT", " ", "", "_", "0x00100010"])
VALUES = ("", "*", "?", "**", "\\", ",", "-", "--", "20260101-20260131", "-20251231", "20260201-", "2026-01-01",
          "99999999", "20261399", "1015-", "10:15", "235960", "doe*", "DOE^J?HN", "müller^jürgen", "=", "^^^^",
          "1.2.3", "1.2.*", "CT,MR", "CT\\MR", "true", "false", "TRUE", "all", "0", "-1", "10001", "2147483648",
          "99999999999999999999", "1e3", "00080020", "StudyDate,PatientName", "\x00", "a\x00b", "%",
          "'; DROP TABLE study; --", "\\\\", "a" * 300, "x" * 5000, "\u202e\ufeff", "\U0001f600*", "_%")
RAW_QUERY_BITS = ("%", "%zz", "%ff%fe", "&&", "=", "a=b=c", ";", "+", "%00", "limit", "limit=", "=x",
                  "%E0%80%80", "%C0%AF")
ACCEPTS = ("application/dicom+json",) * 15 + (None, "*/*", "application/json", "text/html",
                                              'multipart/related; type="application/dicom"', ",,;q=abc")


def qido_value() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(VALUES), st.text(max_size=30),
                     st.text(alphabet="*?\\,-^=%_ 0123456789.TZ+", max_size=20))


@st.composite
def qido_request(draw: st.DrawFn, labels: tuple[str, str]) -> tuple[str, str | None]:
    """A QIDO-RS path with its query string (real or broken UIDs, any parameters) and Accept."""
    study, series = labels
    bad_uid = st.one_of(st.sampled_from(["1..2", "%2e%2e", "*", "9" * 80, "1.2.3"]),
                        st.text(max_size=20).map(lambda t: quote(t, safe="")))
    route = draw(st.sampled_from(QIDO_ROUTES))
    path = "/dicom-web" + route.format(study=draw(sometimes(bad_uid, study)), series=draw(sometimes(bad_uid, series)))
    key = sometimes(st.text(max_size=12), st.sampled_from(sorted(MATCHABLE) * 3 + QIDO_KEYS))
    params = draw(st.lists(st.tuples(key, qido_value()), max_size=4))
    bits = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params]
    bits += draw(sometimes(st.lists(st.sampled_from(RAW_QUERY_BITS), min_size=1, max_size=2), []))
    bits = draw(st.permutations(bits))
    return path + ("?" + "&".join(bits) if bits else ""), draw(st.sampled_from(ACCEPTS))


def check_qido_answer(status: int, body: bytes, headers: dict[str, str], query: str) -> None:
    """200 with a JSON array of DICOM JSON objects (at most ``limit`` of them), or a 4xx
    with a reason; nothing else."""
    assert status < 500, (status, body[:500])
    if status >= 300:
        assert_reason(status, body, headers)
        return
    assert status == 200 and headers["content-type"].startswith("application/dicom+json"), status
    results = json.loads(body)
    assert isinstance(results, list) and all(isinstance(r, dict) for r in results)
    for result in results:
        assert all(len(tag) == 8 and tag == tag.upper() and "vr" in element for tag, element in result.items())
    limits = [bit[6:] for bit in query.split("&") if bit.startswith("limit=")]
    if len(limits) == 1 and limits[0].isdigit():
        assert len(results) <= int(limits[0])


@fuzz_settings(300)
@given(data=st.data())
def test_qido_parameters(fuzzed: Fuzzed, data: st.DataObject) -> None:
    path, accept = data.draw(qido_request((fuzzed.labels["S3"], fuzzed.labels["S3.CT"])))
    status, body, headers = http_request(fuzzed.server, "GET", path, headers={"Accept": accept} if accept else {})
    assert fuzzed.errors.take() == []
    event(f"HTTP {status} {json.loads(body)['error'][:25] if status == 400 and body.startswith(b'{') else ''}")
    check_qido_answer(status, body, headers, path.partition("?")[2])
    fuzzed.check_alive()


def test_valid_qido_after_the_fuzz(fuzzed: Fuzzed) -> None:
    status, body, _ = http_get(fuzzed.server, "/dicom-web/studies?PatientName=doe*&PatientID=P1&includefield=StudyDescription")
    assert status == 200
    found = {r["0020000D"]["Value"][0]: r["00081030"]["Value"][0] for r in json.loads(body)}
    assert found == {fuzzed.labels["S1"]: "CT CHEST", fuzzed.labels["S2"]: "MR HEAD"}
    fuzzed.check_alive()


# -- C-FIND ----------------------------------------------------------------------------------
FIND_KEYWORDS = (sorted(MATCHABLE) * 2 + sorted(COMPUTED)
                 + ["SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle", "TimezoneOffsetFromUTC",
                    "QueryRetrieveView", "StudyComments", "PatientAge", "AcquisitionDateTime", "PixelData",
                    "ReferencedSeriesSequence", "OtherPatientIDsSequence", "ReferencedSOPClassUID",
                    "FloatPixelData", "SmallestImagePixelValue", "FrameIncrementPointer", "PatientWeight",
                    "ContentDate", "InstanceCreationTime"])
FIND_TAGS = ((0x00090010, "LO"), (0x00091001, "UN"), (0x00110011, "LO"),
             (0x00020010, "UI"), (0x00000900, "US"), (0x7FE00010, "OB"))
VRS = ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
       "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV")
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
CHARSETS = ("ISO_IR 100", "ISO_IR 192", "GB18030", "ISO 2022 IR 87", "ISO 2022 IR 149\\ISO 2022 IR 87",
            "ISO_IR 6", "", "GARBAGE", "\\", "ISO_IR 100\\ISO_IR 100")
TEXT_ENCODINGS = ("ascii", "latin-1", "utf-8", "utf-16-le", "shift_jis")


def element(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element (PS3.5 7.1.2), the value as given (odd too)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in LONG_VRS:
        return head + struct.pack("<HL", 0, len(value)) + value
    return head + struct.pack("<H", len(value) & 0xFFFF) + value[:0xFFFF]


@st.composite
def text_bytes(draw: st.DrawFn) -> bytes:
    """A value as a device might send it: known matching forms, any text in some encoding, bytes."""
    text = draw(st.one_of(qido_value(), st.sampled_from(LEVELS + CHARSETS), st.text(max_size=40)))
    encoded = text.encode(draw(st.sampled_from(TEXT_ENCODINGS)), errors="ignore")
    return draw(st.one_of(st.just(encoded), st.binary(max_size=24)))


@st.composite
def find_element(draw: st.DrawFn, depth: int = 0) -> tuple[int, bytes]:
    """A key of the identifier: a known or odd tag, mostly with its dictionary VR."""
    if draw(st.integers(0, 5)) < 5:
        keyword = draw(st.sampled_from(FIND_KEYWORDS))
        tag, vr = tag_for_keyword(keyword), dictionary_VR(keyword).split(" or ")[0]
    else:
        tag, vr = draw(st.one_of(st.sampled_from(FIND_TAGS), st.tuples(st.integers(0, 2**32 - 1), st.just("UN"))))
    vr = vr if draw(st.integers(0, 5)) < 5 else draw(st.sampled_from(VRS))
    if vr != "SQ":
        return tag, element(tag, vr, draw(text_bytes()))
    items = b""
    if depth == 0:
        for _ in range(draw(st.integers(0, 2))):
            nested = b"".join(e for _, e in sorted(dict(draw(st.lists(find_element(depth=1), max_size=3))).items()))
            items += b"\xfe\xff\x00\xe0" + struct.pack("<L", len(nested)) + nested
    return tag, element(tag, vr, draw(st.one_of(st.just(items), st.binary(max_size=16))))


#: Unique keys of the levels above each query level (PS3.4 C.4.1.2.1), by information model.
UPPER_KEYS = {
    (str(StudyRootFind), "SERIES"): ("StudyInstanceUID",),
    (str(StudyRootFind), "IMAGE"): ("StudyInstanceUID", "SeriesInstanceUID"),
    (str(PatientRootFind), "STUDY"): ("PatientID",),
    (str(PatientRootFind), "SERIES"): ("PatientID", "StudyInstanceUID"),
    (str(PatientRootFind), "IMAGE"): ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
}


@st.composite
def find_identifier(draw: st.DrawFn, held: dict[str, bytes]) -> tuple[str, str, bytes]:
    """(information model, QueryRetrieveLevel sent, identifier bytes): mostly a valid
    hierarchical query (the unique keys above its level, of ``held`` data) with a few
    fuzzed keys; sometimes without those keys, or with another level."""
    model = draw(st.sampled_from([str(StudyRootFind), str(PatientRootFind)]))
    level = draw(sometimes(st.text(max_size=10), st.sampled_from(LEVELS)))
    elements = {tag: e for tag, e in draw(st.lists(find_element(), max_size=4))
                if tag & 0xFFFF or tag >> 16 <= 6}  # pydicom never writes a group length
    for keyword in UPPER_KEYS.get((model, level), ()) if draw(st.integers(0, 5)) < 5 else ():
        tag = tag_for_keyword(keyword)
        elements.setdefault(tag, element(tag, "UI" if keyword != "PatientID" else "LO", held[keyword]))
    if draw(st.integers(0, 9)) < 9:
        elements[0x00080052] = element(0x00080052, "CS", (level + " " * (len(level) % 2)).encode("utf-8", "ignore"))
    if not elements:  # pynetdicom sends no data set PDV for 0 bytes: the server rightly waits for one
        elements[0x00100020] = element(0x00100020, "LO", b"")
    return model, level, b"".join(e for _, e in sorted(elements.items()))


def c_find(server: ThreadedServer, model: str, raw: bytes) -> tuple[list[tuple[Dataset, Dataset | None]], bool]:
    """The responses to one C-FIND of ``raw`` (sent as it is), and whether the association
    was still established after the last one (then released)."""
    try:  # read lazily: raw elements, written back as they are
        carried = encode(identifier := read_dataset(BytesIO(raw), False, True), False, True) == raw
    except Exception:  # e.g. a SpecificCharacterSet pydicom cannot read (tests/test_find.py sends those raw)
        carried = False
    if not carried:
        reject()  # pynetdicom cannot send these bytes as they are: not a server input
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(model, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.settings.ae_title)
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_find(identifier, model))
        return responses, assoc.is_established
    finally:
        if assoc.is_established:
            assoc.release()


def check_find_responses(responses: list[tuple[Dataset, Dataset | None]], level: str) -> int:
    """Pending responses with an identifier at the asked level, then one final status:
    success, cancel, or a failure with an Error Comment that is not "internal error"."""
    assert responses, "no response"
    *pending, (final, final_identifier) = responses
    for status, identifier in pending:
        assert status.Status in (0xFF00, 0xFF01) and identifier is not None, status
        assert identifier.QueryRetrieveLevel == level.strip()
    code = final.get("Status")
    assert code is not None, "no final status (association aborted?)"
    assert final_identifier is None and code not in (0xFF00, 0xFF01)
    failure = code >> 12 in (0xA, 0xC) or code in (0x0122, 0x0124)
    assert code in FIND_FINAL_OK or failure, hex(code)
    if failure:
        assert str(final.get("ErrorComment", "")).strip() not in ("", "internal error"), (hex(code), final)
    return code


@pytest.fixture
def quiet_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom would decode the raw identifier to log it: not the server's business."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "LOG_REQUEST_IDENTIFIERS", False)
    monkeypatch.setattr(_config, "LOG_RESPONSE_IDENTIFIERS", False)


@fuzz_settings(250)
@given(data=st.data())
def test_c_find_identifiers(fuzzed: Fuzzed, quiet_pynetdicom: None, data: st.DataObject) -> None:
    held = {"PatientID": b"P2", "StudyInstanceUID": fuzzed.labels["S3"].encode(),
            "SeriesInstanceUID": fuzzed.labels["S3.CT"].encode()}
    model, level, raw = data.draw(find_identifier(held))
    responses, established = c_find(fuzzed.server, model, raw)
    assert fuzzed.errors.take() == []
    assert established, "the association was aborted"
    code = check_find_responses(responses, level)
    event(f"0x{code:04X} {'some' if len(responses) > 1 else 'no'} matches {responses[-1][0].get('ErrorComment', '')[:20]}")
    fuzzed.check_alive()


def test_valid_c_find_after_the_fuzz(fuzzed: Fuzzed, quiet_pynetdicom: None) -> None:
    raw = (element(0x00080052, "CS", b"STUDY ") + element(0x00100010, "PN", b"doe*")
           + element(0x00100020, "LO", b"P1") + element(0x0020000D, "UI", b""))
    responses, established = c_find(fuzzed.server, str(StudyRootFind), raw)
    assert established and check_find_responses(responses, "STUDY") == 0x0000
    found = {str(identifier.StudyInstanceUID) for _, identifier in responses[:-1]}
    assert found == {fuzzed.labels["S1"], fuzzed.labels["S2"]}
    fuzzed.check_alive()

