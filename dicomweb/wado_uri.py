"""WADO-URI (PS3.18 9, the URI Service): ``GET /wado?requestType=WADO&...``.

Served at ``/wado`` and ``/dicom-web/wado`` (the base is implementation defined,
PS3.18 9.1). Query parameters (PS3.18 9.1.2; names are case sensitive):

* ``requestType=WADO``, ``studyUID``, ``seriesUID``, ``objectUID``: required.
* ``contentType``: a comma-separated list, first producible wins: ``application/dicom``
  (the Part 10 object; ``transferSyntax`` picks the syntax, default Explicit VR Little
  Endian, ``*`` as stored, 9.1.2.1.7), ``image/jpeg`` (default for objects with pixel
  data), ``image/png``, ``*/*``/``image/*`` (JPEG). Anything else: 406.
* ``frameNumber`` (1-based), ``windowCenter`` + ``windowWidth`` (both or neither),
  ``rows``/``columns`` (the image fits in them, aspect kept), ``imageQuality`` 1..100;
  ``annotation``, ``region``, ``charset``, ``anonymize``, ``presentation*`` are not
  supported and ignored.

Errors: 400 for a missing or malformed parameter, 404 for an unknown object or frame,
406 for an unsupported contentType or transfer syntax.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from aiohttp import web

from pacs import frames, render
from pacs.access import Caller
from pacs.auth import caller_of
from pacs.errors import InvalidQuery, NotAcceptable
from pacs.retrieve import RetrieveItem
from pacs.web import ARCHIVE, run_blocking

from . import accept, wado

DICOM = accept.DICOM
PATH = "/wado"


def _required(query: Mapping[str, str], name: str) -> str:
    value = query.get(name, "").strip()
    if not value:
        raise InvalidQuery(f"WADO-URI needs the {name} parameter (PS3.18 9.1.2.1)")
    return value


def _positive(query: Mapping[str, str], name: str, high: int) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit() or not 1 <= int(text) <= high:
        raise InvalidQuery(f"{name} must be an integer 1..{high}")
    return int(text)


def _content_type(query: Mapping[str, str], has_pixels: bool) -> str:
    """The first producible type of ``contentType`` (PS3.18 9.1.2.1.5); 406 if none."""
    asked = [t.split(";")[0].strip().lower() for t in query.get("contentType", "").split(",") if t.strip()]
    if not asked:
        return render.JPEG if has_pixels else DICOM
    for media_type in asked:
        if media_type == DICOM:
            return DICOM
        if media_type in render.MEDIA_TYPES or media_type in ("image/*", "*/*"):
            if not has_pixels:
                continue
            return media_type if media_type in render.MEDIA_TYPES else render.JPEG
    raise NotAcceptable(f"contentType {query.get('contentType', '')[:60]!r}: this object is available as "
                        + ("image/jpeg, image/png or " if has_pixels else "") + DICOM)


def _window(query: Mapping[str, str]) -> render.Window | None:
    center, width = query.get("windowCenter"), query.get("windowWidth")
    if center is None and width is None:
        return None
    if not center or not width:
        raise InvalidQuery("windowCenter and windowWidth go together (PS3.18 9.1.2.4.6)")
    try:
        return render.Window(float(center), float(width))
    except ValueError:
        raise InvalidQuery("windowCenter and windowWidth must be numbers") from None


def image_options(query: Mapping[str, str], media_type: str) -> render.RenderOptions:
    """Rendering options of the image parameters (PS3.18 9.1.2.4)."""
    rows, columns = _positive(query, "rows", 8192), _positive(query, "columns", 8192)
    viewport = None
    if rows or columns:
        viewport = render.Viewport(columns or 8192, rows or 8192)
    quality = _positive(query, "imageQuality", 100) or render.DEFAULT_QUALITY
    return render.RenderOptions(media_type, _window(query), viewport, quality)


def wado_uri_job(archive: Any, query: Mapping[str, str], caller: Caller) -> tuple[str, bytes | wado.PartSource]:
    """Validate, locate and produce the answer (blocking): (Content-Type, body), the body
    an image's bytes or the object to stream."""
    if query.get("requestType") != "WADO":
        raise InvalidQuery("requestType must be WADO (PS3.18 9.1.2.1.1)")
    uids = [_required(query, name) for name in ("studyUID", "seriesUID", "objectUID")]
    source = archive.locate(*uids, caller=caller)
    media_type = _content_type(query, source.frames > 0)
    if media_type == DICOM:
        return _part10(archive, source, query.get("transferSyntax", "").strip())
    number = _positive(query, "frameNumber", 1 << 30) or 1
    frames.check_frames(source, [number])
    return media_type, render.render(archive, source, number, image_options(query, media_type))


def _part10(archive: Any, source: frames.PixelSource, syntax: str) -> tuple[str, wado.PartSource]:
    """The object as ``application/dicom`` in ``syntax`` (PS3.18 9.1.2.1.7): as stored
    when it is the stored one or ``*``, else transcoded when possible; 406 otherwise."""
    item = RetrieveItem("", source.sop_instance_uid, source.transfer_syntax_uid, source.blob_key, 0)
    chosen = accept.negotiate(source.transfer_syntax_uid, [syntax or accept.DEFAULT_SYNTAX])
    if chosen is None:
        raise NotAcceptable(f"object stored as {source.transfer_syntax_uid} cannot be sent as {syntax}")
    return f"{DICOM}; transfer-syntax={chosen}", wado.open_part(archive, item, chosen)


async def retrieve(request: web.Request) -> web.Response:
    """GET ``/wado`` (PS3.18 9): 200 with the object or image; 400, 404, 406."""
    content_type, body = await run_blocking(wado_uri_job, request.app[ARCHIVE], dict(request.query),
                                            caller_of(request))
    if isinstance(body, bytes):
        return web.Response(body=body, headers={"Content-Type": content_type})
    return await _stream(request, content_type, body)


async def _stream(request: web.Request, content_type: str, part: wado.PartSource) -> web.StreamResponse:
    """The object chunk by chunk from the store (one chunk in memory), or its transcoded
    bytes."""
    try:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        if part.stream is None:
            await resp.write(part.data)
        while part.stream is not None and (chunk := await run_blocking(part.stream.read, wado.CHUNK_SIZE)):
            await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        await run_blocking(part.close)


def setup_root(app: web.Application) -> None:
    """Also serve WADO-URI at ``/wado``, outside ``/dicom-web``."""
    app.router.add_get(PATH, retrieve)


#: (method, path under /dicom-web, handler).
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Any]], ...] = (("GET", PATH, retrieve),)
