"""AI engine subscriptions: which studies an engine wants, when, and how it gets them.

A subscription (``/api/ai/subscriptions``, ai_hooks/web.py) is::

    {"name": "chest-triage",
     "trigger": "study_stable" | "series_stable" | "mpps_completed",
     "filter": {"modalities": ["CR", "DX"], "body_parts": ["CHEST"], "sop_classes": [uid, ...],
                "study_description": "*CHEST*", "calling_aes": ["XRAY1"]},
     "delivery": {"type": "webhook", "url": "https://engine/notify", "secret": "..."}
               | {"type": "dicom_push", "ae_title": "AI_SCP"},
     "deidentify": false,
     "enabled": true}

Each filter list matches when any of its values is present in the study (or the series,
for ``series_stable``); ``study_description`` is a case-insensitive shell pattern
(``*``, ``?``); an empty or absent criterion matches anything. A webhook secret is
generated when none is given and returned once, by the creation. A ``dicom_push`` AE
must be in the AE registry (``pacs ae add``, ``/api/aes``). ``deidentify`` (``dicom_push``
only) sends every instance de-identified by the PS3.15 E.1 Basic Application Level
Confidentiality Profile (:mod:`pacs.deidentify`); a webhook engine asks for that itself,
by retrieving with ``?deidentify=basic``.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from pacs import outbox
from pacs.aes import get_ae
from pacs.errors import Conflict, InvalidQuery, NotFound
from pacs.index.db import Database
from pacs.index.models import OutboxMessage

from .models import AISubscription

TRIGGERS = ("study_stable", "series_stable", "mpps_completed")
DELIVERIES = ("webhook", "dicom_push")
FILTER_LISTS = ("modalities", "body_parts", "sop_classes", "calling_aes")
WEBHOOK_CHANNEL, PUSH_CHANNEL = "ai:", "ai-push:"
MAX_LIST = 64


def channel(sub_id: int, delivery: str) -> str:
    """The outbox channel of a subscription's deliveries."""
    return f"{WEBHOOK_CHANNEL if delivery == 'webhook' else PUSH_CHANNEL}{sub_id}"


def _strings(value: Any, name: str, upper: bool) -> list[str]:
    ok = isinstance(value, list) and len(value) <= MAX_LIST and all(
        isinstance(v, str) and 0 < len(v.strip()) <= 64 for v in value)
    if not ok:
        raise InvalidQuery(f"filter.{name} must be a list of at most {MAX_LIST} non-empty strings")
    return [v.strip().upper() if upper else v.strip() for v in value]


def parse_filter(value: Any) -> dict[str, Any]:
    """A validated filter (see module doc)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {*FILTER_LISTS, "study_description"}:
        raise InvalidQuery(f"filter must be an object with {', '.join(FILTER_LISTS)}, study_description")
    parsed: dict[str, Any] = {}
    for name in FILTER_LISTS:
        if value.get(name):
            parsed[name] = _strings(value[name], name, upper=name != "sop_classes")
    pattern = value.get("study_description")
    if pattern:
        if not isinstance(pattern, str) or len(pattern) > 64:
            raise InvalidQuery("filter.study_description must be a pattern of at most 64 characters")
        parsed["study_description"] = pattern
    return parsed


def _delivery(db: Database, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or value.get("type") not in DELIVERIES:
        raise InvalidQuery('delivery must be {"type": "webhook", "url", "secret"?} or '
                           '{"type": "dicom_push", "ae_title"}')
    if value["type"] == "webhook":
        url, secret = value.get("url"), value.get("secret") or secrets.token_urlsafe(32)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
            raise InvalidQuery("delivery.url must be an http:// or https:// URL")
        if not isinstance(secret, str) or not 16 <= len(secret) <= 128:
            raise InvalidQuery("delivery.secret must be 16-128 characters")
        return {"delivery": "webhook", "url": url, "secret": secret, "ae_title": ""}
    title = value.get("ae_title")
    if not isinstance(title, str) or not title.strip() or get_ae(db, title.strip()) is None:
        raise InvalidQuery("delivery.ae_title must name an AE of the registry (pacs ae add, /api/aes)")
    return {"delivery": "dicom_push", "url": "", "secret": "", "ae_title": title.strip()}


def _values(db: Database, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidQuery("body must be a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 64:
        raise InvalidQuery("name must be 1-64 characters")
    trigger = body.get("trigger", "study_stable")
    if trigger not in TRIGGERS:
        raise InvalidQuery(f"trigger must be one of {', '.join(TRIGGERS)}")
    enabled, deidentify = body.get("enabled", True), body.get("deidentify", False)
    if not isinstance(enabled, bool) or not isinstance(deidentify, bool):
        raise InvalidQuery("enabled and deidentify must be true or false")
    delivery = _delivery(db, body.get("delivery"))
    if deidentify and delivery["delivery"] != "dicom_push":
        raise InvalidQuery("deidentify applies to dicom_push deliveries; a webhook engine retrieves "
                           "with ?deidentify=basic (PS3.15 E.1 Basic Application Level Confidentiality Profile)")
    return {"name": name.strip(), "trigger": trigger, "filter": json.dumps(parse_filter(body.get("filter"))),
            "enabled": enabled, "deidentify": deidentify, **delivery}


def as_json(row: Any, with_secret: bool = False) -> dict[str, Any]:
    delivery: dict[str, Any] = {"type": row.delivery}
    if row.delivery == "webhook":
        delivery["url"] = row.url
        if with_secret:
            delivery["secret"] = row.secret
    else:
        delivery["ae_title"] = row.ae_title
    return {"id": row.id, "name": row.name, "trigger": row.trigger, "filter": json.loads(row.filter),
            "delivery": delivery, "deidentify": bool(row.deidentify), "enabled": row.enabled, "channel": channel(row.id, row.delivery),
            "created_at": row.created_at, "updated_at": row.updated_at}


def get(db: Database, sub_id: int, with_secret: bool = False) -> dict[str, Any]:
    with db.read() as conn:
        row = conn.execute(select(AISubscription).where(AISubscription.id == sub_id)).first()
    if row is None:
        raise NotFound(f"no AI subscription {sub_id}")
    return as_json(row, with_secret)


def list_all(db: Database) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(select(AISubscription).order_by(AISubscription.id)).all()
    return [as_json(r) for r in rows]


def create(db: Database, body: Any) -> dict[str, Any]:
    """A new subscription, with its webhook secret (the only answer that shows it)."""
    values, now = _values(db, body), time.time()
    try:
        with db.write() as conn:
            sub_id = conn.execute(insert(AISubscription).values(**values, created_at=now, updated_at=now)
                                  .returning(AISubscription.id)).scalar_one()
    except IntegrityError:
        raise Conflict(f"an AI subscription named {values['name']} exists") from None
    return get(db, int(sub_id), with_secret=True)


def replace(db: Database, sub_id: int, body: Any) -> dict[str, Any]:
    """Replace a subscription's definition (a webhook keeps its secret unless one is given)."""
    old = get(db, sub_id, with_secret=True)
    if isinstance(body, dict) and isinstance(body.get("delivery"), dict) and body["delivery"].get("type") == "webhook":
        body["delivery"].setdefault("secret", old["delivery"].get("secret"))
    values = _values(db, body)
    try:
        with db.write() as conn:
            conn.execute(update(AISubscription).where(AISubscription.id == sub_id)
                         .values(**values, updated_at=time.time()))
    except IntegrityError:
        raise Conflict(f"an AI subscription named {values['name']} exists") from None
    return get(db, sub_id)


def remove(db: Database, sub_id: int) -> None:
    """Delete a subscription; its pending deliveries become dead ("subscription deleted")."""
    sub = get(db, sub_id)
    with db.write() as conn:
        conn.execute(update(OutboxMessage).where(OutboxMessage.channel == sub["channel"],
                                                 OutboxMessage.status == outbox.PENDING)
                     .values(status=outbox.DEAD, last_error="subscription deleted"))
        conn.execute(delete(AISubscription).where(AISubscription.id == sub_id))


def deidentify_of(db: Database, sub_id: int) -> bool | None:
    """Whether a subscription's deliveries are de-identified; None when it is gone."""
    with db.read() as conn:
        found = conn.execute(select(AISubscription.deidentify).where(AISubscription.id == sub_id)).scalar()
    return None if found is None else bool(found)


def secret_of(db: Database, sub_id: int) -> str | None:
    with db.read() as conn:
        return conn.execute(select(AISubscription.secret).where(AISubscription.id == sub_id)).scalar()
