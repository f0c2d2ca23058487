"""The HTTP server's archive routes: ``/healthz``, ``/metrics``, ``/api/changes``, ``/api/aes``,
``/api/outbox``.

The DICOMweb routes (``dicomweb/``) are added to the same application by their own
package. Blocking archive calls run in the default executor.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from aiohttp import web

from . import metrics
from .archive import Archive
from .errors import PacsError

ARCHIVE = web.AppKey("archive", Archive)
MAX_CHANGES = 1000
#: ``Retry-After`` (seconds, RFC 9110 10.2.3) of every 503 answer: the index or the blob
#: store is unavailable for now (docs/reliability.md).
RETRY_AFTER_SECONDS = 5


async def run_blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the default executor: blocking database and store work, off the
    event loop. Every HTTP door uses this one."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def _run(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    return await run_blocking(fn, *args)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Map domain errors to HTTP answers, in one place; a 503 says when to retry."""
    try:
        response = await handler(request)
    except PacsError as exc:
        response = web.json_response({"error": exc.reason}, status=exc.http_status)
    if response.status == 503 and not response.prepared and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def healthz(request: web.Request) -> web.Response:
    """200 when the index and the blob store are reachable, else 503 with details."""
    status = await _run(request, request.app[ARCHIVE].health)
    healthy = all(v == "ok" for v in status.values())
    return web.json_response({"status": "ok" if healthy else "unavailable", **status},
                             status=200 if healthy else 503)


async def metrics_view(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise web.HTTPBadRequest(text=f"{name} must be a non-negative integer")
    value = int(raw)
    if not low <= value <= high:
        raise web.HTTPBadRequest(text=f"{name} must be between {low} and {high}")
    return value


async def changes(request: web.Request) -> web.Response:
    """The change feed: events with id > ``since``, oldest first, at most ``limit``."""
    since = _int_param(request, "since", 0, 0, 2**62)
    limit = _int_param(request, "limit", 100, 1, MAX_CHANGES)
    events = await _run(request, request.app[ARCHIVE].changes, since, limit)
    last = events[-1].id if events else since
    return web.json_response({"changes": [e.as_json() for e in events], "last": last,
                              "done": len(events) < limit})


def create_app(archive: Archive) -> web.Application:
    """The aiohttp application with the archive routes."""
    from .web_audit import audit_middleware, setup_audit_routes  # audit: outermost, sees final statuses

    app = web.Application(middlewares=[audit_middleware, error_middleware])
    app[ARCHIVE] = archive
    from .auth import setup_auth  # authentication: inside audit, errors and rate limits, before every door's own

    from .ratelimit import setup_rate_limits  # before authentication: guessing tokens is limited too

    setup_rate_limits(app, archive.settings)
    setup_auth(app, archive.settings)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/api/changes", changes)
    from .web_aes import setup_ae_routes  # here: web_aes imports ARCHIVE from this module

    setup_ae_routes(app)
    from .web_outbox import setup_outbox_routes

    setup_outbox_routes(app)
    from .tokens_api import setup_token_routes

    setup_token_routes(app)
    setup_audit_routes(app)
    return app
