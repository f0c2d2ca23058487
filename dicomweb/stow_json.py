"""STOW-RS with metadata and bulk data (PS3.18 10.5.1.4, 8.7.3.2-3): ``multipart/related;
type="application/dicom+json"``.

The first part is ``application/dicom+json``: a JSON array of DICOM JSON objects (PS3.18
F.2), one per instance. Every further part is one bulk data value, ``application/octet-stream``
(uncompressed, little endian, PS3.18 8.7.3.3), named by its ``Content-Location``, which
equals the ``BulkDataURI`` of the attribute it fills (PS3.18 F.2.6); values may also be
inline (``InlineBinary``). Compressed pixel data media types (``image/jpeg``, ...) are not
taken (415).

Bulk data parts are spooled to files as they arrive, like instances (:mod:`dicomweb.stow`).
Then each instance is built with pydicom (``Dataset.from_json``), written as a PS3.10
object in Explicit VR Little Endian (File Meta from its SOP Class and Instance UIDs) to a
spool file and handed to the one ingest path; it is held in memory only while it is
built. An instance that cannot be built (unparseable object, a BulkDataURI without its
part) fails with Failure Reason C000 and the others are stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
from io import BytesIO
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from pacs.archive import Archive
from pacs.errors import InvalidInstance, MalformedRequest, PacsError, UnsupportedMediaType
from pacs.uids import lenient_uid
from pacs.access import Caller
from pacs.auth import caller_of
from pacs.web import ARCHIVE, run_blocking

from . import accept
from .stow import (
    HEAD_BYTES, Budget, PartOutcome, Received, Spool, ingest_part, media_type, parts, read_part, run_ingest,
)

log = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"
#: Largest metadata part held in memory (the JSON of every instance of the request).
METADATA_MAX_BYTES = 64 << 20


def _media_type(headers: Any) -> str:
    return media_type(headers.get(hdrs.CONTENT_TYPE, ""))[:80]


async def _metadata(part: Any, budget: Budget) -> list[Any]:
    """The first part: the JSON array of instances (PS3.18 10.5.1.4)."""
    if _media_type(part.headers) != accept.DICOM_JSON:
        raise UnsupportedMediaType(f"the first part must be {accept.DICOM_JSON}, the instances' metadata")
    data = bytearray()
    while not part.at_eof():
        try:
            chunk = await part.read_chunk(1 << 20)
        except (ValueError, BadHttpMessage):
            raise MalformedRequest("the metadata part is truncated or malformed") from None
        budget.take(len(chunk))
        data += chunk
        if len(data) > METADATA_MAX_BYTES:
            raise MalformedRequest(f"the metadata part exceeds {METADATA_MAX_BYTES} bytes")
    try:
        instances = json.loads(bytes(data))
    except ValueError:
        raise MalformedRequest(f"the {accept.DICOM_JSON} part is not JSON") from None
    if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
        raise MalformedRequest(f"the {accept.DICOM_JSON} part is not an array of DICOM JSON objects")
    return instances


async def _bulk_part(part: Any, number: int, archive: Archive, budget: Budget) -> tuple[str, Spool]:
    """A bulk data part, spooled: (its Content-Location, the spool)."""
    if _media_type(part.headers) != OCTET_STREAM:
        raise UnsupportedMediaType(f"part {number} is {_media_type(part.headers)}; bulk data is taken "
                                   f"as {OCTET_STREAM} only")
    location = part.headers.get(hdrs.CONTENT_LOCATION)
    if not location:
        raise MalformedRequest(f"bulk data part {number} has no Content-Location")
    budget.new_part(part.headers.get(hdrs.CONTENT_LENGTH))
    spool = Spool(archive.incoming_dir)
    try:
        tail = await read_part(part, spool, budget)
        await run_blocking(_finish, spool, tail)
    except BaseException:
        await run_blocking(spool.discard)
        raise
    return location, spool


def _finish(spool: Spool, tail: list[bytes | memoryview]) -> None:
    spool.write(tail)
    spool.close()


def _uid(obj: dict[str, Any], tag: str) -> str:
    values = obj.get(tag, {}).get("Value") if isinstance(obj.get(tag), dict) else None
    text = str(values[0]) if isinstance(values, list) and values else ""
    return text if lenient_uid(text) else ""


def build_instance(obj: dict[str, Any], bulk: dict[str, Spool], folder: str) -> Spool:
    """One instance as a PS3.10 object in a spool file (blocking). Raises
    :class:`InvalidInstance` when it cannot be built."""
    def value_of(tag: str, vr: str, uri: str) -> bytes:
        spool = bulk.get(uri)
        if spool is None or spool.path is None:
            raise InvalidInstance(f"no bulk data part for a BulkDataURI of {tag}")
        with open(spool.path, "rb") as fp:
            return fp.read()

    try:
        ds = Dataset.from_json(obj, bulk_data_uri_handler=value_of)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
    except InvalidInstance:
        raise
    except Exception as exc:  # pydicom raises many types on bad input
        raise InvalidInstance(f"cannot build the instance from its metadata: {type(exc).__name__}") from None
    data = out.getvalue()
    spool = Spool(folder)
    spool.write([data])
    spool.head = data[:HEAD_BYTES]
    return spool


def store_one(archive: Archive, obj: dict[str, Any], bulk: dict[str, Spool], study: str | None,
              caller: Caller) -> PartOutcome:
    """Build and ingest one instance (blocking); never raises."""
    try:
        spool = build_instance(obj, bulk, archive.incoming_dir)
    except PacsError as exc:
        log.info("STOW-RS: instance refused: %s (0x%04X)", exc.reason, exc.dimse_status)
        return PartOutcome(_uid(obj, "00080016"), _uid(obj, "00080018"),
                           failure_reason=exc.dimse_status, reason=exc.reason)
    return ingest_part(archive, spool, [], study, caller)


async def receive_metadata(request: web.Request, study: str | None, budget: Budget) -> Received:
    """Read the metadata and the bulk data parts, then store each instance in turn."""
    archive = request.app[ARCHIVE]
    received, bulk = Received(), {}
    instances: list[Any] | None = None
    try:
        async with contextlib.aclosing(parts(request, "multipart")) as body:
            number = 0
            async for part in body:
                number += 1
                if instances is None:
                    instances = await _metadata(part, budget)
                    continue
                location, spool = await _bulk_part(part, number, archive, budget)
                bulk[location] = spool
        if instances is None:
            raise MalformedRequest("the request holds no metadata part")
        for obj in instances:
            received.outcomes.append(await run_ingest(store_one, archive, obj, bulk, study, caller_of(request)))
    except PacsError as exc:
        received.abort = exc
    finally:
        for spool in bulk.values():
            await run_blocking(spool.discard)
    return received
