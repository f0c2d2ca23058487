"""The delivery outbox: HTTP messages to other systems (the EMR's FHIR endpoint, AI
engines' webhooks), delivered at least once, with retries, back-off and a dead letter.

A message is *enqueued in the transaction that causes it* (a signed report, a study
becoming stable), so it exists exactly when its cause was committed: nothing is lost when
the receiver is down, nothing is sent for a change that rolled back. Its
``idempotency_key`` is unique: enqueuing the same cause twice keeps one message, and the
key travels in the ``Idempotency-Key`` header so a receiver can drop repeats.

Senders (:mod:`pacs.outbox_worker`) *claim* due messages with a conditional update (the
commitment requests' scheme): of several processes or nodes that see the same due row,
exactly one wins it, for a lease; a process that dies holding a claim leaves the row due
again when the lease ends. After a failed attempt the next one waits
``base × 2^(attempts-1)`` seconds, capped, with ±20 % jitter so that a receiver coming back
is not hit by every sender at once; after ``max_attempts`` the message is ``dead`` (the
dead letter), visible in ``GET /api/outbox`` and redelivered on demand.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from .errors import Conflict, NotFound
from .index import leases
from .index.db import Database
from .index.models import OutboxMessage

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATUSES = (PENDING, DELIVERED, DEAD)
#: Longest wait between two attempts, in seconds.
MAX_BACKOFF = 3600.0
JITTER = 0.2


@dataclass(frozen=True)
class Message:
    """A claimed message, ready to send."""

    id: int
    channel: str
    target_url: str
    method: str
    content_type: str
    headers: dict[str, str]
    body: bytes
    idempotency_key: str
    attempts: int


def enqueue(conn: Connection, *, channel: str, target_url: str, body: bytes | str, content_type: str,
            idempotency_key: str, headers: dict[str, str] | None = None, method: str = "POST",
            now: float | None = None) -> int | None:
    """Add a message in the caller's transaction; None when its idempotency key is already
    queued (the same cause enqueued twice). ``channel`` groups messages for listing
    (e.g. ``fhir``, ``ai:<subscription>``); ``method`` is POST or PUT."""
    if method not in ("POST", "PUT"):
        raise ValueError(f"unsupported outbox method {method}")
    data = body.encode("utf-8") if isinstance(body, str) else body
    values = dict(channel=channel[:64], target_url=target_url, method=method, content_type=content_type[:128],
                  headers=json.dumps(headers or {}), body=data, idempotency_key=idempotency_key[:128],
                  status=PENDING, attempts=0, next_attempt_at=time.time() if now is None else now,
                  created_at=time.time(), last_error="", last_status=None)
    savepoint = conn.begin_nested()
    try:
        row_id = conn.execute(insert(OutboxMessage).values(**values).returning(OutboxMessage.id)).scalar_one()
    except IntegrityError:
        savepoint.rollback()
        return None
    savepoint.commit()
    return int(row_id)


def _fifo(prefixes: tuple[str, ...]) -> Any:
    """Condition: a message of a channel starting with one of ``prefixes`` waits while an
    older message of the same channel is pending (per-channel delivery in order, e.g. an AI
    engine's notifications); other channels are not held back."""
    older = aliased(OutboxMessage)
    head = ~exists().where(older.channel == OutboxMessage.channel, older.status == PENDING,
                           older.id < OutboxMessage.id)
    return or_(and_(*(~OutboxMessage.channel.startswith(p, autoescape=True) for p in prefixes)), head)


def claim_due(db: Database, now: float, lease_seconds: float, limit: int = 20,
              ordered: tuple[str, ...] = ()) -> list[Message]:
    """Claim up to ``limit`` due pending messages for ``lease_seconds`` (see module doc).
    Channels starting with one of ``ordered`` are delivered one message at a time, oldest
    first (:func:`_fifo`)."""
    rows = leases.claim_due(db, OutboxMessage, now, lease_seconds, limit, [_fifo(ordered)] if ordered else [])
    return [Message(row.id, row.channel, row.target_url, row.method, row.content_type,
                    json.loads(row.headers), bytes(row.body), row.idempotency_key, row.attempts) for row in rows]


def _settle(db: Database, message: Message, **values: Any) -> bool:
    """Update a message we claimed, only if it is still ours (pacs/index/leases.py)."""
    return leases.settle(db, OutboxMessage, message.id, message.attempts, **values)


def mark_delivered(db: Database, message: Message, http_status: int, now: float | None = None) -> bool:
    return _settle(db, message, status=DELIVERED, last_status=http_status, last_error="",
                   delivered_at=time.time() if now is None else now)


def backoff(attempts: int, base: float, rng: random.Random | None = None) -> float:
    """Seconds before the attempt after ``attempts`` failed ones: exponential, capped,
    with ±20 % jitter."""
    delay = min(MAX_BACKOFF, base * 2 ** max(0, attempts - 1))
    return delay * (1 + JITTER * (2 * (rng or random).random() - 1))


def mark_failed(db: Database, message: Message, error: str, *, max_attempts: int, base_delay: float,
                http_status: int | None = None, now: float | None = None) -> str:
    """Record a failed attempt: retry later, or dead when attempts are used up. Returns the
    new status (or "" when the claim was lost meanwhile)."""
    now = time.time() if now is None else now
    if message.attempts >= max_attempts:
        done = _settle(db, message, status=DEAD, last_error=error[:512], last_status=http_status)
        return DEAD if done else ""
    done = _settle(db, message, next_attempt_at=now + backoff(message.attempts, base_delay),
                   last_error=error[:512], last_status=http_status)
    return PENDING if done else ""


def redeliver(db: Database, message_id: int, *, channels: tuple[str, ...] = ("",),
              now: float | None = None) -> None:
    """A dead (or delivered) message goes back to pending with its attempts reset.
    :class:`~pacs.errors.NotFound` when there is no such message on a channel starting
    with one of ``channels``, :class:`~pacs.errors.Conflict` while it is still pending."""
    with db.write() as conn:
        row = conn.execute(select(OutboxMessage.channel, OutboxMessage.status)
                           .where(OutboxMessage.id == message_id)).first()
        if row is None or not row.channel.startswith(channels):
            raise NotFound(f"no outbox message {message_id}")
        if row.status == PENDING:
            raise Conflict(f"message {message_id} is still pending")
        conn.execute(update(OutboxMessage).where(OutboxMessage.id == message_id)
                     .values(status=PENDING, attempts=0, next_attempt_at=time.time() if now is None else now))


def list_messages(db: Database, *, channel: str | None = None, status: str | None = None,
                  since: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Messages with id > ``since``, oldest first, without their bodies (for operators)."""
    stmt = select(OutboxMessage).where(OutboxMessage.id > since)
    if channel:
        stmt = stmt.where(OutboxMessage.channel == channel)
    if status:
        stmt = stmt.where(OutboxMessage.status == status)
    with db.read() as conn:
        rows = conn.execute(stmt.order_by(OutboxMessage.id).limit(limit)).all()
    return [{"id": r.id, "channel": r.channel, "method": r.method, "target_url": r.target_url, "status": r.status,
             "attempts": r.attempts, "next_attempt_at": r.next_attempt_at, "last_status": r.last_status,
             "last_error": r.last_error, "idempotency_key": r.idempotency_key,
             "created_at": r.created_at, "delivered_at": r.delivered_at} for r in rows]


def next_due(db: Database) -> float | None:
    """Epoch time of the earliest pending attempt, or None when nothing is pending."""
    return leases.next_due(db, OutboxMessage)
