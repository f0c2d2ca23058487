"""Modality Performed Procedure Step SCP (SOP Class 1.2.840.10008.3.1.2.3.3, PS3.4 F.7).

* N-CREATE (F.7.2.1): the modality starts a step. Performed Procedure Step Status must be
  IN PROGRESS; the SOP Instance UID is the request's Affected SOP Instance UID or one we
  generate and return. The instance is linked to the worklist items named by its
  Scheduled Step Attributes Sequence (Study Instance UID, else Accession Number and
  Scheduled Procedure Step ID), which become IN_PROGRESS.
* N-SET (F.7.2.2): changes the attributes PS3.4 Table F.7.2-1 allows to set
  (:data:`SETTABLE`); COMPLETED or DISCONTINUED is final, and the worklist items follow.

The MPPS is kept as DICOM JSON (``mpps`` table); the change and its event
(MppsInProgress / MppsCompleted with the study and performed series / MppsDiscontinued)
are written in one transaction. Logs carry the calling AE and UIDs, never patient data.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Connection, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from pacs.dimse import command as cmd
from pacs.dimse.policy import refusal
from pacs.dimse.service import DimseRequest
from pacs.dimse.status import SUCCESS, Status, status
from pacs.errors import PacsError
from pacs.events import EventType, append_event
from pacs.uids import lenient_uid

from .models import PerformedProcedureStep, WorklistItem

log = logging.getLogger(__name__)

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
# Statuses (PS3.7 10.1.5.1.6, 10.1.1.1.8; PS3.4 F.7.2.1.2, F.7.2.2.2).
NO_SUCH_ATTRIBUTE, INVALID_ATTRIBUTE_VALUE = 0x0105, 0x0106
PROCESSING_FAILURE, DUPLICATE_INSTANCE, NO_SUCH_INSTANCE = 0x0110, 0x0111, 0x0112
MISSING_ATTRIBUTE, RESOURCE_LIMITATION = 0x0120, 0x0213
#: Error ID (0000,0903) of "Performed Procedure Step Object may no longer be updated".
ERROR_ID_FINAL = 0xA710
NO_LONGER_UPDATED = "Performed Procedure Step Object may no longer be updated"

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
#: N-CREATE: attributes the SCU must send (PS3.4 Table F.7.2-1, Type 1).
REQUIRED = ("ScheduledStepAttributesSequence", "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime", "PerformedProcedureStepStatus", "Modality")
#: N-SET: attributes an SCU may set (PS3.4 Table F.7.2-1, N-SET column).
SETTABLE = frozenset({
    "SpecificCharacterSet", "PerformedProcedureStepStatus", "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime", "PerformedProcedureStepDescription", "PerformedProcedureTypeDescription",
    "ProcedureCodeSequence", "PerformedProcedureStepDiscontinuationReasonCodeSequence",
    "CommentsOnThePerformedProcedureStep", "PerformedProtocolCodeSequence", "PerformedSeriesSequence",
    "ImageAndFluoroscopyAreaDoseProduct", "TotalTimeOfFluoroscopy", "TotalNumberOfExposures",
    "DistanceSourceToDetector", "DistanceSourceToEntrance", "EntranceDose", "EntranceDoseInmGy",
    "ExposedArea", "ExposureDoseSequence", "CommentsOnRadiationDose", "BillingProcedureStepSequence",
    "FilmConsumptionSequence", "BillingSuppliesAndDevicesSequence", "AnatomicStructureSpaceOrRegionSequence",
    "OrganDose", "OrganExposed", "ReasonForPerformedProcedureCodeSequence",
})
_EVENTS = {IN_PROGRESS: EventType.MPPS_IN_PROGRESS, COMPLETED: EventType.MPPS_COMPLETED,
           DISCONTINUED: EventType.MPPS_DISCONTINUED}
_ITEM_STATUS = {COMPLETED: "COMPLETED", DISCONTINUED: "DISCONTINUED"}
_ITEMS = WorklistItem.__table__
_MPPS = PerformedProcedureStep.__table__


class MppsFailure(PacsError):
    """An N-CREATE/N-SET refused with ``code``, the attribute concerned (Attribute
    Identifier List (0000,1005), PS3.7 10.1.3.1.9 / 10.1.5.1.6) and Error ID, if any."""

    def __init__(self, code: int, reason: str, offending: int | None = None, error_id: int | None = None) -> None:
        super().__init__(reason)
        self.dimse_status, self.offending, self.error_id = code, offending, error_id


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _check_create(ds: Dataset) -> None:
    for keyword in REQUIRED:
        if keyword not in ds:
            raise MppsFailure(MISSING_ATTRIBUTE, f"{keyword} missing", tag_for_keyword(keyword))
    if _text(ds, "PerformedProcedureStepStatus") != IN_PROGRESS:
        raise MppsFailure(INVALID_ATTRIBUTE_VALUE, "PerformedProcedureStepStatus must be IN PROGRESS", 0x00400252)
    if not ds.ScheduledStepAttributesSequence:
        raise MppsFailure(INVALID_ATTRIBUTE_VALUE, "ScheduledStepAttributesSequence is empty", 0x00400270)


def _linked_items(conn: Connection, ds: Dataset) -> list[Any]:
    """Worklist items named by the Scheduled Step Attributes Sequence (PS3.3 C.4.13)."""
    found: dict[int, Any] = {}
    for step in ds.ScheduledStepAttributesSequence:
        study, accession, step_id = (_text(step, k) for k in
                                     ("StudyInstanceUID", "AccessionNumber", "ScheduledProcedureStepID"))
        clauses = []
        if study:
            clauses.append(_ITEMS.c.study_uid == study)
        if accession and step_id:
            clauses.append((_ITEMS.c.accession_number == accession) & (_ITEMS.c.step_id == step_id))
        if clauses:
            for row in conn.execute(select(_ITEMS).where(or_(*clauses))):
                found[row.id] = row
    return list(found.values())


def _study_uid(ds: Dataset, items: list[Any]) -> str:
    for step in ds.ScheduledStepAttributesSequence:
        if _text(step, "StudyInstanceUID"):
            return _text(step, "StudyInstanceUID")
    return items[0].study_uid if items else ""


def _series(ds: Dataset) -> list[dict[str, Any]]:
    """Performed series (SeriesInstanceUID and image count) for the MppsCompleted event."""
    return [{"series_uid": _text(s, "SeriesInstanceUID"), "instances": len(s.get("ReferencedImageSequence", []))}
            for s in ds.get("PerformedSeriesSequence", [])]


def create(conn: Connection, ds: Dataset, sop_instance_uid: str, calling_ae: str) -> list[int]:
    """Record the N-CREATE in ``conn``'s transaction; returns the linked item ids."""
    _check_create(ds)
    if conn.execute(select(_MPPS.c.id).where(_MPPS.c.sop_instance_uid == sop_instance_uid)).first():
        raise MppsFailure(DUPLICATE_INSTANCE, "an MPPS with this SOP Instance UID exists")
    items = _linked_items(conn, ds)
    ds.SOPClassUID, ds.SOPInstanceUID = MPPS_SOP_CLASS, sop_instance_uid
    study = _study_uid(ds, items)
    conn.execute(insert(_MPPS).values(
        sop_instance_uid=sop_instance_uid, status=IN_PROGRESS, study_uid=study, calling_ae=calling_ae,
        worklist_item_fk=items[0].id if items else None, dicom_json=json.dumps(ds.to_json_dict())))
    ids = [row.id for row in items]
    if ids:
        conn.execute(update(_ITEMS).where(_ITEMS.c.id.in_(ids), _ITEMS.c.status == "SCHEDULED")
                     .values(status="IN_PROGRESS"))
        conn.execute(update(_ITEMS).where(_ITEMS.c.id.in_(ids), _ITEMS.c.mpps_uid == "")
                     .values(mpps_uid=sop_instance_uid))
    append_event(conn, EventType.MPPS_IN_PROGRESS, study_uid=study,
                 payload={"mpps": sop_instance_uid, "worklist_items": ids, "calling_ae": calling_ae})
    return ids


def _apply(stored: Dataset, modifications: Dataset) -> str:
    """Apply an N-SET modification list; returns the new status."""
    for elem in modifications:
        if elem.keyword not in SETTABLE:
            raise MppsFailure(NO_SUCH_ATTRIBUTE, f"{elem.keyword or elem.tag} may not be set by N-SET", int(elem.tag))
    new_status = _text(modifications, "PerformedProcedureStepStatus") or _text(stored, "PerformedProcedureStepStatus")
    if new_status not in _EVENTS:
        raise MppsFailure(INVALID_ATTRIBUTE_VALUE, "PerformedProcedureStepStatus must be IN PROGRESS, "
                          "COMPLETED or DISCONTINUED", 0x00400252)
    for elem in modifications:
        stored[elem.tag] = elem
    return new_status


def modify(conn: Connection, sop_instance_uid: str, modifications: Dataset) -> str:
    """Record the N-SET in ``conn``'s transaction; returns the new status."""
    row = conn.execute(select(_MPPS).where(_MPPS.c.sop_instance_uid == sop_instance_uid)).first()
    if row is None:
        raise MppsFailure(NO_SUCH_INSTANCE, "no such MPPS instance")
    if row.status in (COMPLETED, DISCONTINUED):
        raise MppsFailure(PROCESSING_FAILURE, NO_LONGER_UPDATED, error_id=ERROR_ID_FINAL)
    stored = Dataset.from_json(row.dicom_json)
    new_status = _apply(stored, modifications)
    changed = conn.execute(update(_MPPS).where(_MPPS.c.id == row.id, _MPPS.c.status == row.status).values(
        status=new_status, dicom_json=json.dumps(stored.to_json_dict()))).rowcount
    if changed != 1:  # a concurrent N-SET finished it first
        raise MppsFailure(PROCESSING_FAILURE, NO_LONGER_UPDATED, error_id=ERROR_ID_FINAL)
    if new_status in _ITEM_STATUS:
        conn.execute(update(_ITEMS).where(_ITEMS.c.mpps_uid == sop_instance_uid,
                                          _ITEMS.c.status.in_(("SCHEDULED", "IN_PROGRESS")))
                     .values(status=_ITEM_STATUS[new_status]))
        payload: dict[str, Any] = {"mpps": sop_instance_uid}
        if new_status == COMPLETED:
            payload["series"] = _series(stored)
        append_event(conn, _EVENTS[new_status], study_uid=row.study_uid, payload=payload)
    return new_status


def _failure_status(exc: MppsFailure) -> tuple[Status, dict[int, cmd.Value]]:
    extra: dict[int, cmd.Value] = {}
    if exc.offending is not None:
        extra[cmd.ATTRIBUTE_IDENTIFIERS] = exc.offending
    if exc.error_id is not None:
        extra[cmd.ERROR_ID] = exc.error_id
    return status(exc.dimse_status, exc.reason), extra


def _run(request: DimseRequest, work: Any) -> tuple[Status, dict[int, cmd.Value]]:
    refused = refusal(request, request.archive, "mpps")
    if refused is not None:
        return refused, {}
    try:
        with request.archive.db.write() as conn:
            work(conn, request.identifier())
    except IntegrityError:  # a concurrent N-CREATE with the same SOP Instance UID won
        return status(DUPLICATE_INSTANCE, "an MPPS with this SOP Instance UID exists"), {}
    except MppsFailure as exc:
        log.info("MPPS %s from %s refused: %s (0x%04X)", request.command.field, request.calling_ae,
                 exc.reason, exc.dimse_status)
        return _failure_status(exc)
    except PacsError as exc:
        return status(RESOURCE_LIMITATION if exc.http_status == 503 else PROCESSING_FAILURE, exc), {}
    except Exception as exc:  # pydicom raises on first access to a malformed element
        log.info("MPPS request from %s failed: %s", request.calling_ae, type(exc).__name__)
        return status(PROCESSING_FAILURE, "data set cannot be decoded or processed"), {}
    return Status(SUCCESS), {}


def handle_n_create(request: DimseRequest) -> None:
    """N-CREATE (PS3.4 F.7.2.1). 0x0000 created (Affected SOP Instance UID returned);
    0x0111 duplicate SOP Instance; 0x0120 missing attribute; 0x0106 invalid value (status
    not IN PROGRESS); 0x0124 AE policy ("mpps" permission); 0x0110 undecodable data set."""
    uid = request.command.text(cmd.AFFECTED_SOP_INSTANCE) or generate_uid()
    if not lenient_uid(uid):
        request.respond(status(INVALID_ATTRIBUTE_VALUE, "Affected SOP Instance UID is not a UID"))
        return
    answer, extra = _run(request, lambda conn, ds: create(conn, ds, uid, request.calling_ae))
    if answer.code == SUCCESS:
        log.info("MPPS %s created by %s", uid, request.calling_ae)
    request.respond(answer, extra={cmd.AFFECTED_SOP_INSTANCE: uid, **extra})


def handle_n_set(request: DimseRequest) -> None:
    """N-SET (PS3.4 F.7.2.2). 0x0000 set; 0x0112 no such SOP Instance; 0x0110 with Error
    ID 0xA710 once the step is COMPLETED or DISCONTINUED; 0x0105 an attribute N-SET may
    not change (Attribute Identifier List given); 0x0106 invalid status value."""
    uid = request.command.text(cmd.REQUESTED_SOP_INSTANCE)
    outcome: list[str] = []
    answer, extra = _run(request, lambda conn, ds: outcome.append(modify(conn, uid, ds)))
    if outcome:
        log.info("MPPS %s set to %s by %s", uid, outcome[0], request.calling_ae)
    request.respond(answer, extra=extra or None)
