"""STOW-RS, the Store transaction of the Studies Service (PS3.18 10.5).

``POST /studies`` and ``POST /studies/{study}`` (PS3.18 Table 10.5.1-1) with a
``multipart/related; type="application/dicom"`` body, one Part 10 instance per part
(PS3.18 10.5.1.4, 8.7.3.1), or a single-part ``application/dicom`` body. Metadata with
bulk data (``type="application/dicom+json"``) is :mod:`dicomweb.stow_json`.

* **Streamed.** The body is read with :class:`dicomweb.multipart.RelatedReader` (why not
  aiohttp's ``MultipartReader``: see that module); each part goes chunk by chunk into a
  spool file in the archive's incoming
  folder, hashed (SHA-256) as it is written so that ingest need not read it again. At
  most :data:`FLUSH_BYTES` of a part wait in memory before they are written.
* **One ingest path.** Every part is handed to :meth:`pacs.archive.Archive.ingest_file`
  (``consume=True``): validation, duplicate policy, index rows and events as for
  C-STORE. Up to :data:`PIPELINE` parts of one request are ingested concurrently while
  the next ones are read (on SQLite they share the index's group commit).
* **Per instance** failures (not DICOM, bad UIDs, another study than ``{study}``, a
  conflicting duplicate, storage unavailable) are listed in the Failed SOP Sequence and
  the other parts are stored. **Per request** failures stop reading: a part or a body
  above the size limits (413), a part that is not ``application/dicom`` (415), a broken
  multipart framing (400). Parts stored before stay stored and are listed; with nothing
  to list the domain error itself is the answer (the one error middleware).
* **The answer** is the Store Instances Response Module (PS3.18 I.1) in DICOM JSON
  (PS3.18 F.2), with the status of PS3.18 Table 10.5.3-1: 200 all stored, 202 some stored
  and others failed or stored with a warning, 409 none stored (503 when every failure was
  out of resources). Failure Reasons (PS3.18 I.2.2) are the errors' C-STORE statuses
  (:mod:`pacs.errors`); a texted summary goes in a ``Warning`` header (PS3.18 10.5.3.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, AsyncIterator, Callable, Protocol

import orjson
from aiohttp import hdrs, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import BadHttpMessage
from pydicom import dcmread

from pacs.access import Caller
from pacs.archive import Archive
from pacs.auth import caller_of
from pacs.errors import (
    Conflict, MalformedRequest, NotAcceptable, PacsError, PayloadTooLarge, StorageUnavailable,
    UnsupportedMediaType,
)
from pacs.incoming import create_spool_file
from pacs.ingest import IngestResult
from pacs.uids import lenient_uid, validate_uid
from pacs.web import ARCHIVE, run_blocking

from . import accept, wado
from .multipart import RelatedReader

log = logging.getLogger(__name__)

#: The ``source`` of instances stored through this door (index column, metrics label).
SOURCE = "stow"
#: Bytes asked of the multipart reader at a time.
CHUNK_BYTES = 1 << 20
#: Bytes of one part held in memory before they are written to its spool file.
FLUSH_BYTES = 1 << 20
#: Leading bytes of each part kept to name a refused instance in the Failed SOP Sequence.
HEAD_BYTES = 64 << 10
#: Parts of one request being ingested at once while the next ones are read.
PIPELINE = 8
#: Threads that run the ingests of STOW-RS parts: a pool of their own (sized like asyncio's
#: default one), so that a slow blob store, whose writes each ingest waits for, holds up
#: stores only, never the queries and retrievals the default executor serves
#: (docs/reliability.md, "S3 slow").
INGEST_POOL = ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="stow-ingest")
#: At most this many failures are described in the Warning header.
WARNINGS_SHOWN = 10
#: Failure Reason of an unexpected error (PS3.18 Table I.2-2: 0110 Processing failure).
PROCESSING_FAILURE = 0x0110
#: Warning Reason of a different object answered by the one already held (duplicate
#: policy ``keep``): B000 Coercion of Data Elements (PS3.18 Table I.2-1).
WARNING_KEPT_HELD_COPY = 0xB000
SUPPORTED = (f'multipart/related; type="{accept.DICOM}" (one Part 10 instance per part), '
             f'multipart/related; type="{accept.DICOM_JSON}" (metadata and bulk data) or {accept.DICOM}')


# -- the request -----------------------------------------------------------------------
def media_type(content_type: str) -> str:
    """``type/subtype[+suffix]`` of a Content-Type value, lower case, without parameters
    (aiohttp's ``parse_mimetype`` keeps the ``+json`` suffix apart)."""
    mime = parse_mimetype(content_type)
    return f"{mime.type}/{mime.subtype}" + (f"+{mime.suffix}" if mime.suffix else "")


def body_kind(content_type: str | None) -> str:
    """``"multipart"`` (instances), ``"metadata"`` (metadata and bulk data,
    :mod:`dicomweb.stow_json`) or ``"single"`` for a request Content-Type STOW-RS takes
    (PS3.18 10.5.1.3, 8.7.3.1-3); :class:`UnsupportedMediaType` (415) for any other,
    :class:`MalformedRequest` (400) for multipart without a boundary."""
    if not content_type:
        raise UnsupportedMediaType(f"Content-Type missing; send {SUPPORTED}")
    kind = media_type(content_type)
    if kind == accept.DICOM:
        return "single"
    if kind != "multipart/related":
        raise UnsupportedMediaType(f"{kind[:80]} is not supported; send {SUPPORTED}")
    mime = parse_mimetype(content_type)
    root = mime.parameters.get("type", accept.DICOM).strip().lower()[:80]
    if root not in (accept.DICOM, accept.DICOM_JSON):
        raise UnsupportedMediaType(f'multipart/related; type="{root}" is not supported; send {SUPPORTED}')
    if not mime.parameters.get("boundary"):
        raise MalformedRequest("multipart/related without a boundary parameter")
    return "multipart" if root == accept.DICOM else "metadata"


def check_part_type(headers: Any, number: int) -> None:
    """A part must be ``application/dicom`` (a missing Content-Type means the root type,
    RFC 2387 3.1); otherwise 415."""
    raw = headers.get(hdrs.CONTENT_TYPE)
    if raw is None:
        return
    kind = media_type(raw)
    if kind != accept.DICOM:
        raise UnsupportedMediaType(f"part {number} is {kind[:80]}, not {accept.DICOM}")


@dataclass
class Budget:
    """The size limits of one request (settings ``stow_max_part_bytes`` and
    ``stow_max_request_bytes``), counted as bytes arrive."""

    part_limit: int
    request_left: int
    part_used: int = 0

    def new_part(self, declared: str | None) -> None:
        """Start counting a part; one whose Content-Length already exceeds the limit is refused."""
        self.part_used = 0
        if declared and declared.isdigit() and int(declared) > self.part_limit:
            raise self._part_too_large()

    def take(self, size: int) -> None:
        """Count ``size`` more bytes of the current part."""
        self.part_used += size
        self.request_left -= size
        if self.part_used > self.part_limit:
            raise self._part_too_large()
        if self.request_left < 0:
            raise PayloadTooLarge("the request body exceeds the limit (stow_max_request_bytes)")

    def _part_too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"an instance exceeds the limit of {self.part_limit} bytes (stow_max_part_bytes)")


class PartReader(Protocol):
    """What is read of a part: aiohttp's ``BodyPartReader``, or :class:`WholeBody`."""

    headers: Any

    async def read_chunk(self, size: int = ...) -> bytes | memoryview: ...

    def at_eof(self) -> bool: ...


class WholeBody:
    """A single-part ``application/dicom`` body seen as one part."""

    def __init__(self, request: web.Request) -> None:
        self.headers: dict[str, str] = {}
        self._content = request.content

    async def read_chunk(self, size: int = CHUNK_BYTES) -> bytes:
        return await self._content.read(size)

    def at_eof(self) -> bool:
        return self._content.at_eof()


async def parts(request: web.Request, kind: str) -> AsyncIterator[PartReader]:
    """The body parts, in order (:class:`dicomweb.multipart.RelatedReader`). Broken framing
    (RFC 2046 5.1.1: a missing, wrong or truncated delimiter, a boundary longer than 70
    characters) raises :class:`MalformedRequest`, a nested multipart part
    :class:`UnsupportedMediaType`; the messages never quote the body."""
    if kind == "single":
        yield WholeBody(request)
        return
    boundary = parse_mimetype(request.headers.get(hdrs.CONTENT_TYPE, "")).parameters.get("boundary", "")
    if not 0 < len(boundary) <= 70:
        raise MalformedRequest("multipart/related header cannot be parsed (boundary)")
    reader = RelatedReader(request.content, boundary)
    while True:
        try:
            part = await reader.next()
        except (ValueError, BadHttpMessage):
            raise MalformedRequest("the body does not follow its multipart boundary "
                                   "(missing, wrong or truncated delimiter)") from None
        if part is None:
            return
        if media_type(part.headers.get(hdrs.CONTENT_TYPE, "")).startswith("multipart/"):
            raise UnsupportedMediaType(f"nested multipart parts are not supported; send {SUPPORTED}")
        yield part


# -- one part --------------------------------------------------------------------------
class Spool:
    """A part on its way to a spool file in the incoming folder, hashed as it is written."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path: str | None = None
        self.digest = hashlib.sha256()
        self.head = b""
        self._fp: Any = None

    @property
    def started(self) -> bool:
        """Whether part of the instance was written to the file already."""
        return self._fp is not None

    def write(self, chunks: list[bytes | memoryview]) -> None:
        """Append ``chunks`` (blocking; the file is created on the first call)."""
        if self._fp is None:
            fd, self.path = create_spool_file(self.folder)
            self._fp = os.fdopen(fd, "wb")
        for chunk in chunks:
            self._fp.write(chunk)
            self.digest.update(chunk)

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
            self._fp = None

    def discard(self) -> None:
        """Close and remove the file (blocking): the part is not stored."""
        self.close()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


async def read_part(part: PartReader, spool: Spool, budget: Budget) -> list[bytes | memoryview]:
    """Read ``part`` to its end. Whenever :data:`FLUSH_BYTES` are held they are written to
    the spool; the unwritten rest is returned (the ingest call writes it, so a small
    instance costs one executor round trip). A part is complete only once its closing
    delimiter was read: a truncated one raises :class:`MalformedRequest` and is never
    ingested (a cut between two elements could otherwise parse as a whole object)."""
    held: list[bytes | memoryview] = []
    size = 0
    while not part.at_eof():  # set by the closing delimiter only, never by a cut stream
        try:
            chunk = await part.read_chunk(CHUNK_BYTES)
        except (ValueError, BadHttpMessage):
            raise MalformedRequest("a part is truncated or malformed (no closing delimiter)") from None
        budget.take(len(chunk))
        if len(spool.head) < HEAD_BYTES:
            spool.head += bytes(chunk[:HEAD_BYTES - len(spool.head)])
        held.append(chunk)
        size += len(chunk)
        if size >= FLUSH_BYTES:
            try:
                await run_blocking(spool.write, held)
            except OSError as exc:  # the incoming folder is full or gone: stop the request
                raise StorageUnavailable(f"cannot write the instance: {exc.strerror or exc}") from None
            held, size = [], 0
    return held


@dataclass(frozen=True)
class PartOutcome:
    """What became of one part: an ingest result, or a failure with its reason code."""

    sop_class_uid: str
    sop_instance_uid: str
    result: IngestResult | None = None
    failure_reason: int = 0
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.result is not None

    @property
    def warning_reason(self) -> int:
        return WARNING_KEPT_HELD_COPY if self.result is not None and self.result.status == "kept" else 0


def identify(head: bytes) -> tuple[str, str]:
    """Best effort SOP Class and SOP Instance UIDs of a refused part, from its first
    bytes; a value that is not a valid UID (PS3.5 9.1) is left out rather than echoed."""
    try:
        ds = dcmread(BytesIO(head), force=True, stop_before_pixels=True,
                     specific_tags=["SOPClassUID", "SOPInstanceUID"])
        values = (ds.get("SOPClassUID"), ds.get("SOPInstanceUID"))
    except Exception:  # anything at all may arrive; naming it is a courtesy
        return "", ""
    texts = (str(v).rstrip("\x00 ") if v is not None else "" for v in values)
    cls, sop = (t if lenient_uid(t) else "" for t in texts)
    return cls, sop


def ingest_part(archive: Archive, spool: Spool, tail: list[bytes | memoryview], study: str | None,
                caller: Caller, alone: bool = False) -> PartOutcome:
    """Write the rest of the part and hand the spool to the one ingest path (blocking).
    Never raises: a refusal becomes a failed outcome; once ingest owns the spool it
    removes (or deliberately keeps) it.

    ``alone`` (no other part being ingested): a part still in memory goes with its bytes,
    so ingest parses them and, if small, stages it (pacs/staging.py; beside other parts
    staging only added writes, docs/architecture.md)."""
    handed = False
    try:
        content = b"".join(tail) if alone and not spool.started else None
        spool.write(tail)
        spool.close()
        handed = True
        result = archive.ingest_file(spool.path, source=SOURCE, consume=True, content=content,
                                     sha256=spool.digest.hexdigest(), expected_study=study, caller=caller,
                                     flush_in_background=False)  # parts are ingested PIPELINE at a time
        return PartOutcome(result.sop_class_uid, result.sop_instance_uid, result=result)
    except PacsError as exc:
        code, reason = exc.dimse_status, exc.reason
    except OSError as exc:
        code, reason = StorageUnavailable.dimse_status, f"cannot write the instance: {exc.strerror or exc}"
    except Exception:
        log.exception("STOW-RS: storing a part failed")
        code, reason = PROCESSING_FAILURE, "internal error while storing"
    finally:
        if not handed:
            spool.discard()
    log.info("STOW-RS: part refused: %s (0x%04X)", reason, code)
    return PartOutcome(*identify(spool.head), failure_reason=code, reason=reason)


async def run_ingest(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` (an ingest, blocking) in :data:`INGEST_POOL`."""
    return await asyncio.get_running_loop().run_in_executor(INGEST_POOL, fn, *args)


# -- the whole body --------------------------------------------------------------------
@dataclass
class Received:
    """The outcome of every part read, in order, and the error that stopped reading."""

    outcomes: list[PartOutcome] = field(default_factory=list)
    abort: PacsError | None = None


async def receive(request: web.Request, kind: str, study: str | None, budget: Budget) -> Received:
    """Read and store every part; ingests overlap reading, at most :data:`PIPELINE` at
    once. Waits for every started ingest before returning (or re-raising a lost
    connection), so the answer lists everything that was stored."""
    archive, caller = request.app[ARCHIVE], caller_of(request)
    window = asyncio.Semaphore(PIPELINE)
    started: list[asyncio.Future[PartOutcome]] = []
    running: set[asyncio.Future[PartOutcome]] = set()

    def finished(ingest: asyncio.Future[PartOutcome]) -> None:
        running.discard(ingest)
        window.release()

    received = Received()
    try:
        async with contextlib.aclosing(parts(request, kind)) as body:
            number = 0
            async for part in body:
                number += 1
                check_part_type(part.headers, number)
                budget.new_part(part.headers.get(hdrs.CONTENT_LENGTH))
                spool = Spool(archive.incoming_dir)
                try:
                    tail = await read_part(part, spool, budget)
                except BaseException:
                    await run_blocking(spool.discard)
                    raise
                await window.acquire()
                alone = not running
                future = asyncio.ensure_future(run_ingest(ingest_part, archive, spool, tail, study, caller, alone))
                future.add_done_callback(finished)
                running.add(future)
                started.append(future)
    except PacsError as exc:
        log.info("STOW-RS: request stopped after %d parts: %s", len(started), exc.reason)
        received.abort = exc
    finally:
        received.outcomes = list(await asyncio.gather(*started))
    return received


# -- the answer ------------------------------------------------------------------------
def _value(vr: str, value: Any) -> dict[str, Any]:
    """A DICOM JSON attribute (PS3.18 F.2.2): no ``Value`` when empty (Type 2)."""
    return {"vr": vr, "Value": [value]} if value not in ("", None) else {"vr": vr}


def _sop_ref(outcome: PartOutcome) -> dict[str, Any]:
    return {"00081150": _value("UI", outcome.sop_class_uid),
            "00081155": _value("UI", outcome.sop_instance_uid)}


def response_module(received: Received, base: str) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table I.1-1) as DICOM JSON: Retrieve
    URL of the study (when the stored instances are of one study), Failed SOP Sequence
    with Failure Reasons, Referenced SOP Sequence with each instance's Retrieve URL and
    Warning Reason, Other Failures Sequence for the error that stopped reading."""
    stored = [o for o in received.outcomes if o.result is not None]
    failed = [o for o in received.outcomes if o.result is None]
    studies = {o.result.study_uid for o in stored if o.result is not None}
    study_url = f"{base}/studies/{next(iter(studies))}" if len(studies) == 1 else ""
    module: dict[str, Any] = {"00081190": _value("UR", study_url)}
    if failed:
        module["00081198"] = {"vr": "SQ", "Value": [
            {**_sop_ref(o), "00081197": _value("US", o.failure_reason)} for o in failed]}
    if stored:
        items = []
        for o in stored:
            assert o.result is not None
            item = {**_sop_ref(o), "00081190": _value("UR", wado.instance_url(
                base, o.result.study_uid, o.result.series_uid, o.sop_instance_uid))}
            if o.warning_reason:
                item["00081196"] = _value("US", o.warning_reason)
            items.append(item)
        module["00081199"] = {"vr": "SQ", "Value": items}
    if received.abort is not None:
        module["0008119A"] = {"vr": "SQ", "Value": [
            {"00081197": _value("US", received.abort.dimse_status)}]}
    return module


def response_status(received: Received) -> int:
    """PS3.18 Table 10.5.3-1: the stopping error's status; 200 all stored; 202 some
    stored, others failed or warned; none stored: 409, or 503 when every failure was
    out of resources (A7xx)."""
    if received.abort is not None:
        return received.abort.http_status
    outcomes = received.outcomes
    if not any(o.stored for o in outcomes):
        if all(o.failure_reason & 0xFF00 == 0xA700 for o in outcomes):
            return StorageUnavailable.http_status
        return Conflict.http_status
    if any(not o.stored or o.warning_reason for o in outcomes):
        return 202
    return 200


def warning_header(received: Received, host: str) -> str:
    """Failures in words (RFC 7234 5.5 warn-values, code 299; PS3.18 10.5.3.2 suggests
    the DICOM status and a reason): at most :data:`WARNINGS_SHOWN`."""
    texts = [f"{o.failure_reason:04X} {o.reason}" for o in received.outcomes if not o.stored]
    if received.abort is not None:
        texts.append(f"{received.abort.dimse_status:04X} {received.abort.reason}")
    if len(texts) > WARNINGS_SHOWN:
        texts = texts[:WARNINGS_SHOWN] + [f"and {len(texts) - WARNINGS_SHOWN} more failures"]
    def clean(text: str) -> str:  # quoted-string content: printable ASCII, no quote or backslash
        return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else " " for c in text)

    agent = clean(host).replace(" ", "") or "-"
    return ", ".join(f'299 {agent} "{clean(t)}"' for t in texts)


async def store_instances(request: web.Request) -> web.Response:
    """``POST /studies[/{study}]`` (PS3.18 10.5): store every instance of the body; answer
    the Store Instances Response Module (see the module docstring for statuses)."""
    if not accept.accepts_json(request.headers.get(hdrs.ACCEPT)):
        raise NotAcceptable(f"the store response is answered as {accept.DICOM_JSON} only")
    study = request.match_info.get("study")
    if study is not None:
        study = validate_uid(study, "StudyInstanceUID of the target resource")
    kind = body_kind(request.headers.get(hdrs.CONTENT_TYPE))
    settings = request.app[ARCHIVE].settings
    budget = Budget(settings.stow_max_part_bytes, settings.stow_max_request_bytes)
    if request.content_length is not None and request.content_length > budget.request_left:
        raise PayloadTooLarge(f"the request body ({request.content_length} bytes) exceeds the limit "
                              f"of {budget.request_left} bytes (stow_max_request_bytes)")
    if kind == "metadata":
        from .stow_json import receive_metadata  # here: stow_json builds on this module

        received = await receive_metadata(request, study, budget)
    else:
        received = await receive(request, kind, study, budget)
    # audit trail (pacs/web_audit.py): the studies stored, which the URL may not name
    request["audit_studies"] = sorted({o.result.study_uid for o in received.outcomes if o.result is not None})
    if not received.outcomes:
        raise received.abort or MalformedRequest("the request holds no instance")
    body = orjson.dumps(response_module(received, wado.base_url(request)))
    headers = {hdrs.CONTENT_TYPE: accept.DICOM_JSON}
    if any(not o.stored for o in received.outcomes) or received.abort is not None:
        headers[hdrs.WARNING] = warning_header(received, request.host)
    response = web.Response(status=response_status(received), body=body, headers=headers)
    if received.abort is not None:
        response.force_close()  # the rest of the body was not read
    log.debug("STOW-RS: %d parts, %d stored", len(received.outcomes),
              sum(o.stored for o in received.outcomes))
    return response


#: Store transactions (PS3.18 Table 10.5.1-1): method, path under /dicom-web, handler.
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Any]], ...] = (
    ("POST", "/studies", store_instances),
    ("POST", "/studies/{study}", store_instances),
)
