"""REST routes of the remote AE registry: ``/api/aes`` (list, add) and
``/api/aes/{ae_title}`` (get, replace, delete).

An entry is ``{"ae_title", "host", "port", "description", "allow": {"echo": true,
"store": true, "find": true, "move": true, "get": true, "commitment": true}}``. In a
request, ``allow`` may name only some operations; the others are allowed. Bad input is
400 with a reason, an unknown AE 404, a duplicate 409: domain errors
(:mod:`pacs.errors`) raised by :mod:`pacs.aes` go through the error middleware.
Changes apply to the AE policy of this process at once, of other processes within 2 s.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from . import aes
from .errors import InvalidQuery, NotFound
from .web import ARCHIVE, _run

FIELDS = {"ae_title", "host", "port", "description", "allow"}


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; 400 for anything else or an unknown field."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidQuery("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidQuery("body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidQuery(f"unknown field(s): {', '.join(unknown)}")
    return body


def _fields(body: dict[str, Any]) -> tuple[str, int, str, frozenset[str]]:
    """host, port, description and the denied operations from a request body."""
    host, port, description = body.get("host"), body.get("port"), body.get("description", "")
    if not isinstance(host, str) or not host:
        raise InvalidQuery("host is required (a host name or address)")
    if not isinstance(port, int) or isinstance(port, bool):
        raise InvalidQuery("port is required (an integer 1-65535)")
    if not isinstance(description, str) or len(description) > 256:
        raise InvalidQuery("description must be a string of at most 256 characters")
    return host, port, description, aes.denied_from_allow(body.get("allow", {}))


async def list_aes(request: web.Request) -> web.Response:
    """GET /api/aes: every registered AE, by title."""
    entries = await _run(request, aes.list_aes, request.app[ARCHIVE].db)
    return web.json_response([e.as_json() for e in entries])


async def add_ae(request: web.Request) -> web.Response:
    """POST /api/aes: register an AE; 201 with the entry and its Location."""
    body = await _body(request)
    title = body.get("ae_title")
    if not isinstance(title, str):
        raise InvalidQuery("ae_title is required (1-16 characters)")
    host, port, description, denied = _fields(body)
    db = request.app[ARCHIVE].db
    entry = await _run(request, lambda: aes.add_ae(db, title, host, port, description, denied=denied))
    location = request.app.router["ae"].url_for(ae_title=entry.ae_title)
    return web.json_response(entry.as_json(), status=201, headers={"Location": str(location)})


async def get_ae(request: web.Request) -> web.Response:
    """GET /api/aes/{ae_title}: one AE, 404 when not registered."""
    title = request.match_info["ae_title"]
    entry = await _run(request, aes.get_ae, request.app[ARCHIVE].db, title)
    if entry is None:
        raise NotFound(f"AE {title.strip()} is not registered")
    return web.json_response(entry.as_json())


async def put_ae(request: web.Request) -> web.Response:
    """PUT /api/aes/{ae_title}: replace an AE's address, description and allow flags
    (operations not named in ``allow`` become allowed); 404 when not registered."""
    title = request.match_info["ae_title"]
    body = await _body(request)
    if "ae_title" in body and body["ae_title"] != title:
        raise InvalidQuery("ae_title in the body differs from the one in the path (remove and add to rename)")
    host, port, description, denied = _fields(body)
    db = request.app[ARCHIVE].db
    entry = await _run(request, lambda: aes.update_ae(db, title, host, port, description, denied=denied))
    return web.json_response(entry.as_json())


async def delete_ae(request: web.Request) -> web.Response:
    """DELETE /api/aes/{ae_title}: 204, or 404 when not registered."""
    await _run(request, aes.remove_ae, request.app[ARCHIVE].db, request.match_info["ae_title"])
    return web.Response(status=204)


def setup_ae_routes(app: web.Application) -> None:
    """Add the ``/api/aes`` routes to ``app`` (which holds the archive under ``ARCHIVE``)."""
    app.router.add_get("/api/aes", list_aes)
    app.router.add_post("/api/aes", add_ae)
    resource = app.router.add_resource("/api/aes/{ae_title}", name="ae")
    resource.add_route("GET", get_ae)
    resource.add_route("PUT", put_ae)
    resource.add_route("DELETE", delete_ae)
