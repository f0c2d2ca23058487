"""WADO-RS Retrieve Frames (PS3.18 10.4.1.1.4) and Retrieve Bulkdata (PS3.18 10.4.1.1.5).

* ``GET .../instances/{sop}/frames/{framelist}``: one part per frame, in the order
  asked. ``multipart/related; type="application/octet-stream"`` (default) sends native
  little-endian pixels (transfer syntax Explicit VR Little Endian, PS3.18 Table
  8.7.3-2), decoding a compressed frame when the object is stored compressed;
  ``transfer-syntax=*`` or the stored syntax's media type (``image/jls``, ``image/jp2``,
  ``image/jpeg``, ``image/dicom-rle``, ...) sends the stored compressed frame as is.
  Every part's Content-Type carries ``transfer-syntax=<uid>`` (OHIF / Cornerstone read
  it to pick the decoder).
* ``GET .../instances/{sop}/bulk/{n}`` and ``.../bulk/pixeldata`` (the BulkDataURIs of
  the metadata, :func:`dicomweb.wado.expand_bulk_uris`): the value as
  ``application/octet-stream``, multipart by default, single part when asked; encapsulated
  Pixel Data is sent as its frames, negotiated as for Retrieve Frames.
* A single-part answer honours ``Range: bytes=first-last`` (RFC 9110 14): 206 with
  ``Content-Range``, 416 when unsatisfiable; other Range forms are ignored (200).

The bytes come from :mod:`pacs.frames` (ranged reads of the stored object).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web
from pydicom.uid import ExplicitVRBigEndian

from pacs import frames
from pacs.access import Caller
from pacs.auth import caller_of
from pacs.errors import NotAcceptable, NotFound, PacsError
from pacs.web import ARCHIVE, run_blocking

from . import accept

OCTET = "application/octet-stream"
NATIVE = str(frames.NATIVE)
IMPLICIT = "1.2.840.10008.1.2"
#: Media types of compressed frames by transfer syntax (PS3.18 Table 8.7.3-5); the
#: first is the one sent, the others are accepted aliases.
MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.50": ("image/jpeg",),
    "1.2.840.10008.1.2.4.51": ("image/jpeg",),
    "1.2.840.10008.1.2.4.57": ("image/jpeg",),
    "1.2.840.10008.1.2.4.70": ("image/jpeg",),
    "1.2.840.10008.1.2.4.80": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.81": ("image/jls", "image/x-jls"),
    "1.2.840.10008.1.2.4.90": ("image/jp2", "image/j2c"),
    "1.2.840.10008.1.2.4.91": ("image/jp2", "image/j2c"),
    "1.2.840.10008.1.2.4.92": ("image/jpx",),
    "1.2.840.10008.1.2.4.93": ("image/jpx",),
    "1.2.840.10008.1.2.4.201": ("image/jphc",),
    "1.2.840.10008.1.2.4.202": ("image/jphc",),
    "1.2.840.10008.1.2.4.203": ("image/jphc",),
    "1.2.840.10008.1.2.5": ("image/dicom-rle", "image/x-dicom-rle"),
}
_ANY_OCTET = {OCTET, "*/*", "application/*"}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class Choice:
    """The representation negotiated: multipart or single part, the media type of the
    (each) part, the transfer syntax of its bytes, and whether they are sent as stored
    (compressed) rather than native."""

    multipart: bool
    media_type: str
    syntax: str
    encoded: bool = False

    @property
    def part_type(self) -> str:
        """Content-Type of a part or single body, with its transfer-syntax (PS3.18 8.7.3.5)."""
        return f"{self.media_type}; transfer-syntax={self.syntax}"


def _resolve(inner: str, syntax: str | None, stored: str, compressed: bool, decodable: bool) -> tuple[str, str, bool] | None:
    """(media type, transfer syntax, encoded) for one media range's type and
    ``transfer-syntax`` parameter, or None when this archive cannot produce it."""
    native = (OCTET, NATIVE, False) if (not compressed or decodable) else None
    if inner in _ANY_OCTET:
        if syntax == accept.AS_STORED:
            return (OCTET, stored, True) if compressed else (OCTET, NATIVE, False)
        if not syntax or syntax == NATIVE:
            return native
        if syntax == IMPLICIT and native:  # the same native little-endian pixel bytes
            return (OCTET, IMPLICIT, False)
        return (OCTET, stored, True) if compressed and syntax == stored else None
    types = MEDIA_TYPES.get(stored, ()) if compressed else ()
    if types and (inner in types or inner == "image/*") and syntax in (None, "", accept.AS_STORED, stored):
        return (inner if inner in types else types[0], stored, True)
    return None


def choose(header: str | None, stored: str, compressed: bool, decodable: bool, parts: int) -> Choice:
    """The first representation of the Accept header that can be produced (PS3.18 8.7.4,
    RFC 9110 12.5.1); 406 when none can. Single-part ranges fit only one part."""
    ranges = accept.parse_accept(header) if (header or "").strip() else []
    for media in ranges or [accept.MediaRange("multipart/related", {}, 1.0)]:
        if media.media_type == "multipart/related":
            multipart, inner = True, media.params.get("type", OCTET).lower()
        elif media.media_type in ("*/*", "multipart/*"):
            multipart, inner = True, OCTET
        else:
            multipart, inner = False, media.media_type
        if not multipart and parts != 1:
            continue
        found = _resolve(inner, media.params.get("transfer-syntax"), stored, compressed, decodable)
        if found is not None:
            return Choice(multipart, *found)
    raise NotAcceptable(f"stored as {stored}: no representation the Accept header admits can be sent "
                        f"(native {OCTET} or, for compressed objects, the stored syntax)")


class RangeNotSatisfiable(PacsError):
    """No byte of the Range lies within the representation (RFC 9110 15.5.17)."""

    http_status = 416

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable: the representation has {size} bytes")
        self.size = size


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte of a single ``bytes=`` range (RFC 9110 14.1.2), None to send
    everything (no Range, another unit, several ranges or bad syntax: RFC 9110 14.2 lets
    a server ignore those). Raises :class:`RangeNotSatisfiable`."""
    match = _RANGE.fullmatch((header or "").replace(" ", ""))
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":  # suffix range: the last N bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else None
    if last is not None and last < first:
        return None  # invalid (RFC 9110 14.1.1): ignored
    if first >= size:
        raise RangeNotSatisfiable(size)
    return first, size - 1 if last is None else min(last, size - 1)


@dataclass
class Answer:
    """What to send: the choice, each part's bytes, and for a 206 the span and total."""

    choice: Choice
    parts: list[bytes]
    span: tuple[int, int] | None = None
    total: int = 0


def _ranged(choice: Choice, data: bytes, range_header: str | None) -> Answer:
    """A single-part answer, cut to the requested range when one applies."""
    span = byte_range(range_header, len(data)) if not choice.multipart else None
    if span is None:
        return Answer(choice, [data])
    return Answer(choice, [data[span[0]:span[1] + 1]], span, len(data))


def frames_answer(archive: Any, info: dict[str, str], accept_header: str | None,
                  range_header: str | None, caller: Caller) -> Answer:
    """Retrieve Frames (blocking): one SELECT, then one ranged read per frame."""
    numbers = frames.parse_frame_list(info["frames"])
    source = archive.locate(info["study"], info["series"], info["sop"], caller=caller)
    frames.check_frames(source, numbers)
    return _frames_of(archive, source, numbers, accept_header, range_header)


def _frames_of(archive: Any, source: frames.PixelSource, numbers: list[int], accept_header: str | None,
               range_header: str | None) -> Answer:
    choice = choose(accept_header, source.transfer_syntax_uid, source.compressed,
                    frames.can_decode(source), len(numbers))
    read = frames.stored_frame if choice.encoded else frames.native_frame
    data = [read(archive, source, n) for n in numbers]
    if choice.multipart:
        return Answer(choice, data)
    return _ranged(choice, data[0], range_header)


def bulk_answer(archive: Any, info: dict[str, str], accept_header: str | None,
                range_header: str | None, caller: Caller) -> Answer:
    """Retrieve Bulkdata (blocking): the value of ``bulk/<n>`` or ``bulk/pixeldata``."""
    source = archive.locate(info["study"], info["series"], info["sop"], caller=caller)
    name = info["bulk"]
    if name == "pixeldata":
        if source.frames == 0:
            raise NotFound(f"instance {source.sop_instance_uid} has no Pixel Data")
        if source.compressed:  # encapsulated: its frames (PS3.18 8.7.3.3.2)
            return _frames_of(archive, source, list(range(1, source.frames + 1)), accept_header, range_header)
        location = frames.pixel_data_location(source)
        loader: Callable[[], bytes] = lambda: frames.native_pixel_data(archive, source)  # noqa: E731
    elif name.isdigit():
        location = frames.bulk_location(source, int(name))
        loader = lambda: frames.decoded_bulk_value(archive, source, int(name))  # noqa: E731
    else:
        raise NotFound(f"no bulk data {name[:20]!r}: BulkDataURIs end in a number or 'pixeldata'")
    choice = choose(accept_header, NATIVE, False, True, 1)
    if location is not None and source.transfer_syntax_uid != ExplicitVRBigEndian:
        offset, length = location
        span = byte_range(range_header, length) if not choice.multipart else None
        if span is not None:  # one ranged read of just the bytes asked for
            data = frames.read_range(archive, source, offset + span[0], span[1] - span[0] + 1)
            return Answer(choice, [data], span, length)
        return Answer(choice, [frames.read_range(archive, source, offset, length)])
    return _ranged(choice, loader(), range_header)


def respond(answer: Answer) -> web.Response:
    """The HTTP answer: multipart/related (PS3.18 8.7.5; RFC 2387) or one body."""
    choice = answer.choice
    if not choice.multipart:
        headers = {"Content-Type": choice.part_type, "Accept-Ranges": "bytes"}
        status = 200
        if answer.span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {answer.span[0]}-{answer.span[1]}/{answer.total}"
        return web.Response(status=status, body=answer.parts[0], headers=headers)
    return multipart_response(answer.parts, choice.media_type, choice.part_type)


def multipart_response(parts: list[bytes], media_type: str, part_type: str) -> web.Response:
    """``multipart/related; type=<media_type>`` (RFC 2387, PS3.18 8.7.5) of small parts
    built in memory, each with Content-Type ``part_type``."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode("ascii")
    chunks: list[bytes] = []
    for data in parts:
        chunks += (head, data, b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    content_type = f'multipart/related; type="{media_type}"; boundary={boundary}'
    return web.Response(body=b"".join(chunks), headers={"Content-Type": content_type})


async def _serve(request: web.Request, job: Callable[..., Answer]) -> web.Response:
    try:
        answer = await run_blocking(job, request.app[ARCHIVE], dict(request.match_info),
                                    request.headers.get("Accept"), request.headers.get("Range"),
                                    caller_of(request))
    except RangeNotSatisfiable as exc:
        # 416 carries Content-Range: bytes */size (RFC 9110 15.5.17), which the error
        # middleware's JSON answers cannot add.
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{exc.size}"},
                                                 text=exc.reason) from None
    return respond(answer)


async def retrieve_frames(request: web.Request) -> web.Response:
    """GET ``.../frames/{framelist}`` (PS3.18 10.4.1.1.4): 200 with the frames; 400 for a
    malformed frame list or UID; 404 for an unknown instance or a frame beyond Number of
    Frames; 406 when no acceptable representation can be produced."""
    return await _serve(request, frames_answer)


async def retrieve_bulkdata(request: web.Request) -> web.Response:
    """GET ``.../bulk/{n}`` or ``.../bulk/pixeldata`` (PS3.18 10.4.1.1.5): 200/206 with the
    value; 404 when the instance or the value is unknown; 406; 416."""
    return await _serve(request, bulk_answer)


_INSTANCE = "/studies/{study}/series/{series}/instances/{sop}"
#: (method, path under /dicom-web, handler).
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Any]], ...] = (
    ("GET", _INSTANCE + "/frames/{frames}", retrieve_frames),
    ("GET", _INSTANCE + "/bulk/{bulk}", retrieve_bulkdata),
)
