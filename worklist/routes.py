"""HTTP routes of the worklist: ``/api/worklist/items`` (REST) and ``/fhir/ServiceRequest``.

``setup(app, archive)`` is the ``pacs.http`` entry point (pyproject.toml). REST errors are
domain errors (:mod:`pacs.errors`, :class:`worklist.items.InvalidWorklistItem`) mapped by
the one error middleware of :mod:`pacs.web`: 400 with the reasons, 404, 409. The FHIR
route answers errors as an OperationOutcome instead (FHIR R4 RESTful API), so it turns
domain errors into one itself (:func:`worklist.fhir.operation_outcome`).
Blocking database work runs through :func:`pacs.web.run_blocking`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pacs.archive import Archive
from pacs.errors import PacsError
from pacs.web import ARCHIVE, run_blocking

from . import fhir, items
from .items import InvalidWorklistItem

ITEMS = "/api/worklist/items"
FHIR_JSON = "application/fhir+json"


async def _json(request: web.Request) -> Any:
    try:
        return await request.json() if request.can_read_body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidWorklistItem(["body must be JSON"]) from None


def _item_id(request: web.Request) -> int:
    raw = request.match_info["item_id"]
    if not raw.isdigit():
        raise InvalidWorklistItem(["item id must be an integer"])
    return int(raw)


def _location(request: web.Request, item_id: int) -> str:
    return str(request.app.router["worklist_item"].url_for(item_id=str(item_id)))


async def create_item(request: web.Request) -> web.Response:
    """POST /api/worklist/items: 201 with the item and its Location."""
    values = items.parse_item(await _json(request))
    item = await run_blocking(items.create_item, request.app[ARCHIVE].db, values)
    return web.json_response(item, status=201, headers={"Location": _location(request, item["id"])})


async def list_items(request: web.Request) -> web.Response:
    """GET /api/worklist/items?modality=&scheduled_station_ae=&status=&patient_id=
    &accession_number=&date_from=&date_to=&limit=&offset=: a JSON array."""
    found = await run_blocking(items.list_items, request.app[ARCHIVE].db, dict(request.query))
    return web.json_response(found)


async def get_item(request: web.Request) -> web.Response:
    """GET /api/worklist/items/{id}: the item or 404."""
    return web.json_response(await run_blocking(items.get_item, request.app[ARCHIVE].db, _item_id(request)))


async def patch_item(request: web.Request) -> web.Response:
    """PATCH /api/worklist/items/{id}: change the given fields; 409 once the item is final."""
    item_id = _item_id(request)
    values = items.parse_item(await _json(request), partial=True)
    return web.json_response(await run_blocking(items.update_item, request.app[ARCHIVE].db, item_id, values))


async def cancel_item(request: web.Request) -> web.Response:
    """DELETE /api/worklist/items/{id}: cancel (status CANCELLED, the item is kept)."""
    return web.json_response(await run_blocking(items.cancel_item, request.app[ARCHIVE].db, _item_id(request)))


async def create_service_request(request: web.Request) -> web.Response:
    """POST /fhir/ServiceRequest: 201 with the worklist item and its Location; errors as
    an OperationOutcome with the domain error's status."""
    try:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidWorklistItem(["body must be JSON"]) from None
        values = fhir.service_request_values(body)
        item = await run_blocking(items.create_item, request.app[ARCHIVE].db, values)
    except PacsError as exc:
        return web.json_response(fhir.operation_outcome(exc), status=exc.http_status, content_type=FHIR_JSON)
    return web.json_response(item, status=201, headers={"Location": _location(request, item["id"])})


def setup(app: web.Application, archive: Archive | None = None) -> None:
    """Add the worklist routes to ``app`` (the ``pacs.http`` entry point)."""
    if archive is not None and ARCHIVE not in app:
        app[ARCHIVE] = archive
    app.router.add_get(ITEMS, list_items)
    app.router.add_post(ITEMS, create_item)
    resource = app.router.add_resource(ITEMS + "/{item_id}", name="worklist_item")
    resource.add_route("GET", get_item)
    resource.add_route("PATCH", patch_item)
    resource.add_route("DELETE", cancel_item)
    app.router.add_post("/fhir/ServiceRequest", create_service_request)
