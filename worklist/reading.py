"""The radiologists' reading worklist: which studies wait to be read, in what order, and
who is reading them.

A study **enters** when the event log says it is complete: ``StudyStable`` (no new
instance for the quiet period) or ``MppsCompleted`` (the modality said so, sooner). The
:data:`CONSUMER` applies those events exactly once (pacs/consumers.py). Its priority
comes from the order (the worklist item with the same Study Instance UID, Requested
Procedure Priority STAT/HIGH/...), else routine; AI findings may raise it
(:func:`raise_priority`). A study that enters again (new images after stability) keeps
its state and assignment; its counts are refreshed.

**Claiming** is a compare-and-set on the row: of two radiologists clicking at once,
exactly one gets the study. Until the security issue brings authenticated users, the
radiologist is named in the request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, insert, literal, select, update

from pacs.consumers import Consumer
from pacs.errors import Conflict, InvalidQuery, NotFound
from pacs.events import ChangeEvent, EventType
from pacs.index.db import Database
from pacs.index.models import Patient, Study

from .models import WorklistItem
from .reading_models import ORDER_PRIORITY_RANK, PRIORITY_LABELS, STATES, ReadingItem

#: States from which a study can be claimed, and in which it counts as being read.
CLAIMABLE = ("unread",)
IN_HAND = ("claimed", "preliminary")
MAX_LIMIT = 1000


def _order_priority(conn: Connection, study_uid: str) -> tuple[int, str]:
    """Rank and reason from the order that pre-assigned this Study Instance UID."""
    priority = conn.execute(select(WorklistItem.priority).where(WorklistItem.study_uid == study_uid)).scalar()
    if not priority:
        return 3, ""
    return ORDER_PRIORITY_RANK.get(priority.upper(), 3), f"order: {priority.upper()}"


def _study_facts(conn: Connection, study_uid: str) -> dict[str, Any] | None:
    """What the list shows of a held study, from the index (None when not held)."""
    row = conn.execute(
        select(Study.accession_number, Study.study_date, Study.study_description,
               Study.modalities, Study.num_instances, Patient.patient_id, Patient.patient_name)
        .join(Patient, Patient.id == Study.patient_fk).where(Study.study_uid == study_uid)
    ).first()
    if row is None:
        return None
    return dict(patient_id=row.patient_id, patient_name=row.patient_name, accession_number=row.accession_number,
                study_date=row.study_date, study_description=row.study_description, modalities=row.modalities,
                num_instances=row.num_instances, updated_at=time.time())


def _insert_item(conn: Connection, study_uid: str, facts: dict[str, Any], entered_by: str,
                 priority: tuple[int, str] | None = None) -> None:
    rank, reason = priority or _order_priority(conn, study_uid)
    conn.execute(insert(ReadingItem).values(study_uid=study_uid, state="unread", priority=rank,
                                            priority_reason=reason, assigned_to="", entered_by=entered_by,
                                            entered_at=time.time(), **facts))


def enter_study(conn: Connection, event: ChangeEvent) -> None:
    """Put the event's study on the worklist, or refresh it (see module doc)."""
    facts = _study_facts(conn, event.study_uid)
    if facts is None:  # deleted meanwhile
        return
    updated = conn.execute(update(ReadingItem).where(ReadingItem.study_uid == event.study_uid).values(**facts))
    if not updated.rowcount:
        _insert_item(conn, event.study_uid, facts, event.type)


CONSUMER = Consumer("reading-worklist", frozenset({EventType.STUDY_STABLE, EventType.MPPS_COMPLETED}), enter_study)


@dataclass(frozen=True)
class Filters:
    """List filters; empty means any."""

    state: str = ""
    modality: str = ""
    priority: int | None = None
    date_from: str = ""
    date_to: str = ""
    assigned_to: str = ""
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if self.state and self.state not in STATES:
            raise InvalidQuery(f"state must be one of {', '.join(STATES)}")
        if self.priority is not None and self.priority not in PRIORITY_LABELS:
            raise InvalidQuery("priority must be 1 (STAT), 2 (URGENT) or 3 (ROUTINE)")
        for name in ("date_from", "date_to"):
            value = getattr(self, name)
            if value and not (len(value) == 8 and value.isdigit()):
                raise InvalidQuery(f"{name} must be a date YYYYMMDD")
        if not 1 <= self.limit <= MAX_LIMIT or self.offset < 0:
            raise InvalidQuery(f"limit must be 1-{MAX_LIMIT} and offset non-negative")


def as_json(item: Any) -> dict[str, Any]:
    return {"study_uid": item.study_uid, "state": item.state, "priority": item.priority,
            "priority_label": PRIORITY_LABELS.get(item.priority, "ROUTINE"),
            "priority_reason": item.priority_reason, "assigned_to": item.assigned_to,
            "claimed_at": item.claimed_at, "patient_id": item.patient_id, "patient_name": item.patient_name,
            "accession_number": item.accession_number, "study_date": item.study_date,
            "study_description": item.study_description,
            "modalities": [m for m in item.modalities.split("\\") if m],
            "num_instances": item.num_instances, "entered_by": item.entered_by, "entered_at": item.entered_at}


def list_items(db: Database, filters: Filters) -> tuple[list[dict[str, Any]], int]:
    """The page of items matching ``filters`` (most urgent first, then oldest) and the
    total number of matches."""
    conditions = []
    if filters.state:
        conditions.append(ReadingItem.state == filters.state)
    if filters.modality:  # ModalitiesInStudy is stored backslash-joined
        m = filters.modality.upper()
        conditions.append((literal("\\") + ReadingItem.modalities + "\\").contains(f"\\{m}\\", autoescape=True))
    if filters.priority is not None:
        conditions.append(ReadingItem.priority == filters.priority)
    if filters.date_from:
        conditions.append(ReadingItem.study_date >= filters.date_from)
    if filters.date_to:
        conditions.append(ReadingItem.study_date <= filters.date_to)
    if filters.assigned_to:
        conditions.append(ReadingItem.assigned_to == filters.assigned_to)
    where = and_(True, *conditions)
    with db.read() as conn:
        total = conn.execute(select(func.count(ReadingItem.id)).where(where)).scalar_one()
        rows = conn.execute(
            select(ReadingItem).where(where)
            .order_by(ReadingItem.priority, ReadingItem.entered_at, ReadingItem.id)
            .limit(filters.limit).offset(filters.offset)
        ).all()
    return [as_json(r) for r in rows], int(total)


def get_item(db: Database, study_uid: str) -> dict[str, Any]:
    with db.read() as conn:
        row = conn.execute(select(ReadingItem).where(ReadingItem.study_uid == study_uid)).first()
    if row is None:
        raise NotFound(f"study {study_uid} is not on the reading worklist")
    return as_json(row)


def radiologist_name(name: str) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name or len(name) > 64:
        raise InvalidQuery("radiologist must be a name of 1-64 characters")
    return name


def claim(db: Database, study_uid: str, radiologist: str) -> dict[str, Any]:
    """``unread`` → ``claimed`` by ``radiologist``; claiming one's own claim again is a
    no-op. 409 when someone else holds it or it is already reported."""
    who = radiologist_name(radiologist)
    with db.write() as conn:
        won = conn.execute(
            update(ReadingItem).where(ReadingItem.study_uid == study_uid, ReadingItem.state.in_(CLAIMABLE))
            .values(state="claimed", assigned_to=who, claimed_at=time.time(), updated_at=time.time())
        ).rowcount
    item = get_item(db, study_uid)
    if not won and not (item["state"] in IN_HAND and item["assigned_to"] == who):
        raise Conflict(f"study is {item['state']}" + (f" by {item['assigned_to']}" if item["assigned_to"] else ""))
    return item


def release(db: Database, study_uid: str, radiologist: str) -> dict[str, Any]:
    """``claimed`` → ``unread``, by the radiologist who claimed it (409 otherwise). A study
    with a preliminary report stays with its author."""
    who = radiologist_name(radiologist)
    with db.write() as conn:
        done = conn.execute(
            update(ReadingItem).where(ReadingItem.study_uid == study_uid, ReadingItem.state == "claimed",
                                      ReadingItem.assigned_to == who)
            .values(state="unread", assigned_to="", claimed_at=None, updated_at=time.time())
        ).rowcount
    item = get_item(db, study_uid)
    if not done:
        raise Conflict(f"study is {item['state']}" + (f" by {item['assigned_to']}" if item["assigned_to"] else "")
                       + f", not claimed by {who}")
    return item


def raise_priority(conn: Connection, study_uid: str, rank: int, reason: str) -> bool:
    """Move a study up to ``rank`` (never down) with ``reason``, e.g. an AI's critical
    finding; in the caller's transaction. A held study not on the list yet (not stable)
    enters it at once with that priority: a critical finding must not wait for the quiet
    period. False when the study is not held or already at that rank or higher."""
    moved = conn.execute(
        update(ReadingItem).where(ReadingItem.study_uid == study_uid, ReadingItem.priority > rank)
        .values(priority=rank, priority_reason=reason[:256], updated_at=time.time())
    ).rowcount == 1
    if moved or conn.execute(select(ReadingItem.id).where(ReadingItem.study_uid == study_uid)).first():
        return moved
    facts = _study_facts(conn, study_uid)
    if facts is None:
        return False
    _insert_item(conn, study_uid, facts, "priority", (rank, reason[:256]))
    return True
