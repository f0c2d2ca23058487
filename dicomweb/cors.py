"""CORS (Fetch standard, "CORS protocol") and the method list of every /dicom-web route.

aiohttp has no CORS support of its own (its documentation points to aiohttp-cors, which
wraps every route and knows nothing of our settings); the protocol needs three small
pieces, written here:

* :func:`cors_headers` (an ``on_response_prepare`` hook): every answer under
  ``/dicom-web``, errors included, carries ``Access-Control-Allow-Origin`` when the
  request's ``Origin`` is allowed by the ``cors_allowed_origins`` setting: ``*`` when
  any origin is, otherwise the origin itself with ``Vary: Origin``; nothing when it is
  not. ``Access-Control-Expose-Headers`` names the headers viewers read (the ``Warning``
  of a truncated search, ``ETag``, ``Content-Range``, the ``Retry-After`` of a 503 or
  429 ...). A ``405`` gets its ``Allow``.
* :func:`preflight` (``OPTIONS`` on every route path): ``204`` with ``Allow`` and, for an
  allowed origin, ``Access-Control-Allow-Methods`` = the methods the path serves (from the
  route table; ``DELETE`` only when ``allow_delete`` is on), the requested headers and
  ``Access-Control-Max-Age``.
* :data:`ROUTE_METHODS`: the methods of each route path, filled by ``routes.setup``.
"""

from __future__ import annotations

from aiohttp import web

from pacs.web import ARCHIVE

PREFIX = "/dicom-web"
#: Route path under /dicom-web -> the methods its routes serve (filled by routes.setup).
ROUTE_METHODS = web.AppKey("dicomweb_route_methods", dict)
#: Response headers browser code may read (Fetch "CORS-safelisted" ones need no listing,
#: but Content-Type and Content-Length are named for older browsers).
EXPOSED = ("Warning, ETag, Content-Type, Content-Length, Content-Range, Accept-Ranges, "
           "Content-Location, Location, Allow, Retry-After")
#: Headers allowed when a preflight does not name any.
DEFAULT_ALLOWED_HEADERS = "Accept, Authorization, Content-Type, If-None-Match, Range"
MAX_AGE = "86400"
_ORDER = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")


def _under_prefix(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def allowed_origin(allowed: tuple[str, ...], origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for a request from ``origin``: ``*`` when
    any origin is allowed, the origin when it is listed (ASCII case-insensitive, a
    trailing slash ignored), None otherwise."""
    if "*" in allowed:
        return "*"
    if not origin:
        return None
    wanted = origin.strip().rstrip("/").lower()
    return origin.strip() if any(a.rstrip("/").lower() == wanted for a in allowed) else None


def route_path(request: web.Request) -> str | None:
    """The matched route's path under /dicom-web (``/studies/{study}``), None when no
    route matched."""
    resource = request.match_info.route.resource
    canonical = getattr(resource, "canonical", None)
    if canonical is None or not _under_prefix(canonical):
        return None
    return canonical[len(PREFIX):]


def served_methods(request: web.Request) -> list[str]:
    """The methods the matched path serves: its routes' methods, HEAD with GET, DELETE
    only when the ``allow_delete`` setting is on, and OPTIONS."""
    path = route_path(request)
    methods = set(request.app.get(ROUTE_METHODS, {}).get(path, ())) if path is not None else set()
    if not request.app[ARCHIVE].settings.allow_delete:
        methods.discard("DELETE")
    if "GET" in methods:
        methods.add("HEAD")
    methods.add("OPTIONS")
    return sorted(methods, key=lambda m: _ORDER.index(m) if m in _ORDER else len(_ORDER))


async def preflight(request: web.Request) -> web.Response:
    """OPTIONS on a /dicom-web route: a CORS preflight when it carries
    ``Access-Control-Request-Method`` and the origin is allowed; ``204`` with ``Allow``
    (RFC 9110 9.3.7) either way."""
    methods = ", ".join(served_methods(request))
    headers = {"Allow": methods}
    origin = allowed_origin(request.app[ARCHIVE].settings.cors_allowed_origins,
                            request.headers.get("Origin"))
    if origin is not None and request.headers.get("Access-Control-Request-Method"):
        headers.update({
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers":
                request.headers.get("Access-Control-Request-Headers") or DEFAULT_ALLOWED_HEADERS,
            "Access-Control-Max-Age": MAX_AGE,
        })
    return web.Response(status=204, headers=headers)


def is_preflight(request: web.Request) -> bool:
    """A browser's CORS preflight: OPTIONS with ``Access-Control-Request-Method``."""
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


async def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """CORS headers on every answer under /dicom-web, errors included (see module doc)."""
    if not _under_prefix(request.path):
        return
    if response.status == 405 and "Allow" not in response.headers:
        response.headers["Allow"] = ", ".join(served_methods(request))
    allowed = request.app[ARCHIVE].settings.cors_allowed_origins
    origin = allowed_origin(allowed, request.headers.get("Origin"))
    if "*" not in allowed:  # the answer depends on the Origin: caches must know
        vary = response.headers.get("Vary")
        if not vary or "origin" not in vary.lower():
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSED
