"""The DICOMweb routes under ``/dicom-web``: QIDO-RS (PS3.18 10.6), WADO-RS (PS3.18 10.4,
:mod:`dicomweb.wado`), Retrieve Capabilities (PS3.18 8.9, :mod:`dicomweb.capabilities`),
the delete extension (:mod:`dicomweb.delete`) and CORS (:mod:`dicomweb.cors`: ``OPTIONS``
on every route path, headers on every answer).

``setup(app, archive)`` is the ``pacs.http`` entry point that
:func:`pacs.server.build_application` calls; ``pacs/`` never imports this package.
Handlers translate HTTP into calls on the archive's query model and back; domain errors
(:class:`pacs.errors.PacsError`, e.g. ``InvalidQuery`` → 400) are mapped by the one
error middleware of :mod:`pacs.web`. Blocking database work runs in the default executor.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from pacs.access import Caller
from pacs.archive import Archive
from pacs.auth import caller_of
from pacs.errors import NotAcceptable
from pacs.query import Level
from pacs.web import ARCHIVE, run_blocking

from . import accept, capabilities, delete, frames, qido, rendered, stow, wado, wado_uri
from .cors import PREFIX, ROUTE_METHODS, cors_headers, preflight

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


def _answer(archive: Archive, parsed: qido.QidoRequest, base: str, caller: Caller) -> tuple[bytes, bool]:
    """Run the search and encode the page (blocking: called in the executor). Returns the
    JSON array and whether more matches exist beyond it."""
    level = parsed.query.level
    matches = archive.search(parsed.query, parsed.tags, caller=caller)
    wanted = None if parsed.tags is None else frozenset(parsed.tags)
    page = [qido.shape(level, m.json, wanted, base) for m in matches[:parsed.page]]
    return orjson.dumps(page), len(matches) > parsed.page  # UTF-8, ~5x json.dumps


async def qido_search(request: web.Request, level: Level) -> web.Response:
    """A QIDO-RS search (PS3.18 10.6): 200 with a JSON array of DICOM JSON objects (PS3.18
    F.2), ``[]`` when nothing matches (PS3.18 10.6.3; current editions answer zero matches
    with 200 and an empty list, older ones allowed 204); a ``Warning: 299``
    header when more matches remain than were returned (PS3.18 8.3.4.4.1)."""
    if not accept.accepts_json(request.headers.get("Accept")):
        raise NotAcceptable(f"QIDO-RS answers {DICOM_JSON} only, not {request.headers['Accept']}")
    parsed = qido.parse(level, request.query.items(), wado.path_uids(dict(request.match_info)))
    body, more = await run_blocking(_answer, request.app[ARCHIVE], parsed, wado.base_url(request),
                                    caller_of(request))
    texts = list(parsed.warnings)
    if more:
        texts.append(MORE_RESULTS if parsed.limit_given else OVER_MAXIMUM.format(parsed.page))
    headers = {"Content-Type": DICOM_JSON}
    if texts:  # one header, comma-separated warning-values (RFC 7234 5.5)
        headers["Warning"] = ", ".join(f'299 {request.host} "{text}"' for text in texts)
    return web.Response(body=body, headers=headers)


def _search_handler(level: Level) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return await qido_search(request, level)

    handler.__name__ = f"qido_{level.value.lower()}"
    return handler


def _qido_routes() -> list[tuple[str, str, Callable[[web.Request], Any]]]:
    return [("GET", path, _search_handler(level)) for path, level in QIDO_ROUTES]


def route_table() -> list[tuple[str, str, Callable[[web.Request], Any]]]:
    """Every DICOMweb route: (method, path under /dicom-web, handler). Each service
    module owns its ``ROUTES``; this is the one place that lists the modules."""
    return [*_qido_routes(), *wado.ROUTES, *frames.ROUTES, *rendered.ROUTES, *wado_uri.ROUTES, *delete.ROUTES,
            *capabilities.ROUTES, *stow.ROUTES]


def setup(app: web.Application, archive: Archive | None = None) -> None:
    """Add the DICOMweb routes and CORS to ``app`` (the ``pacs.http`` entry point).

    The archive is taken from ``app[ARCHIVE]`` at request time; ``archive`` is accepted
    for the entry-point signature and used only when the app has none yet."""
    if archive is not None and ARCHIVE not in app:
        app[ARCHIVE] = archive
    by_path: dict[str, list[tuple[str, Callable[[web.Request], Any]]]] = {}
    for method, path, handler in route_table():
        by_path.setdefault(path, []).append((method, handler))
    app[ROUTE_METHODS] = {path: frozenset(m for m, _ in routes) for path, routes in by_path.items()}
    for path, routes in by_path.items():  # a path's routes together: one aiohttp resource
        for method, handler in routes:
            if method == "GET":
                app.router.add_get(PREFIX + path, handler)  # HEAD too
            else:
                app.router.add_route(method, PREFIX + path, handler)
        if "OPTIONS" not in app[ROUTE_METHODS][path]:
            app.router.add_route("OPTIONS", PREFIX + path, preflight)  # CORS preflight, cors.py
    wado_uri.setup_root(app)  # WADO-URI also at /wado (PS3.18 9.1: base implementation-defined)
    app.on_response_prepare.append(cors_headers)


__all__ = ["PREFIX", "QIDO_ROUTES", "qido_search", "setup"]
