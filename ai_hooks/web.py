"""REST routes of the AI engine hooks, and their wiring into the server (``pacs.http``
entry point ``ai_hooks``).

* ``GET/POST /api/ai/subscriptions``, ``GET/PUT/DELETE /api/ai/subscriptions/{id}``
  (ai_hooks/subscriptions.py);
* ``GET /api/ai/deliveries?subscription=&status=&since=&limit=``: the delivery log, a view
  of the subscriptions' outbox messages (attempts, last status and error, no bodies);
  ``POST /api/ai/deliveries/{id}/redeliver`` puts a dead or delivered one back in the queue;
* ``POST /api/ai/results`` (findings → SR, FHIR, triage: ai_hooks/results.py) and
  ``GET /api/ai/results?study_uid=&since=&limit=``.

:func:`setup` adds the routes and the token middleware (ai_hooks/tokens.py) and
registers the event consumer (ai_hooks/notify.py), the webhook signer, the DICOM push
transport (ai_hooks/push.py) and in-order delivery of webhook channels with the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from pacs import outbox
from pacs.archive import Archive
from pacs.auth import caller_of
from pacs.errors import InvalidQuery
from pacs.web import ARCHIVE, MAX_CHANGES, _int_param, run_blocking

from . import findings as findings_doc
from . import notify, push, results, sr, subscriptions, tokens

log = logging.getLogger(__name__)

PREFIX = "/api/ai"


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidQuery("body must be JSON") from None


def _id(request: web.Request, name: str = "id") -> int:
    raw = request.match_info[name]
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidQuery(f"{name} must be a positive integer")
    return int(raw)


async def list_subscriptions(request: web.Request) -> web.Response:
    found = await run_blocking(subscriptions.list_all, request.app[ARCHIVE].db)
    return web.json_response({"subscriptions": found})


async def create_subscription(request: web.Request) -> web.Response:
    created = await run_blocking(subscriptions.create, request.app[ARCHIVE].db, await _json(request))
    _warm_up_soon()
    return web.json_response(created, status=201,
                             headers={"Location": f"{PREFIX}/subscriptions/{created['id']}"})


async def get_subscription(request: web.Request) -> web.Response:
    return web.json_response(await run_blocking(subscriptions.get, request.app[ARCHIVE].db, _id(request)))


async def put_subscription(request: web.Request) -> web.Response:
    body = await _json(request)
    return web.json_response(await run_blocking(subscriptions.replace, request.app[ARCHIVE].db, _id(request), body))


async def delete_subscription(request: web.Request) -> web.Response:
    await run_blocking(subscriptions.remove, request.app[ARCHIVE].db, _id(request))
    return web.Response(status=204)


def _deliveries(db: Any, sub_id: int | None, status: str | None, since: int, limit: int) -> list[dict[str, Any]]:
    if sub_id is not None:
        return outbox.list_messages(db, channel=subscriptions.get(db, sub_id)["channel"], status=status,
                                    since=since, limit=limit)
    found: list[dict[str, Any]] = []
    for sub in subscriptions.list_all(db):
        found += outbox.list_messages(db, channel=sub["channel"], status=status, since=since, limit=limit)
    return sorted(found, key=lambda m: m["id"])[:limit]


async def list_deliveries(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in outbox.STATUSES:
        raise InvalidQuery(f"status must be one of {', '.join(outbox.STATUSES)}")
    raw = request.query.get("subscription", "")
    if raw and not raw.isdigit():
        raise InvalidQuery("subscription must be a subscription id")
    since = _int_param(request, "since", 0, 0, 2**62)
    limit = _int_param(request, "limit", 100, 1, MAX_CHANGES)
    found = await run_blocking(_deliveries, request.app[ARCHIVE].db, int(raw) if raw else None, status, since, limit)
    return web.json_response({"deliveries": found, "done": len(found) < limit})


def _redeliver(db: Any, message_id: int) -> None:
    """Redeliver an AI delivery (404 for messages of other channels)."""
    outbox.redeliver(db, message_id, channels=(subscriptions.WEBHOOK_CHANNEL, subscriptions.PUSH_CHANNEL))


async def redeliver(request: web.Request) -> web.Response:
    message_id = _id(request)
    await run_blocking(_redeliver, request.app[ARCHIVE].db, message_id)
    return web.json_response({"id": message_id, "status": outbox.PENDING})


async def post_results(request: web.Request) -> web.Response:
    """``POST /api/ai/results``; with ``ai_require_token`` only with a study-scoped token
    (401). That the caller may post to this study is the archive's check (403,
    :func:`ai_hooks.results.submit`, pacs/access.py)."""
    archive = request.app[ARCHIVE]
    claims: tokens.TokenClaims | None = request.get("ai_token")
    if claims is None and archive.settings.ai_require_token:
        raise tokens.unauthorized("a study-scoped token is required")
    parsed = findings_doc.parse(await _json(request))
    record = await run_blocking(results.submit, archive, parsed, caller_of(request))
    return web.json_response(record, status=201, headers={"Location": f"{PREFIX}/results/{record['id']}"})


async def list_results(request: web.Request) -> web.Response:
    since = _int_param(request, "since", 0, 0, 2**62)
    limit = _int_param(request, "limit", 100, 1, MAX_CHANGES)
    found = await run_blocking(results.list_results, request.app[ARCHIVE].db,
                               request.query.get("study_uid", ""), since, limit)
    return web.json_response({"results": found, "done": len(found) < limit})


async def get_result(request: web.Request) -> web.Response:
    return web.json_response(await run_blocking(results.get, request.app[ARCHIVE].db, _id(request)))


def _warm_up_soon() -> None:
    """SR building's one-off set-up, in the background (ai_hooks/sr.py ``warm_up``)."""
    future = asyncio.get_running_loop().run_in_executor(None, sr.warm_up)
    future.add_done_callback(lambda f: f.cancelled() or not f.exception()
                             or log.warning("SR warm-up failed: %s", f.exception()))


async def _warm_up(app: web.Application) -> None:
    """At start, when engines are subscribed (no cost for a PACS without AI)."""
    if await run_blocking(subscriptions.list_all, app[ARCHIVE].db):
        _warm_up_soon()


def _delivery_audit(message: outbox.Message) -> tuple[str, str]:
    """An AI delivery's audit action and study (webhook and push bodies both name it)."""
    return "ai-delivery", str(json.loads(message.body).get("study_uid") or "")


def setup(app: web.Application, archive: Archive | None = None) -> None:
    """Routes, middleware and server hooks (see module doc)."""
    from pacs.server import CONSUMERS, OUTBOX_AUDITED, OUTBOX_ORDERED, OUTBOX_SIGNERS, OUTBOX_TRANSPORTS

    archive = archive or app[ARCHIVE]
    app.router.add_get(PREFIX + "/subscriptions", list_subscriptions)
    app.router.add_post(PREFIX + "/subscriptions", create_subscription)
    app.router.add_get(PREFIX + "/subscriptions/{id}", get_subscription)
    app.router.add_put(PREFIX + "/subscriptions/{id}", put_subscription)
    app.router.add_delete(PREFIX + "/subscriptions/{id}", delete_subscription)
    app.router.add_get(PREFIX + "/deliveries", list_deliveries)
    app.router.add_post(PREFIX + "/deliveries/{id}/redeliver", redeliver)
    app.router.add_post(PREFIX + "/results", post_results)
    app.router.add_get(PREFIX + "/results", list_results)
    app.router.add_get(PREFIX + "/results/{id}", get_result)
    app.middlewares.append(tokens.token_middleware)
    from pacs.auth import TOKEN_VERIFIERS

    if TOKEN_VERIFIERS in app:
        app[TOKEN_VERIFIERS][tokens.PREFIX + "."] = tokens.principal_of
    app.on_startup.append(_warm_up)
    if CONSUMERS in app:
        app[CONSUMERS].append(notify.consumer(archive.db, archive.settings))
        signer = notify.Signer(archive.db, archive.settings.ai_token_ttl_seconds)
        app[OUTBOX_SIGNERS][subscriptions.WEBHOOK_CHANNEL] = signer
        app[OUTBOX_TRANSPORTS][subscriptions.PUSH_CHANNEL] = push.transport(archive)
        app[OUTBOX_ORDERED].append(subscriptions.WEBHOOK_CHANNEL)
        for channel in (subscriptions.WEBHOOK_CHANNEL, subscriptions.PUSH_CHANNEL):
            app[OUTBOX_AUDITED][channel] = _delivery_audit
