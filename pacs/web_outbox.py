"""REST routes of the delivery outbox (:mod:`pacs.outbox`): ``GET /api/outbox`` lists
messages (filters ``channel``, ``status``; paging ``since``, ``limit``) without their
bodies, and ``POST /api/outbox/{id}/redeliver`` puts a dead or delivered message back in
the queue with its attempts reset (404 when there is no such message, 409 when it is
still pending)."""

from __future__ import annotations

from aiohttp import web

from . import outbox
from .errors import InvalidQuery
from .web import ARCHIVE, MAX_CHANGES, _int_param, _run


async def list_outbox(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in outbox.STATUSES:
        raise InvalidQuery(f"status must be one of {', '.join(outbox.STATUSES)}")
    since = _int_param(request, "since", 0, 0, 2**62)
    limit = _int_param(request, "limit", 100, 1, MAX_CHANGES)
    messages = await _run(request, lambda: outbox.list_messages(
        request.app[ARCHIVE].db, channel=request.query.get("channel") or None, status=status,
        since=since, limit=limit))
    return web.json_response({"messages": messages, "done": len(messages) < limit})


async def redeliver(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidQuery("message id must be a positive integer")
    await _run(request, outbox.redeliver, request.app[ARCHIVE].db, int(raw))
    return web.json_response({"id": int(raw), "status": outbox.PENDING})


def setup_outbox_routes(app: web.Application) -> None:
    app.router.add_get("/api/outbox", list_outbox)
    app.router.add_post("/api/outbox/{id}/redeliver", redeliver)
