"""REST routes of API tokens, for admins (scope ``admin``, pacs/scopes.py):

* ``GET /api/tokens``: every token's record (id, name, scopes, created, expires, revoked);
  never a secret;
* ``POST /api/tokens`` ``{"name": "ris", "scopes": ["worklist"], "expires": "30d"}``:
  201 with the record and ``"token"``, shown this once (``expires`` optional);
* ``DELETE /api/tokens/{id}``: revoke, 200 with the record; 404 for an unknown id.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from . import api_tokens
from .errors import InvalidQuery
from .web import ARCHIVE, run_blocking

FIELDS = {"name", "scopes", "expires"}


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidQuery("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidQuery("body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidQuery(f"unknown field(s): {', '.join(unknown)}")
    if not isinstance(body.get("name"), str) or not isinstance(body.get("scopes"), (str, list)):
        raise InvalidQuery("name (text) and scopes (a list or comma-separated text) are required")
    if body.get("expires") is not None and not isinstance(body["expires"], str):
        raise InvalidQuery("expires must be a duration such as 30d")
    return body


async def list_tokens(request: web.Request) -> web.Response:
    found = await run_blocking(api_tokens.list_tokens, request.app[ARCHIVE].db)
    return web.json_response({"tokens": [t.as_json() for t in found]})


async def create_token(request: web.Request) -> web.Response:
    body = await _body(request)
    expires = api_tokens.parse_duration(body["expires"]) if body.get("expires") else None
    token, info = await run_blocking(api_tokens.create, request.app[ARCHIVE].db, body["name"], body["scopes"], expires)
    return web.json_response({**info.as_json(), "token": token}, status=201,
                             headers={"Location": f"/api/tokens/{info.id}"})


async def revoke_token(request: web.Request) -> web.Response:
    info = await run_blocking(api_tokens.revoke, request.app[ARCHIVE].db, request.match_info["id"])
    return web.json_response(info.as_json())


def setup_token_routes(app: web.Application) -> None:
    app.router.add_get("/api/tokens", list_tokens)
    app.router.add_post("/api/tokens", create_token)
    app.router.add_delete("/api/tokens/{id}", revoke_token)
