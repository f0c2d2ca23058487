"""Modality Worklist SCP: C-FIND on the Modality Worklist Information Model - FIND
(1.2.840.10008.5.1.4.31, PS3.4 Annex K, K.6).

Matching goes through the archive's query model: each matching key of the identifier
becomes a :class:`pacs.query.Matcher` (:func:`pacs.query.make_matcher`, with this model's
:data:`ATTRIBUTES`) and a SQL condition (:func:`pacs.query.sql.condition`); person names
match the normalised columns (case- and accent-insensitive, :mod:`pacs.index.names`).
Keys of the one Scheduled Procedure Step Sequence item match the step's columns (PS3.4
K.6.1.2.1: sequence matching with a single item). Keys this SCP does not match on are
return keys (PS3.4 C.2.2.1.2 lets an SCP treat an unsupported optional matching key as
universal). Only SCHEDULED items are returned unless the identifier asks for another
Scheduled Procedure Step Status (STARTED = an item in progress); completed, discontinued
and cancelled items never are.

Every requested key is returned, filled from :func:`item_dataset` or empty (PS3.4
C.4.1.1.3.2); a zero-length sequence key returns the whole sequence. Identifiers are
never logged.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian
from sqlalchemy import select

from pacs.dimse.policy import refusal
from pacs.dimse.service import DimseRequest, encode_dataset
from pacs.dimse.status import CANCEL, PENDING, SUCCESS, Status, status
from pacs.errors import InvalidQuery, PacsError
from pacs.query import Level, element_values, make_matcher
from pacs.query.attributes import Attribute
from pacs.query.sql import condition

from .models import WorklistItem

log = logging.getLogger(__name__)

IDENTIFIER_INVALID, UNABLE_TO_PROCESS = 0xA900, 0xC000
SPS = "ScheduledProcedureStepSequence"
SPS_STATUS = "ScheduledProcedureStepStatus"
#: Our item status -> Scheduled Procedure Step Status (0040,0020) defined terms (PS3.3 C.4.10).
DICOM_STATUS = {"SCHEDULED": "SCHEDULED", "IN_PROGRESS": "STARTED"}
ITEM_STATUS = {v: k for k, v in DICOM_STATUS.items()}
_T = WorklistItem.__table__.c


def _a(keyword: str, column: Any, person_name: bool = False) -> Attribute:
    return Attribute(keyword, Level.STUDY, column, dictionary_VR(keyword), person_name)


#: Matching keys of the Modality Worklist model and their columns.
ATTRIBUTES: dict[str, Attribute] = {a.keyword: a for a in (
    _a("PatientName", _T.patient_name_norm, True),
    _a("PatientID", _T.patient_id),
    _a("IssuerOfPatientID", _T.issuer_of_patient_id),
    _a("PatientBirthDate", _T.patient_birth_date),
    _a("PatientSex", _T.patient_sex),
    _a("AccessionNumber", _T.accession_number),
    _a("ReferringPhysicianName", _T.referring_physician_norm, True),
    _a("RequestedProcedureID", _T.requested_procedure_id),
    _a("RequestedProcedurePriority", _T.priority),
    _a("StudyInstanceUID", _T.study_uid),
)}
#: Matching keys inside the Scheduled Procedure Step Sequence item.
STEP_ATTRIBUTES: dict[str, Attribute] = {a.keyword: a for a in (
    _a("ScheduledStationAETitle", _T.station_ae),
    _a("ScheduledStationName", _T.station_name),
    _a("ScheduledProcedureStepStartDate", _T.start_date),
    _a("ScheduledProcedureStepStartTime", _T.start_time),
    _a("Modality", _T.modality),
    _a("ScheduledPerformingPhysicianName", _T.performing_physician_norm, True),
    _a("ScheduledProcedureStepID", _T.step_id),
)}
CONTROL_KEYWORDS = {"SpecificCharacterSet", "TimezoneOffsetFromUTC", "QueryRetrieveLevel"}


def _conditions(ds: Dataset, attributes: dict[str, Attribute]) -> list[Any]:
    found = []
    for elem in ds:
        if elem.keyword in attributes and elem.VR != "SQ":
            clause = condition(make_matcher(elem.keyword, element_values(elem), attributes), attributes)
            if clause is not None:
                found.append(clause)
    return found


def _status_condition(step: Dataset | None) -> Any:
    wanted = [v.strip().upper() for v in element_values(step[SPS_STATUS])] if step is not None and SPS_STATUS in step else []
    wanted = [v for v in wanted if v and v != "*"]
    if not wanted:
        return _T.status == "SCHEDULED"
    return _T.status.in_([ITEM_STATUS[v] for v in wanted if v in ITEM_STATUS] or ["-"])


def query_conditions(identifier: Dataset) -> list[Any]:
    """WHERE conditions of an MWL identifier; raises :class:`InvalidQuery` (0xA900)."""
    step: Dataset | None = None
    if SPS in identifier:
        elem = identifier[SPS]
        if elem.VR != "SQ":
            raise InvalidQuery(f"{SPS} must be a sequence")
        if len(elem.value) > 1:
            raise InvalidQuery(f"{SPS} may hold one item only (PS3.4 C.2.2.2.6)")
        step = elem.value[0] if elem.value else None
    found = _conditions(identifier, ATTRIBUTES)
    if step is not None:
        found += _conditions(step, STEP_ATTRIBUTES)
    return [*found, _status_condition(step)]


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def item_dataset(row: Any) -> Dataset:
    """What we hold for one worklist item, as the return keys of PS3.4 Table K.6-1."""
    ds = Dataset()
    ds.AccessionNumber = row.accession_number
    ds.ReferringPhysicianName = row.referring_physician_name
    ds.ReferencedStudySequence = Sequence()
    ds.ReferencedPatientSequence = Sequence()
    ds.PatientName = row.patient_name
    ds.PatientID = row.patient_id
    ds.IssuerOfPatientID = row.issuer_of_patient_id
    ds.PatientBirthDate = row.patient_birth_date
    ds.PatientSex = row.patient_sex
    ds.StudyInstanceUID = row.study_uid
    ds.RequestedProcedureID = row.requested_procedure_id
    ds.RequestedProcedureDescription = row.requested_procedure_description
    codes = [_code_item(row.procedure_code_value, row.procedure_code_scheme, row.procedure_code_meaning)]
    ds.RequestedProcedureCodeSequence = Sequence(codes if row.procedure_code_value else [])
    ds.RequestedProcedurePriority = row.priority
    step = Dataset()
    step.ScheduledStationAETitle = row.station_ae
    step.ScheduledProcedureStepStartDate = row.start_date
    step.ScheduledProcedureStepStartTime = (row.start_time or "")[:6]
    step.Modality = row.modality
    step.ScheduledPerformingPhysicianName = row.performing_physician_name
    step.ScheduledProcedureStepDescription = row.step_description
    step.ScheduledStationName = row.station_name
    step.ScheduledProcedureStepLocation = ""
    step.ScheduledProcedureStepID = row.step_id
    step.ScheduledProcedureStepStatus = DICOM_STATUS.get(row.status, "")
    step.ScheduledProtocolCodeSequence = Sequence()
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def _empty(elem: DataElement) -> DataElement:
    vr = elem.VR if elem.VR not in ("UN", None) else dictionary_VR(elem.tag).split(" or ")[0]
    return DataElement(elem.tag, vr, Sequence() if vr == "SQ" else None)


def response_dataset(request: Dataset, held: Dataset) -> Dataset:
    """Every key of ``request`` (recursively into one-item sequences) filled from ``held``."""
    out = Dataset()
    for elem in request:
        if elem.keyword in CONTROL_KEYWORDS or elem.tag.group == 0x0002:
            continue
        have = held.get(elem.tag)
        if have is None:
            out.add(_empty(elem))
        elif elem.VR == "SQ" and elem.value and have.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", Sequence([response_dataset(elem.value[0], i) for i in have.value])))
        else:
            out.add(have)
    return out


def _needs_utf8(ds: Dataset) -> bool:
    for elem in ds.iterall():
        if elem.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and elem.value:
            if not str(elem.value).isascii():
                return True
    return False


def encode_response(ds: Dataset, transfer_syntax: str) -> bytes:
    """The identifier bytes; UTF-8 (ISO_IR 192) when any text is not ASCII."""
    if _needs_utf8(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return encode_dataset(ds, transfer_syntax)


def find_items(request: DimseRequest) -> Status | list[Any]:
    """The matching rows, or the failure status to answer."""
    refused = refusal(request, request.archive, "mwl")
    if refused is not None:
        return refused
    try:
        identifier = request.identifier()
        conditions = query_conditions(identifier)
        stmt = select(WorklistItem.__table__).where(*conditions).order_by(_T.start_date, _T.start_time, _T.id)
        with request.archive.db.read() as conn:
            return list(conn.execute(stmt))
    except InvalidQuery as exc:
        return status(IDENTIFIER_INVALID, exc)
    except PacsError as exc:
        return status(UNABLE_TO_PROCESS, exc)
    except Exception as exc:  # pydicom raises on first access to a malformed element
        log.info("MWL C-FIND from %s: identifier unusable (%s)", request.calling_ae, type(exc).__name__)
        return status(IDENTIFIER_INVALID, "identifier cannot be decoded")


def handle_mwl_find(request: DimseRequest) -> None:
    """C-FIND of the Modality Worklist Information Model (PS3.4 K.4.1, K.6.1).

    A pending response (0xFF00) per item, then 0x0000; 0xFE00 when the SCU sent a
    C-CANCEL (checked before each pending response); 0xA900 invalid identifier (with an
    Error Comment); 0xC000 unable to process; 0x0124 AE policy (the "mwl" permission).
    """
    outcome = find_items(request)
    if isinstance(outcome, Status):
        request.respond(outcome)
        return
    identifier = request.identifier()
    syntax = request.context.transfer_syntax or ImplicitVRLittleEndian
    log.info("MWL C-FIND from %s: %d item(s)", request.calling_ae, len(outcome))
    for row in outcome:
        if request.cancelled():
            request.respond(Status(CANCEL))
            return
        body = encode_response(response_dataset(identifier, item_dataset(row)), syntax)
        request.respond(Status(PENDING), dataset=body, defer=True)
    request.respond(Status(SUCCESS))


__all__ = ["ATTRIBUTES", "STEP_ATTRIBUTES", "handle_mwl_find", "item_dataset"]
