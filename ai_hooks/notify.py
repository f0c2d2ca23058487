"""Notifications to AI engines, from the event log, through the outbox.

:func:`consumer` reacts to ``StudyStable``, ``SeriesStable`` and ``MppsCompleted``
(pacs/consumers.py: exactly once per event across processes). For each enabled
subscription whose trigger and filter match, it enqueues in the SAME transaction one
outbox message (pacs/outbox.py): a webhook POST on channel ``ai:<id>`` or a DICOM push
on ``ai-push:<id>`` (ai_hooks/push.py). Webhook channels are delivered in order, one
message at a time (``OutboxSender.ordered``); the HMAC signature is added at send time by
:func:`signer`.

**Not notifying an engine of its own results:** a study becomes stable again after an
engine's SR (or a report) is stored in it. The idempotency key of a study/series
notification holds the number of *acquired* instances (not stored by ``POST
/api/ai/results`` or report signing, not SR/SEG/PR/KO), so a new notification is
enqueued only when new images arrived; repeats collapse to one message.

The notification carries no patient data: UIDs, modalities, body parts, SOP classes,
counts, the study description, DICOMweb URLs and the study-scoped token (docs/ai.md).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import threading
import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, func, select

from pacs import outbox
from pacs.consumers import Consumer
from pacs.events import ChangeEvent, EventType
from pacs.index.db import Database
from pacs.index.models import Instance, Series, Study
from pacs.settings import Settings

from . import tokens
from .models import AISubscription
from .subscriptions import channel, secret_of

TRIGGER_OF = {EventType.STUDY_STABLE.value: "study_stable", EventType.SERIES_STABLE.value: "series_stable",
              EventType.MPPS_COMPLETED.value: "mpps_completed"}
#: Modalities of derived objects (results, reports, annotations): not "new images".
DERIVED_MODALITIES = frozenset({"SR", "SEG", "PR", "KO", "REG"})
#: Ingest sources of derived objects (ai_hooks/results.py, worklist/reports.py).
DERIVED_SOURCES = frozenset({"ai", "report"})
NOTIFICATION_TYPE = "application/json"
SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-PACS-Signature", "X-PACS-Timestamp"
TOKEN_HEADER = "X-PACS-Access-Token"


def facts(conn: Connection, study_uid: str, series_uid: str = "") -> dict[str, Any] | None:
    """What a filter looks at, for a study (or one of its series); None when not held."""
    study = conn.execute(select(Study.id, Study.study_description).where(Study.study_uid == study_uid)).first()
    if study is None:
        return None
    stmt = (select(Series.series_uid, Series.modality, Series.body_part_examined, Instance.sop_class_uid,
                   Instance.calling_ae, Instance.source, func.count(Instance.id))
            .join(Instance, Instance.series_fk == Series.id).where(Series.study_fk == study.id)
            .group_by(Series.series_uid, Series.modality, Series.body_part_examined, Instance.sop_class_uid,
                      Instance.calling_ae, Instance.source))
    if series_uid:
        stmt = stmt.where(Series.series_uid == series_uid)
    out: dict[str, Any] = {"study_description": study.study_description, "series": {}, "modalities": set(),
                           "body_parts": set(), "sop_classes": set(), "calling_aes": set(), "acquired": 0,
                           "instances": 0}
    for uid, modality, body_part, sop_class, calling_ae, source, count in conn.execute(stmt):
        out["series"][uid] = out["series"].get(uid, 0) + count
        out["instances"] += count
        for key, value in (("modalities", modality), ("body_parts", body_part), ("sop_classes", sop_class),
                           ("calling_aes", calling_ae)):
            if value:
                out[key].add(value.upper() if key != "sop_classes" else value)
        if source not in DERIVED_SOURCES and (modality or "").upper() not in DERIVED_MODALITIES:
            out["acquired"] += count
    return out


def matches(flt: dict[str, Any], found: dict[str, Any]) -> bool:
    """Whether a subscription's filter (ai_hooks/subscriptions.py) accepts these facts."""
    for key in ("modalities", "body_parts", "sop_classes", "calling_aes"):
        if flt.get(key) and not set(flt[key]) & found[key]:
            return False
    pattern = flt.get("study_description")
    return not pattern or fnmatch.fnmatchcase(found["study_description"].upper(), pattern.upper())


def dicomweb_base(settings: Settings) -> str:
    """The DICOMweb root engines reach: ``public_base_url``, else built from host and port."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{settings.http_port}/dicom-web"


def results_url(settings: Settings) -> str:
    base = dicomweb_base(settings)
    root = base[: -len("/dicom-web")] if base.endswith("/dicom-web") else base.rsplit("/", 1)[0]
    return f"{root}/api/ai/results"


def notification(event: ChangeEvent, sub: Any, found: dict[str, Any], settings: Settings,
                 token: str, expires: float) -> dict[str, Any]:
    """The webhook body (docs/ai.md "Notification")."""
    base = dicomweb_base(settings)
    study_url = f"{base}/studies/{event.study_uid}"
    series = sorted(found["series"])
    return {
        "event_id": event.id, "event_type": event.type, "subscription": {"id": sub.id, "name": sub.name},
        "study_uid": event.study_uid, "series_uid": event.series_uid or None, "series_uids": series,
        "summary": {"modalities": sorted(found["modalities"]), "body_parts": sorted(found["body_parts"]),
                    "sop_classes": sorted(found["sop_classes"]), "study_description": found["study_description"],
                    "series": len(series), "instances": found["instances"]},
        "dicomweb": {"base": base, "study": study_url, "metadata": f"{study_url}/metadata",
                     "series": {uid: f"{study_url}/series/{uid}" for uid in series}},
        "results_url": results_url(settings),
        "access_token": token, "token_type": "Bearer", "token_expires_at": expires,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _key(sub: Any, event: ChangeEvent, found: dict[str, Any]) -> str:
    """Idempotency key: same images, same key (see module doc)."""
    if event.type == EventType.MPPS_COMPLETED.value:
        return f"ai:{sub.id}:mpps:{event.payload.get('mpps') or event.id}"
    if event.series_uid:
        return f"ai:{sub.id}:series:{event.series_uid}:{found['acquired']}"
    return f"ai:{sub.id}:study:{event.study_uid}:{found['acquired']}"


def _enqueue(conn: Connection, sub: Any, event: ChangeEvent, found: dict[str, Any], settings: Settings,
             key: bytes) -> int | None:
    if sub.delivery == "dicom_push":
        body = json.dumps({"study_uid": event.study_uid, "series_uid": event.series_uid or None,
                           "event_id": event.id})
        return outbox.enqueue(conn, channel=channel(sub.id, sub.delivery), target_url=f"dicom://{sub.ae_title}",
                              body=body, content_type=NOTIFICATION_TYPE, idempotency_key=_key(sub, event, found))
    token, expires = tokens.issue(key, event.study_uid, sub.id, settings.ai_token_ttl_seconds)
    body = json.dumps(notification(event, sub, found, settings, token, expires), separators=(",", ":"))
    return outbox.enqueue(conn, channel=channel(sub.id, sub.delivery), target_url=sub.url, body=body,
                          content_type=NOTIFICATION_TYPE, idempotency_key=_key(sub, event, found))


def consumer(db: Database, settings: Settings) -> Consumer:
    """The event consumer that enqueues notifications (see module doc). The token key is
    read (or created) now: never inside the consumer's write transaction."""
    key = tokens.signing_key(db)

    def handle(conn: Connection, event: ChangeEvent) -> None:
        subs = conn.execute(select(AISubscription).where(AISubscription.enabled.is_(True),
                                                         AISubscription.trigger == TRIGGER_OF[event.type])).all()
        if not subs:
            return
        found = facts(conn, event.study_uid, event.series_uid)
        if found is None:
            return
        if event.type != EventType.MPPS_COMPLETED.value and not found["acquired"]:
            return  # only derived objects (results, reports): nothing for an engine to read
        for sub in subs:
            if matches(json.loads(sub.filter), found):
                _enqueue(conn, sub, event, found, settings, key)

    return Consumer("ai-notifications", frozenset(EventType(t) for t in TRIGGER_OF), handle)


class SubscriptionGone(OSError):
    """The message's subscription was deleted: the delivery is retried, then dead."""


class Signer:
    """Adds ``X-PACS-Timestamp`` (epoch seconds at send time), ``X-PACS-Signature:
    sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under the subscription's secret>`` and
    ``X-PACS-Access-Token``, a study-scoped token minted at send time (the body's token
    dates from the event: a delivery retried or redelivered later would carry an expired
    one). Secrets are cached for a few seconds: the outbox calls this on its event loop."""

    TTL = 5.0

    def __init__(self, db: Database, token_ttl: float = 3600.0) -> None:
        self.db = db
        self.token_ttl = token_ttl
        self._cache: dict[int, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def secret(self, sub_id: int) -> str | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(sub_id)
        if cached is None or now - cached[0] > self.TTL:
            cached = (now, secret_of(self.db, sub_id))
            with self._lock:
                self._cache[sub_id] = cached
        return cached[1]

    def __call__(self, message: outbox.Message) -> dict[str, str]:
        secret = self.secret(int(message.channel.split(":", 1)[1]))
        if not secret:
            raise SubscriptionGone("subscription deleted")
        timestamp = str(int(time.time()))
        headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: "sha256=" + sign(secret, timestamp, message.body)}
        try:
            note = json.loads(message.body)
            headers[TOKEN_HEADER] = tokens.issue(tokens.signing_key(self.db), note["study_uid"],
                                                 int(note["subscription"]["id"]), self.token_ttl)[0]
        except (ValueError, KeyError, TypeError):
            pass  # not a notification of ours: signed, no token
        return headers


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``timestamp + "." + body`` (docs/ai.md "Verifying")."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
