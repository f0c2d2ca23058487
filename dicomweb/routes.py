"""The DICOMweb routes under ``/dicom-web``: QIDO-RS (PS3.18 10.6), WADO-RS (PS3.18 10.4,
:mod:`dicomweb.wado`) and CORS.

``setup(app, archive)`` is the ``pacs.http`` entry point that
:func:`pacs.server.build_application` calls; ``pacs/`` never imports this package.
Handlers translate HTTP into calls on the archive's query model and back; domain errors
(:class:`pacs.errors.PacsError`, e.g. ``InvalidQuery`` → 400) are mapped by the one
error middleware of :mod:`pacs.web`. Blocking database work runs in the default executor.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from pacs.archive import Archive
from pacs.query import Level, search
from pacs.errors import NotAcceptable
from pacs.web import ARCHIVE, run_blocking

from . import accept, qido, wado

PREFIX = "/dicom-web"
DICOM_JSON = accept.DICOM_JSON
#: Accept media ranges a QIDO-RS JSON answer satisfies (PS3.18 8.7.4, 10.6.1.3).
#: Search transactions: target resource path (PS3.18 Table 10.6.1-2) and query level.
QIDO_ROUTES: tuple[tuple[str, Level], ...] = (
    ("/studies", Level.STUDY),
    ("/series", Level.SERIES),
    ("/instances", Level.IMAGE),
    ("/studies/{study}/series", Level.SERIES),
    ("/studies/{study}/instances", Level.IMAGE),
    ("/studies/{study}/series/{series}/instances", Level.IMAGE),
)
MORE_RESULTS = "There are additional results that can be requested"
OVER_MAXIMUM = ("The number of results exceeded the maximum supported by the server "
                "({}). Additional results can be requested")


def _answer(archive: Archive, parsed: qido.QidoRequest, base: str) -> tuple[bytes, bool]:
    """Run the search and encode the page (blocking: called in the executor). Returns the
    JSON array and whether more matches exist beyond it."""
    level = parsed.query.level
    matches = list(search(archive.db, parsed.query, parsed.tags))
    page = [qido.shape(level, m.json, parsed.tags, base) for m in matches[:parsed.page]]
    return json.dumps(page, ensure_ascii=False).encode("utf-8"), len(matches) > parsed.page


async def qido_search(request: web.Request, level: Level) -> web.Response:
    """A QIDO-RS search (PS3.18 10.6): 200 with a JSON array of DICOM JSON objects (PS3.18
    F.2), ``[]`` when nothing matches (PS3.18 10.6.3; current editions answer zero matches
    with 200 and an empty list, older ones allowed 204); a ``Warning: 299``
    header when more matches remain than were returned (PS3.18 8.3.4.4.1)."""
    if not accept.accepts_json(request.headers.get("Accept")):
        raise NotAcceptable(f"QIDO-RS answers {DICOM_JSON} only, not {request.headers['Accept']}")
    parsed = qido.parse(level, request.query.items(), wado.path_uids(dict(request.match_info)))
    body, more = await run_blocking(_answer, request.app[ARCHIVE], parsed, wado.base_url(request))
    headers = {"Content-Type": DICOM_JSON}
    if more:
        text = MORE_RESULTS if parsed.limit_given else OVER_MAXIMUM.format(parsed.page)
        headers["Warning"] = f'299 {request.host} "{text}"'
    return web.Response(body=body, headers=headers)


def _search_handler(level: Level) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return await qido_search(request, level)

    handler.__name__ = f"qido_{level.value.lower()}"
    return handler


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight (Fetch standard) of a /dicom-web route: any origin, the methods the
    routes serve, the headers the browser asks for; browsers may cache it for a day."""
    asked = request.headers.get("Access-Control-Request-Headers", "")
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": asked or "Accept, Authorization, Content-Type",
        "Access-Control-Max-Age": "86400",
    })


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer under /dicom-web (errors included) may be read by any origin, and
    the Warning header of a truncated search and the ETag of metadata are visible to
    browser code."""
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = "Warning, Content-Type, ETag"


def _qido_routes() -> list[tuple[str, str, Callable[[web.Request], Any]]]:
    return [("GET", path, _search_handler(level)) for path, level in QIDO_ROUTES]


def route_table() -> list[tuple[str, str, Callable[[web.Request], Any]]]:
    """Every DICOMweb route: (method, path under /dicom-web, handler). Each service
    module owns its ``ROUTES``; this is the one place that lists the modules."""
    return [*_qido_routes(), *wado.ROUTES]


def setup(app: web.Application, archive: Archive | None = None) -> None:
    """Add the DICOMweb routes and CORS to ``app`` (the ``pacs.http`` entry point).

    The archive is taken from ``app[ARCHIVE]`` at request time; ``archive`` is accepted
    for the entry-point signature and used only when the app has none yet."""
    if archive is not None and ARCHIVE not in app:
        app[ARCHIVE] = archive
    preflighted: set[str] = set()
    for method, path, handler in route_table():
        if method == "GET":
            app.router.add_get(PREFIX + path, handler)  # HEAD too
        else:
            app.router.add_route(method, PREFIX + path, handler)
        if path not in preflighted:
            app.router.add_route("OPTIONS", PREFIX + path, preflight)
            preflighted.add(path)
    app.on_response_prepare.append(cors_headers)


__all__ = ["PREFIX", "QIDO_ROUTES", "qido_search", "setup"]
