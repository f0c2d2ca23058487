"""REST routes of the reading worklist (``/api/reading-worklist``) and its event consumer.

* ``GET /api/reading-worklist?state=&modality=&priority=&date_from=&date_to=&assigned_to=&limit=&offset=``
  → ``{"items": [...], "total": N}``, most urgent first, then oldest;
* ``GET /api/reading-worklist/{study}`` → one item (404 when not on the list);
* ``POST /api/reading-worklist/{study}/claim`` and ``.../release`` with
  ``{"radiologist": "name"}`` → the item; 409 when someone else holds it;
* ``GET /api/reports/{study}`` → ``{"versions": [...]}``;
* ``PUT /api/reports/{study}/draft`` with ``{"radiologist", "findings", "impression",
  "codes"?}`` → the draft; ``POST /api/reports/{study}/sign`` with ``{"radiologist"}`` →
  the signed version (worklist/reports.py).

``setup(app, archive)`` is a ``pacs.http`` entry point: it adds the routes and registers
:data:`worklist.reading.CONSUMER` with the server's event consumers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from pacs.archive import Archive
from pacs.auth import caller_of
from pacs.errors import InvalidQuery
from pacs.web import ARCHIVE, run_blocking

from . import emr, reading, reports

PREFIX = "/api/reading-worklist"
REPORTS = "/api/reports"


def _filters(query: Any) -> reading.Filters:
    def number(name: str, default: int | None) -> int | None:
        raw = query.get(name, "")
        if raw == "":
            return default
        if not raw.isdigit() or len(raw) > 9:
            raise InvalidQuery(f"{name} must be a non-negative integer")
        return int(raw)

    unknown = sorted(set(query) - {"state", "modality", "priority", "date_from", "date_to", "assigned_to",
                                   "limit", "offset"})
    if unknown:
        raise InvalidQuery(f"unknown parameter(s): {', '.join(unknown)}")
    return reading.Filters(
        state=query.get("state", ""), modality=query.get("modality", ""), priority=number("priority", None),
        date_from=query.get("date_from", ""), date_to=query.get("date_to", ""),
        assigned_to=query.get("assigned_to", ""), limit=number("limit", 100) or 0, offset=number("offset", 0) or 0)


async def list_worklist(request: web.Request) -> web.Response:
    filters = _filters(request.query)
    items, total = await run_blocking(reading.list_items, request.app[ARCHIVE].db, filters)
    return web.json_response({"items": items, "total": total})


async def get_worklist_item(request: web.Request) -> web.Response:
    item = await run_blocking(reading.get_item, request.app[ARCHIVE].db, request.match_info["study"])
    return web.json_response(item)


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object of the request, naming the radiologist (400 otherwise)."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidQuery('body must be a JSON object {"radiologist": "name", ...}') from None
    if not isinstance(body, dict) or not isinstance(body.get("radiologist"), str):
        raise InvalidQuery('body must be a JSON object {"radiologist": "name", ...}')
    body["radiologist"] = reading.radiologist_name(body["radiologist"])
    return body


async def _radiologist(request: web.Request) -> str:
    return (await _body(request))["radiologist"]


async def get_reports(request: web.Request) -> web.Response:
    found = await run_blocking(reports.versions, request.app[ARCHIVE].db, request.match_info["study"])
    return web.json_response({"versions": found})


async def put_draft(request: web.Request) -> web.Response:
    body = await _body(request)
    draft = await run_blocking(reports.save_draft, request.app[ARCHIVE].db, request.match_info["study"],
                               body["radiologist"], body)
    return web.json_response(draft)


async def sign_report(request: web.Request) -> web.Response:
    who = await _radiologist(request)
    signed = await run_blocking(reports.sign, request.app[ARCHIVE], request.match_info["study"], who,
                                caller_of(request))
    return web.json_response(signed)


async def claim_study(request: web.Request) -> web.Response:
    who = await _radiologist(request)
    item = await run_blocking(reading.claim, request.app[ARCHIVE].db, request.match_info["study"], who)
    return web.json_response(item)


async def release_study(request: web.Request) -> web.Response:
    who = await _radiologist(request)
    item = await run_blocking(reading.release, request.app[ARCHIVE].db, request.match_info["study"], who)
    return web.json_response(item)


STATIC = Path(__file__).parent / "static"


async def reading_page(request: web.Request) -> web.FileResponse:
    """The radiologist's page (worklist/static/reading.html)."""
    return web.FileResponse(STATIC / "reading.html", headers={"Cache-Control": "no-cache"})


def setup(app: web.Application, archive: Archive | None = None) -> None:
    """Add the routes; register the consumer that fills the list (see module doc)."""
    from pacs.server import CONSUMERS

    app.router.add_get(PREFIX, list_worklist)
    app.router.add_get(PREFIX + "/{study}", get_worklist_item)
    app.router.add_post(PREFIX + "/{study}/claim", claim_study)
    app.router.add_post(PREFIX + "/{study}/release", release_study)
    app.router.add_get("/reading", reading_page)
    app.router.add_static("/reading/static", STATIC, append_version=False)
    app.router.add_get(REPORTS + "/{study}", get_reports)
    app.router.add_put(REPORTS + "/{study}/draft", put_draft)
    app.router.add_post(REPORTS + "/{study}/sign", sign_report)
    if CONSUMERS in app:
        app[CONSUMERS].append(reading.CONSUMER)
        settings = (archive or app[ARCHIVE]).settings
        if settings.emr_fhir_url:
            app[CONSUMERS].append(emr.imaging_study_consumer(settings.emr_fhir_url))
