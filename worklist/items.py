"""Scheduled procedure steps: validation, storage, JSON (the ``/api/worklist/items`` resource).

An item as JSON (every field a string unless noted)::

    {"id": 1 (int), "status": "SCHEDULED", "priority": "ROUTINE",
     "patient_id", "issuer_of_patient_id", "patient_name" (DICOM PN, "DOE^JOHN"),
     "patient_birth_date" ("YYYY-MM-DD"), "patient_sex" (M/F/O),
     "accession_number", "referring_physician_name",
     "requested_procedure_id", "requested_procedure_description",
     "requested_procedure_code": {"code", "scheme", "meaning"} or null,
     "modality", "scheduled_station_ae", "scheduled_station_name",
     "scheduled_start" ("YYYY-MM-DDTHH:MM:SS", the modality's local time),
     "performing_physician_name", "step_id", "step_description",
     "study_instance_uid", "mpps_uid", "created_at", "updated_at"}

Lengths and characters follow the DICOM attribute each field becomes (PS3.5 6.2: SH 16,
LO 64, PN 64 per component group, AE 16, CS 16, UI 64). Bad input raises
:class:`InvalidWorklistItem` (400) naming every problem; nothing is stored.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Mapping

from pydicom.uid import generate_uid
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from pacs.errors import Conflict, NotFound, PacsError
from pacs.events import EventType, append_event
from pacs.index.db import Database
from pacs.index.names import normalise_pn, normalise_time
from pacs.uids import lenient_uid

from .models import FINAL_STATUSES, PRIORITIES, STATUSES, WorklistItem

#: JSON field -> (column, kind, maximum length).
FIELDS: dict[str, tuple[str, str, int]] = {
    "patient_id": ("patient_id", "text", 64),
    "issuer_of_patient_id": ("issuer_of_patient_id", "text", 64),
    "patient_name": ("patient_name", "pn", 64),
    "patient_birth_date": ("patient_birth_date", "date", 8),
    "patient_sex": ("patient_sex", "sex", 1),
    "accession_number": ("accession_number", "text", 16),
    "referring_physician_name": ("referring_physician_name", "pn", 64),
    "requested_procedure_id": ("requested_procedure_id", "text", 16),
    "requested_procedure_description": ("requested_procedure_description", "text", 64),
    "requested_procedure_code": ("", "code", 64),
    "modality": ("modality", "cs", 16),
    "scheduled_station_ae": ("station_ae", "ae", 16),
    "scheduled_station_name": ("station_name", "text", 16),
    "scheduled_start": ("", "datetime", 0),
    "performing_physician_name": ("performing_physician_name", "pn", 64),
    "step_id": ("step_id", "text", 16),
    "step_description": ("step_description", "text", 64),
    "study_instance_uid": ("study_uid", "uid", 64),
    "priority": ("priority", "priority", 16),
    "status": ("status", "status", 16),
}
REQUIRED = ("patient_id", "modality", "scheduled_start")
#: Normalised copies kept next to person names (matching, :mod:`pacs.index.names`).
NORMALISED = {"patient_name": "patient_name_norm", "referring_physician_name": "referring_physician_norm",
              "performing_physician_name": "performing_physician_norm"}
_CS = re.compile(r"^[A-Z0-9_ ]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


class InvalidWorklistItem(PacsError):
    """The item is not valid (400); ``reasons`` lists every problem."""

    dimse_status = 0xA900
    http_status = 400

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def _text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    if _CONTROL.search(value):
        raise ValueError(f"{name} must not contain control characters or backslashes")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    return value.strip()


def _pn(name: str, value: Any, limit: int) -> str:
    text = _text(name, value, limit * 3 + 2)
    if any(len(group) > limit for group in text.split("=")):
        raise ValueError(f"{name}: each component group is at most {limit} characters")
    if any(len(group.split("^")) > 5 for group in text.split("=")):
        raise ValueError(f"{name}: at most 5 components (family^given^middle^prefix^suffix)")
    return text


def _date(name: str, value: Any) -> str:
    text = _text(name, value, 10)
    if not text:
        return ""
    try:
        parsed = date.fromisoformat(text) if "-" in text else datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"{name} must be a date YYYY-MM-DD") from None
    return parsed.strftime("%Y%m%d")


def parse_start(name: str, value: Any) -> tuple[str, str]:
    """(DA, normalised TM) from an ISO 8601 date-time; an offset converts to local time."""
    text = _text(name, value, 40)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 date-time (YYYY-MM-DDTHH:MM[:SS])") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone().replace(tzinfo=None)
    return moment.strftime("%Y%m%d"), normalise_time(moment.strftime("%H%M%S"))


def _code(name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {"procedure_code_value": "", "procedure_code_scheme": "", "procedure_code_meaning": ""}
    if not isinstance(value, dict) or set(value) - {"code", "scheme", "meaning"}:
        raise ValueError(f"{name} must be an object with code, scheme and meaning")
    code = _text(f"{name}.code", value.get("code", ""), 64)
    scheme = _text(f"{name}.scheme", value.get("scheme", ""), 16)
    meaning = _text(f"{name}.meaning", value.get("meaning", ""), 64)
    if not code or not scheme:
        raise ValueError(f"{name} needs code and scheme")
    return {"procedure_code_value": code, "procedure_code_scheme": scheme, "procedure_code_meaning": meaning}


def _enumerated(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = _text(name, value, 16).upper()
    if text not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}")
    return text


def _field(name: str, kind: str, limit: int, value: Any) -> dict[str, str]:
    """Column values of one JSON field; raises ValueError with the reason."""
    column = FIELDS[name][0]
    if kind == "datetime":
        start_date, start_time = parse_start(name, value)
        return {"start_date": start_date, "start_time": start_time}
    if kind == "code":
        return _code(name, value)
    if value is None:
        value = ""
    if kind == "pn":
        text = _pn(name, value, limit)
        return {column: text, NORMALISED[name]: normalise_pn(text)}
    if kind == "date":
        return {column: _date(name, value)}
    if kind == "sex":
        return {column: _enumerated(name, value, ("M", "F", "O", "")) if value else ""}
    if kind == "priority":
        return {column: _enumerated(name, value, PRIORITIES)}
    if kind == "status":
        return {column: _enumerated(name, value, STATUSES)}
    text = _text(name, value, limit)
    if kind == "cs":
        text = text.upper()
        if not _CS.match(text):
            raise ValueError(f"{name} must be letters, digits, space or underscore")
    if kind == "uid" and text and not lenient_uid(text):
        raise ValueError(f"{name} is not a valid UID")
    return {column: text}


def parse_item(body: Any, *, partial: bool = False) -> dict[str, str]:
    """Column values from a JSON body (create, or ``partial`` for PATCH); raises
    :class:`InvalidWorklistItem` listing every problem."""
    if not isinstance(body, dict):
        raise InvalidWorklistItem(["body must be a JSON object"])
    reasons = [f"unknown field {name}" for name in sorted(set(body) - set(FIELDS))]
    if not partial:
        reasons += [f"{name} is required" for name in REQUIRED if not body.get(name)]
        if "status" in body:
            reasons.append("status is SCHEDULED at creation")
    values: dict[str, str] = {}
    for name, raw in body.items():
        if name not in FIELDS or (not partial and name == "status"):
            continue
        _, kind, limit = FIELDS[name]
        try:
            values.update(_field(name, kind, limit, raw))
        except ValueError as exc:
            reasons.append(str(exc))
    for name in ("patient_id", "modality", "scheduled_start"):
        if partial and name in body and not body[name]:
            reasons.append(f"{name} cannot be empty")
    if reasons:
        raise InvalidWorklistItem(reasons)
    return values


def _iso_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 else ""


def item_json(row: Any) -> dict[str, Any]:
    """The JSON of one ``worklist_item`` row."""
    start = ""
    if row.start_date:
        hhmmss = (row.start_time or "000000")[:6]
        start = f"{_iso_date(row.start_date)}T{hhmmss[:2]}:{hhmmss[2:4]}:{hhmmss[4:6]}"
    code = None
    if row.procedure_code_value:
        code = {"code": row.procedure_code_value, "scheme": row.procedure_code_scheme,
                "meaning": row.procedure_code_meaning}
    return {
        "id": row.id, "status": row.status, "priority": row.priority,
        "patient_id": row.patient_id, "issuer_of_patient_id": row.issuer_of_patient_id,
        "patient_name": row.patient_name, "patient_birth_date": _iso_date(row.patient_birth_date),
        "patient_sex": row.patient_sex, "accession_number": row.accession_number,
        "referring_physician_name": row.referring_physician_name,
        "requested_procedure_id": row.requested_procedure_id,
        "requested_procedure_description": row.requested_procedure_description,
        "requested_procedure_code": code, "modality": row.modality,
        "scheduled_station_ae": row.station_ae, "scheduled_station_name": row.station_name,
        "scheduled_start": start, "performing_physician_name": row.performing_physician_name,
        "step_id": row.step_id, "step_description": row.step_description,
        "study_instance_uid": row.study_uid, "mpps_uid": row.mpps_uid,
        "created_at": row.created_at.isoformat() if row.created_at else "",
        "updated_at": row.updated_at.isoformat() if row.updated_at else "",
    }


def _event_payload(row: Any) -> dict[str, Any]:
    """What the event log says about an item: no patient data (the feed is not PHI-safe)."""
    return {"worklist_item": row.id, "status": row.status, "modality": row.modality,
            "station_ae": row.station_ae, "priority": row.priority}


def _row(conn: Connection, item_id: int) -> Any:
    row = conn.execute(select(WorklistItem.__table__).where(WorklistItem.id == item_id)).first()
    if row is None:
        raise NotFound(f"worklist item {item_id} not found")
    return row


def create_item(db: Database, values: Mapping[str, str]) -> dict[str, Any]:
    """Insert a SCHEDULED item (Study Instance UID generated unless given; Requested
    Procedure ID and Scheduled Procedure Step ID default to the accession number, else
    the item id) and its ProcedureScheduled event, in one transaction."""
    values = dict(values)
    if not values.get("study_uid"):
        values["study_uid"] = generate_uid()
    values["status"] = "SCHEDULED"
    values.setdefault("priority", "ROUTINE")
    table = WorklistItem.__table__
    try:
        with db.write() as conn:
            if conn.execute(select(table.c.id).where(table.c.study_uid == values["study_uid"])).first():
                raise Conflict("another worklist item has this study_instance_uid")
            item_id = conn.execute(insert(table).values(**values).returning(table.c.id)).scalar_one()
            default_id = (values.get("accession_number") or str(item_id))[:16]
            defaults = {k: default_id for k in ("requested_procedure_id", "step_id") if not values.get(k)}
            if defaults:
                conn.execute(update(table).where(table.c.id == item_id).values(**defaults))
            row = _row(conn, item_id)
            append_event(conn, EventType.PROCEDURE_SCHEDULED, study_uid=row.study_uid, payload=_event_payload(row))
    except IntegrityError:  # a concurrent create with the same Study Instance UID won
        raise Conflict("another worklist item has this study_instance_uid") from None
    return item_json(row)


def get_item(db: Database, item_id: int) -> dict[str, Any]:
    with db.read() as conn:
        return item_json(_row(conn, item_id))


def update_item(db: Database, item_id: int, values: Mapping[str, str], *,
                only_from: str | None = None) -> dict[str, Any]:
    """Change an item that is not final (409 otherwise; with ``only_from``, unless it has
    that status); the Study Instance UID is fixed once an MPPS refers to the item."""
    table = WorklistItem.__table__
    with db.write() as conn:
        row = _row(conn, item_id)
        if only_from is not None and row.status != only_from:
            raise Conflict(f"worklist item {item_id} is {row.status}: only a {only_from} item can be cancelled")
        if row.status in FINAL_STATUSES:
            raise Conflict(f"worklist item {item_id} is {row.status} and can no longer be changed")
        if values.get("study_uid", row.study_uid) != row.study_uid:
            if row.mpps_uid:
                raise Conflict("study_instance_uid cannot change once the procedure started")
            if conn.execute(select(table.c.id).where(table.c.study_uid == values["study_uid"])).first():
                raise Conflict("another worklist item has this study_instance_uid")
        if not values:
            return item_json(row)
        conn.execute(update(table).where(table.c.id == item_id).values(**values))
        row = _row(conn, item_id)
        kind = EventType.PROCEDURE_CANCELLED if row.status == "CANCELLED" else EventType.PROCEDURE_UPDATED
        append_event(conn, kind, study_uid=row.study_uid, payload=_event_payload(row))
    return item_json(row)


def cancel_item(db: Database, item_id: int) -> dict[str, Any]:
    """DELETE: a SCHEDULED item becomes CANCELLED (kept for audit); cancelling again is a
    no-op; an item in progress or done cannot be cancelled (409)."""
    with db.read() as conn:
        row = _row(conn, item_id)
    if row.status == "CANCELLED":
        return item_json(row)
    return update_item(db, item_id, {"status": "CANCELLED"}, only_from="SCHEDULED")


#: List filters: query parameter -> column (exact match; several values comma-separated).
FILTERS = {"modality": "modality", "scheduled_station_ae": "station_ae", "status": "status",
           "patient_id": "patient_id", "accession_number": "accession_number"}
MAX_LIMIT = 1000


def list_items(db: Database, params: Mapping[str, str]) -> list[dict[str, Any]]:
    """Items matching the filters (``FILTERS``, ``date_from``/``date_to`` on the scheduled
    start date, ``limit`` (default 100, at most 1000), ``offset``), by scheduled start."""
    table = WorklistItem.__table__
    reasons = [f"unknown parameter {name}" for name in sorted(set(params) - set(FILTERS)
                                                                - {"date_from", "date_to", "limit", "offset"})]
    conditions = []
    for name, column in FILTERS.items():
        if params.get(name):
            wanted = [v.strip().upper() if name in ("modality", "status") else v.strip()
                      for v in params[name].split(",")]
            conditions.append(table.c[column].in_(wanted))
    for name, compare in (("date_from", "__ge__"), ("date_to", "__le__")):
        if params.get(name):
            try:
                conditions.append(getattr(table.c.start_date, compare)(_date(name, params[name])))
            except ValueError as exc:
                reasons.append(str(exc))
    limit, offset = params.get("limit", "100"), params.get("offset", "0")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
        reasons.append(f"limit must be an integer 1-{MAX_LIMIT}")
    if not offset.isdigit():
        reasons.append("offset must be a non-negative integer")
    if reasons:
        raise InvalidWorklistItem(reasons)
    stmt = (select(table).where(*conditions).order_by(table.c.start_date, table.c.start_time, table.c.id)
            .limit(int(limit)).offset(int(offset)))
    with db.read() as conn:
        return [item_json(row) for row in conn.execute(stmt)]
