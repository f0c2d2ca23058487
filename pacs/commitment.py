"""Storage commitment requests in the index (PS3.4 J.3): record, claim, evaluate, settle.

A Storage Commitment Push Model request (N-ACTION, PS3.4 J.3.2) becomes one
``commitment_request`` row, ``pending``. A worker in any server process claims due rows
with a compare-and-set ``UPDATE`` (so two processes sharing one database never both
report one transaction), evaluates each referenced instance against the index and sends
the result (N-EVENT-REPORT, PS3.4 J.3.3); the row ends ``sent``, or ``failed`` after the
last attempt. The DIMSE side lives in :mod:`pacs.dimse.commitment`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from sqlalchemy import insert, select

from .index import leases
from .index.db import Database
from .index.models import CommitmentRequest, Instance

PENDING, SENT, FAILED = "pending", "sent", "failed"

#: Failure Reason (0008,1197) values, PS3.3 C.14.1.1.
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

_LOOKUP_CHUNK = 500


@dataclass(frozen=True)
class ClaimedRequest:
    """A request this process now owns until it settles it (or the lease runs out)."""

    id: int
    transaction_uid: str
    calling_ae: str
    items: list[tuple[str, str]]
    attempts: int  # including the one just claimed


@dataclass
class CommitmentResult:
    """Per referenced instance: committed, or failed with a Failure Reason."""

    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)


def record_request(
    db: Database, transaction_uid: str, calling_ae: str, items: Sequence[tuple[str, str]],
    now: float | None = None,
) -> tuple[int, bool]:
    """Store a validated request; returns (row id, created).

    A re-sent N-ACTION (same Transaction UID and calling AE) while the first is still
    pending creates nothing: one report answers both.
    """
    now = time.time() if now is None else now
    with db.write() as conn:
        existing = conn.execute(
            select(CommitmentRequest.id).where(
                CommitmentRequest.transaction_uid == transaction_uid,
                CommitmentRequest.calling_ae == calling_ae,
                CommitmentRequest.status == PENDING,
            )
        ).scalar()
        if existing is not None:
            return int(existing), False
        row_id = conn.execute(
            insert(CommitmentRequest).values(
                transaction_uid=transaction_uid, calling_ae=calling_ae, requested_at=now,
                items=json.dumps([list(item) for item in items]), status=PENDING, attempts=0,
                next_attempt_at=now, last_error="",
            ).returning(CommitmentRequest.id)
        ).scalar_one()
    return int(row_id), True


def claim_due(db: Database, now: float, lease_seconds: float, limit: int = 20) -> list[ClaimedRequest]:
    """Claim up to ``limit`` due pending requests for ``lease_seconds`` (pacs/index/leases.py)."""
    return [ClaimedRequest(row.id, row.transaction_uid, row.calling_ae,
                           [(str(c), str(i)) for c, i in json.loads(row.items)], row.attempts)
            for row in leases.claim_due(db, CommitmentRequest, now, lease_seconds, limit)]


def next_due(db: Database) -> float | None:
    """Epoch time of the earliest pending attempt, or None when nothing is pending."""
    return leases.next_due(db, CommitmentRequest)


def evaluate(db: Database, items: Iterable[tuple[str, str]]) -> CommitmentResult:
    """Which referenced instances the archive holds with that SOP class (committed);
    the others fail with 0x0112 (not held) or 0x0119 (held under another SOP class)."""
    items = list(items)
    held: dict[str, str] = {}
    uids = sorted({sop for _, sop in items})
    with db.read() as conn:
        for start in range(0, len(uids), _LOOKUP_CHUNK):
            chunk = uids[start:start + _LOOKUP_CHUNK]
            held.update(conn.execute(
                select(Instance.sop_instance_uid, Instance.sop_class_uid)
                .where(Instance.sop_instance_uid.in_(chunk))
            ).all())
    result = CommitmentResult()
    for sop_class, sop in items:
        if sop not in held:
            result.failed.append((sop_class, sop, NO_SUCH_OBJECT_INSTANCE))
        elif held[sop] != sop_class:
            result.failed.append((sop_class, sop, CLASS_INSTANCE_CONFLICT))
        else:
            result.committed.append((sop_class, sop))
    return result


def _settle(db: Database, row_id: int, attempts: int, **values: object) -> bool:
    return leases.settle(db, CommitmentRequest, row_id, attempts, **values)


def mark_sent(db: Database, request: ClaimedRequest) -> bool:
    return _settle(db, request.id, request.attempts, status=SENT, last_error="")


def mark_failed(db: Database, request: ClaimedRequest, error: str) -> bool:
    return _settle(db, request.id, request.attempts, status=FAILED, last_error=error[:256])


def schedule_retry(db: Database, request: ClaimedRequest, error: str, when: float) -> bool:
    return _settle(db, request.id, request.attempts, next_attempt_at=when, last_error=error[:256])


def get_request(db: Database, transaction_uid: str) -> dict[str, object] | None:
    """The newest row for a Transaction UID, as a dict (for operators and tests)."""
    with db.read() as conn:
        row = conn.execute(
            select(CommitmentRequest).where(CommitmentRequest.transaction_uid == transaction_uid)
            .order_by(CommitmentRequest.id.desc()).limit(1)
        ).first()
    if row is None:
        return None
    return {"id": row.id, "transaction_uid": row.transaction_uid, "calling_ae": row.calling_ae,
            "status": row.status, "attempts": row.attempts, "next_attempt_at": row.next_attempt_at,
            "last_error": row.last_error, "items": [tuple(i) for i in json.loads(row.items)]}
