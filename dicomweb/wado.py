"""WADO-RS (PS3.18 10.4): retrieve studies, series, instances and their metadata.

* **Metadata** (PS3.18 10.4.1.1.2, answer 10.4.3 / F.2): a JSON array of every instance's
  DICOM JSON, read from the index only (never from the objects): the stored per-instance
  text is concatenated after its relative ``bulk:<n>`` / ``bulk:pixeldata`` BulkDataURIs
  are made absolute (:func:`expand_bulk_uris`). The answer for a study is built in memory
  (a 2,000-instance study is a few MB). A strong ETag derived from the instances'
  SHA-256 values and the base URL answers ``If-None-Match`` with 304 after one small
  query, before any JSON is read.
* **Instances** (PS3.18 10.4.1.1.1, answer 8.7.3 / 8.7.5): ``multipart/related;
  type="application/dicom"``, one Part 10 object per part, streamed chunk by chunk from
  the blob store (reads run in the executor; one chunk of one object is held at a
  time). The transfer syntax of each part follows :mod:`dicomweb.accept`; an object
  that must be transcoded is decoded whole, alone, in memory.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import re
import stat
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable

from aiohttp import web

from pacs import deidentify
from pacs.access import Caller
from pacs.archive import Archive
from pacs.auth import caller_of
from pacs.errors import InvalidQuery, NotAcceptable, NotFound, StorageUnavailable
from pacs.query import Level, Query, make_matcher
from pacs.retrieve import MetadataRow, RetrieveItem, transcoded_part10
from pacs.storage import BlobNotFound
from pacs.web import ARCHIVE, run_blocking

from . import accept

log = logging.getLogger(__name__)

#: Bytes read from the blob store per write to the client.
CHUNK_SIZE = 1 << 20
#: Bumped whenever the metadata representation changes, so old ETags stop matching.
METADATA_VERSION = "wado-metadata-1"
_BULK_URI = re.compile(r'"BulkDataURI"(\s*):(\s*)"bulk:')
_PATH_KEYS = (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"), ("sop", "SOPInstanceUID"))


# -- the target resource ------------------------------------------------------------------
def path_uids(match_info: dict[str, str]) -> dict[str, str]:
    """The UIDs of the target resource (PS3.18 10.4.1.1), by attribute keyword."""
    return {keyword: match_info[name] for name, keyword in _PATH_KEYS if name in match_info}


def target_query(uids: dict[str, str]) -> Query:
    """The IMAGE-level query of the instances under the target resource.

    Malformed UIDs raise :class:`pacs.errors.InvalidQuery` (400), as in QIDO-RS."""
    return Query(Level.IMAGE, [make_matcher(keyword, [uid]) for keyword, uid in uids.items()])


def not_found(uids: dict[str, str]) -> NotFound:
    """404 naming the resource that is not held (PS3.18 10.4.3 "Not Found")."""
    study, series = uids["StudyInstanceUID"], uids.get("SeriesInstanceUID")
    if "SOPInstanceUID" in uids:
        return NotFound(f"instance {uids['SOPInstanceUID']} of series {series} of study {study} not found")
    if series is not None:
        return NotFound(f"series {series} of study {study} not found")
    return NotFound(f"study {study} not found")


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    """The WADO-RS URL of an instance (PS3.18 10.4.1.1.1)."""
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"


# -- metadata ----------------------------------------------------------------------------
def metadata_etag(rows: Iterable[MetadataRow], base: str) -> str:
    """A strong entity tag (RFC 9110 8.8.3) of a metadata answer: it changes whenever an
    instance is added, removed or replaced (its SHA-256), or the URIs' base changes."""
    digest = hashlib.sha256(f"{METADATA_VERSION}\n{base}\n".encode())
    for row in rows:
        digest.update(f"{row.sop_uid}:{row.sha256}\n".encode())
    return f'"{digest.hexdigest()[:40]}"'


def etag_matches(header: str | None, etag: str) -> bool:
    """``If-None-Match`` (RFC 9110 13.1.2, weak comparison) names ``etag`` or is ``*``."""
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in (t[2:] if t.startswith("W/") else t for t in tags)


def expand_bulk_uris(stored: str, url: str) -> str:
    """The stored DICOM JSON text with its relative BulkDataURIs made absolute
    (PS3.18 F.2.7): ``bulk:<n>`` becomes ``<url>/bulk/<n>`` and ``bulk:pixeldata``
    ``<url>/bulk/pixeldata``, where ``url`` is the instance's WADO-RS URL.

    Works on the text: outside strings the quotes of ``"BulkDataURI":"`` are structural
    (a string's own quotes are escaped), so only BulkDataURI values are rewritten."""
    prefix = json.dumps(f"{url}/bulk/", ensure_ascii=False)[1:-1]
    return _BULK_URI.sub(lambda m: f'"BulkDataURI"{m[1]}:{m[2]}"{prefix}', stored)


def metadata_body(rows: Iterable[MetadataRow], base: str) -> bytes:
    """The JSON array of the instances' DICOM JSON objects (PS3.18 F.2), UTF-8."""
    parts = (expand_bulk_uris(r.dicom_json, instance_url(base, r.study_uid, r.series_uid, r.sop_uid))
             for r in rows)
    return ("[" + ",".join(parts) + "]").encode("utf-8")


async def retrieve_metadata(request: web.Request) -> web.Response:
    """GET ``.../metadata`` (PS3.18 10.4.1.1.2): 200 with the DICOM JSON array and an
    ETag; 304 when ``If-None-Match`` names the current ETag; 404 when nothing matches;
    406 when the Accept header excludes DICOM JSON."""
    if not accept.accepts_json(request.headers.get("Accept")):
        raise NotAcceptable(f"metadata is answered as {accept.DICOM_JSON} only")
    if deidentify.PARAMETER in request.query:  # never answer identified data to a de-identified ask
        raise InvalidQuery(f"{deidentify.PARAMETER} applies to study, series and instance retrieves only")
    uids = path_uids(dict(request.match_info))
    query, base = target_query(uids), base_url(request)
    archive, caller = request.app[ARCHIVE], caller_of(request)
    if request.headers.get("If-None-Match"):
        current = await run_blocking(lambda: archive.instance_metadata(query, caller=caller, with_json=False))
        etag = metadata_etag(current, base)
        if current and etag_matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers={"ETag": etag})
    rows = await run_blocking(lambda: archive.instance_metadata(query, caller=caller))
    if not rows:
        raise not_found(uids)
    body = await run_blocking(metadata_body, rows, base)
    return web.Response(body=body, headers={"Content-Type": accept.DICOM_JSON,
                                            "ETag": metadata_etag(rows, base)})


def base_url(request: web.Request) -> str:
    """The DICOMweb root of RetrieveURL / BulkDataURI values (PS3.18 8.2 Base URI): the
    ``public_base_url`` setting when set (behind a reverse proxy), otherwise as the
    client addressed it (scheme, Host, ``/dicom-web``)."""
    from .routes import PREFIX

    public = request.app[ARCHIVE].settings.public_base_url
    if public:
        return public.rstrip("/")
    return f"{request.scheme}://{request.host}{PREFIX}"


# -- instances -------------------------------------------------------------------------
def _plan_parts(archive: Archive, query: Query, wanted: list[str], caller: Caller) -> list[tuple[RetrieveItem, str]]:
    """Each instance with the syntax it is sent in (blocking); 406 before anything is
    sent when one of them cannot be sent in any acceptable syntax (PS3.18 8.7.4)."""
    parts = []
    for item in archive.plan_retrieve(query, caller=caller):
        syntax = accept.negotiate(item.transfer_syntax_uid, wanted)
        if syntax is None:
            raise NotAcceptable(
                f"instance {item.sop_instance_uid} is stored as {item.transfer_syntax_uid} and cannot "
                f"be sent in {', '.join(wanted)} (transcoding reaches only Explicit/Implicit VR "
                "Little Endian, from syntaxes with an available decoder)")
        parts.append((item, syntax))
    return parts


@dataclass
class PartSource:
    """The content of one part, ready to write: an open stored object (sent as stored)
    or a transcoded object's bytes."""

    item: RetrieveItem
    syntax: str
    stream: BinaryIO | None = None
    data: bytes = b""

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


class ResponseAborted(Exception):
    """A part failed after the status was sent: the connection is closed unfinished.

    Deliberately not a :class:`~pacs.errors.PacsError`, which the error middleware
    would try to answer with a second status line."""


def open_part(archive: Archive, item: RetrieveItem, syntax: str) -> PartSource:
    """The content of ``item``'s part in ``syntax`` (blocking). Raises
    :class:`~pacs.errors.StorageUnavailable` when the object is missing from the store
    and :class:`~pacs.retrieve.RetrieveFailure` when it cannot be transcoded."""
    if syntax != item.transfer_syntax_uid:
        return PartSource(item, syntax, data=transcoded_part10(archive, item, syntax))
    try:
        return PartSource(item, syntax, stream=archive.store.open(item.blob_key))
    except BlobNotFound:
        raise StorageUnavailable(f"object of {item.sop_instance_uid} missing from the store") from None


def open_deidentified_part(remap: deidentify.UidRemapper, archive: Archive, item: RetrieveItem,
                           syntax: str) -> PartSource:
    """``item``'s part in ``syntax`` (chosen as without de-identification), then
    de-identified by PS3.15 E.1 (:mod:`pacs.deidentify`); held in memory (blocking)."""
    source = open_part(archive, item, syntax)
    try:
        data = source.stream.read() if source.stream is not None else source.data
    finally:
        source.close()
    return PartSource(item, syntax, data=deidentify.deidentify_part10(data, remap))


def _part_head(boundary: str, syntax: str) -> bytes:
    """A body part's delimiter and header (PS3.18 8.7.5; RFC 2387)."""
    return f"--{boundary}\r\nContent-Type: {accept.DICOM}; transfer-syntax={syntax}\r\n\r\n".encode("ascii")


def _is_file(stream: BinaryIO | None) -> bool:
    """Whether ``stream`` is a regular file the kernel can send from (a folder store)."""
    try:
        return stream is not None and stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def zero_copy_length(parts: list[tuple[RetrieveItem, str]], first: PartSource, boundary: str) -> int | None:
    """The exact body length when every part goes as stored from files, so the answer can
    be sent with ``Content-Length`` and ``sendfile`` (no copy through Python); else None."""
    if not _is_file(first.stream) or any(syntax != item.transfer_syntax_uid for item, syntax in parts):
        return None
    heads = sum(len(_part_head(boundary, syntax)) + 2 for _, syntax in parts)
    return heads + sum(item.size for item, _ in parts) + len(f"--{boundary}--\r\n")


@dataclass
class Sender:
    """Where and how parts are written: through the response, or (``zero_copy``) the
    stored files straight from the page cache to the socket with ``sendfile``."""

    request: web.Request
    resp: web.StreamResponse
    boundary: str
    zero_copy: bool = False

    async def part(self, source: PartSource) -> None:
        """One body part: delimiter, Content-Type with the transfer-syntax parameter, the
        Part 10 object, CRLF."""
        try:
            await self.resp.write(_part_head(self.boundary, source.syntax))
            if self.zero_copy and source.stream is not None:
                await self._sendfile(source)
            elif source.stream is not None:
                while chunk := await run_blocking(source.stream.read, CHUNK_SIZE):
                    await self.resp.write(chunk)
            for start in range(0, len(source.data), CHUNK_SIZE):
                await self.resp.write(source.data[start:start + CHUNK_SIZE])
        finally:
            await run_blocking(source.close)
        await self.resp.write(b"\r\n")

    async def _sendfile(self, source: PartSource) -> None:
        transport = self.request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        assert source.stream is not None
        sent = await asyncio.get_running_loop().sendfile(transport, source.stream, 0, source.item.size)
        if sent != source.item.size:  # the object is not the size the index says
            raise StorageUnavailable(f"object of {source.item.sop_instance_uid} is {sent} bytes, "
                                     f"not {source.item.size}")


async def _write_parts(sender: Sender, archive: Archive, first: PartSource,
                       rest: list[tuple[RetrieveItem, str]], opener: Callable[..., PartSource] = open_part) -> None:
    """Every part, then the close delimiter; a failure closes the connection unfinished."""
    source: PartSource | None = first
    try:
        await sender.part(first)
        for item, syntax in rest:
            source = None
            source = await run_blocking(opener, archive, item, syntax)
            await sender.part(source)
    except ConnectionError:  # the client went away: nothing more to send
        log.info("WADO-RS: the client closed the connection during a retrieve")
        return
    except Exception as exc:
        sop = source.item.sop_instance_uid if source else "the next instance"
        log.warning("WADO-RS: sending %s failed (%s); response closed unfinished", sop, exc)
        raise ResponseAborted(str(exc)) from exc
    await sender.resp.write(f"--{sender.boundary}--\r\n".encode("ascii"))
    await sender.resp.write_eof()


async def retrieve_instances(request: web.Request) -> web.StreamResponse:
    """GET a study, series or instance (PS3.18 10.4.1.1.1): 200 with one
    ``application/dicom`` part per instance, streamed; 404 when nothing matches; 406
    when the Accept header admits no multipart ``application/dicom`` this archive can
    produce for every instance; 503 when the first object is missing from the store.

    The first object is opened before the status is sent. Failures after that (a later
    object missing) cannot change the status any more: the connection is closed before
    the close delimiter, which the client sees as a truncated message. Objects sent as
    stored from the folder store go by ``sendfile`` with an exact ``Content-Length``;
    otherwise the body is chunked. ``?deidentify=basic`` sends each instance
    de-identified (PS3.15 E.1, :mod:`pacs.deidentify`); any other value is 400."""
    deidentified = deidentify.requested(request.query.getall(deidentify.PARAMETER, []))
    wanted = accept.dicom_syntaxes(request.headers.get("Accept"))
    if not wanted:
        raise NotAcceptable(f'instances are answered as multipart/related; type="{accept.DICOM}" only')
    uids = path_uids(dict(request.match_info))
    archive = request.app[ARCHIVE]
    parts = await run_blocking(_plan_parts, archive, target_query(uids), wanted, caller_of(request))
    if not parts:
        raise not_found(uids)
    opener: Callable[..., PartSource] = open_part
    if deidentified:
        opener = functools.partial(open_deidentified_part, await run_blocking(deidentify.remapper_for, archive))
    first = await run_blocking(opener, archive, *parts[0])
    boundary = uuid.uuid4().hex
    length = zero_copy_length(parts, first, boundary)
    resp = web.StreamResponse(headers={
        "Content-Type": f'multipart/related; type="{accept.DICOM}"; boundary={boundary}'})
    if length is not None:
        resp.content_length = length
    try:
        await resp.prepare(request)
    except BaseException:
        await run_blocking(first.close)
        raise
    if request.method == "HEAD":
        await run_blocking(first.close)
        return resp
    await _write_parts(Sender(request, resp, boundary, length is not None), archive, first, parts[1:], opener)
    return resp


#: Retrieve transactions (PS3.18 Table 10.4.1-1): method, path under /dicom-web, handler.
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Any]], ...] = (
    ("GET", "/studies/{study}", retrieve_instances),
    ("GET", "/studies/{study}/series/{series}", retrieve_instances),
    ("GET", "/studies/{study}/series/{series}/instances/{sop}", retrieve_instances),
    ("GET", "/studies/{study}/metadata", retrieve_metadata),
    ("GET", "/studies/{study}/series/{series}/metadata", retrieve_metadata),
    ("GET", "/studies/{study}/series/{series}/instances/{sop}/metadata", retrieve_metadata),
)
