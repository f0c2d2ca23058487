"""Leased claims on retried work rows (storage commitment reports, outbox messages).

A row has ``id``, ``status`` (``pending`` while work remains), ``attempts`` and
``next_attempt_at``. :func:`claim_due` claims due rows with ``UPDATE .. SET attempts =
attempts + 1, next_attempt_at = now + lease WHERE id = ? AND status = 'pending' AND
attempts = <seen>``: of several processes or nodes that saw the same row, exactly one
updates it. A process that dies holding a claim leaves the row due again when the lease
ends. :func:`settle` changes a claimed row only while it is still that claim.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import ColumnElement, Row, and_, func, select, update

from .db import Database

PENDING = "pending"


def claim_due(db: Database, model: Any, now: float, lease_seconds: float, limit: int,
              where: Iterable[ColumnElement[bool]] = ()) -> list[Row[Any]]:
    """Claim up to ``limit`` due pending rows of ``model`` (oldest due first) for
    ``lease_seconds``; the claimed rows, as they are after the claim."""
    with db.read() as conn:
        seen = conn.execute(
            select(model.id, model.attempts)
            .where(model.status == PENDING, model.next_attempt_at <= now, *where)
            .order_by(model.next_attempt_at, model.id).limit(limit)
        ).all()
    claimed = []
    for row_id, attempts in seen:
        with db.write() as conn:
            won = conn.execute(
                update(model).where(and_(model.id == row_id, model.status == PENDING, model.attempts == attempts))
                .values(attempts=attempts + 1, next_attempt_at=now + lease_seconds)
            ).rowcount
            if won == 1:
                claimed.append(conn.execute(select(model).where(model.id == row_id)).one())
    return claimed


def settle(db: Database, model: Any, row_id: int, attempts: int, **values: Any) -> bool:
    """Update a row we claimed, only if it is still ours (same attempt count, pending)."""
    with db.write() as conn:
        return conn.execute(
            update(model).where(and_(model.id == row_id, model.status == PENDING, model.attempts == attempts))
            .values(**values)
        ).rowcount == 1


def next_due(db: Database, model: Any) -> float | None:
    """Epoch time of the earliest pending attempt, or None when nothing is pending."""
    with db.read() as conn:
        value = conn.execute(select(func.min(model.next_attempt_at)).where(model.status == PENDING)).scalar()
    return None if value is None else float(value)
