"""The DIMSE side of the audit trail (:mod:`pacs.audit`).

:func:`record_request` is called by the dispatcher after every handled request
(:meth:`pacs.dimse.service.Dispatcher.dispatch`): the action from the Command Field and SOP
class, the outcome from the last status sent (PS3.7 C), the actor from the association
(calling AE title, source address), the patient and study from what the handler noted in
``request.audit_subjects`` (C-STORE: the ingest result) or else from the identifier's
``PatientID`` / ``StudyInstanceUID`` keys (C-FIND, C-MOVE, C-GET). :func:`record_refusal`
records associations rejected during negotiation (PS3.8 9.3.4). Neither ever raises.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import command as cmd
from ..audit import Record

if TYPE_CHECKING:
    from ..archive import Archive
    from .association import Requestor
    from .service import DimseRequest

log = logging.getLogger(__name__)

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.3).
MWL_FIND = "1.2.840.10008.5.1.4.31"
ACTIONS = {cmd.C_FIND_RQ: "query", cmd.C_MOVE_RQ: "retrieve", cmd.C_GET_RQ: "retrieve", cmd.C_STORE_RQ: "store",
           cmd.N_ACTION_RQ: "storage-commitment", cmd.N_CREATE_RQ: "mpps", cmd.N_SET_RQ: "mpps"}
#: PS3.8 9.3.4 A-ASSOCIATE-RJ (source, reason) -> why, as recorded.
REJECTIONS = {(1, 7): "called AE title not recognised", (2, 2): "protocol version not supported",
              (1, 2): "application context name not supported", (3, 2): "local limit exceeded",
              (1, 3): "calling AE title not recognised"}


def _is_success(code: int) -> bool:
    """Success and warnings (PS3.7 C.1, C.3: 0x0000, 0x0001, 0x0107, 0x0116, 0xBxxx)."""
    return code in (0x0000, 0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF


def _values(identifier: Any, keyword: str) -> list[str]:
    value = identifier.get(keyword) if identifier is not None else None
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value if str(v)]
    return [str(value)]


def _subjects(request: DimseRequest) -> tuple[str, str, str]:
    """(patient id, study uid, details) of the request."""
    noted = request.audit_subjects
    if noted:
        return noted.get("patient_id", ""), noted.get("study_uid", ""), noted.get("details", "")
    identifier = request._identifier  # decoded by the handler, if it needed it
    patients, studies = _values(identifier, "PatientID"), _values(identifier, "StudyInstanceUID")
    details = []
    if len(studies) > 1:
        details.append("studies=" + ",".join(studies))
    if request.command.field == cmd.C_MOVE_RQ:
        details.append("destination=" + request.command.text(cmd.MOVE_DESTINATION))
    return (patients[0] if patients else ""), (studies[0] if studies else ""), " ".join(details)


def record_request(request: DimseRequest) -> None:
    """Record one handled request (C-ECHO, which touches no patient data, is not)."""
    try:
        field = request.command.field
        action = ACTIONS.get(field)
        if action is None:
            return
        if field == cmd.C_FIND_RQ and request.sop_class == MWL_FIND:
            action = "worklist-query"
        last = request.last_status
        code = last.code if last is not None else 0x0110
        success = _is_success(code)
        patient, study, details = _subjects(request)
        requestor = request.assoc.requestor
        request.archive.audit.record(Record(
            door="dimse", action=action, status=code, outcome="success" if success else "failure",
            reason="" if success else (last.comment if last is not None and last.comment else f"0x{code:04X}"),
            actor=requestor.ae_title, credential="ae", ae_title=requestor.ae_title, source=requestor.address,
            route=request.sop_class, patient_id=patient, study_uid=study, details=details))
    except Exception:
        log.warning("audit of a DIMSE request failed", exc_info=True)


def record_refusal(archive: Archive, requestor: Requestor, rejection: tuple[int, int, int] | None) -> None:
    """Record an association rejected at negotiation (``rejection``: result, source, reason)."""
    try:
        result, source, reason = rejection or (1, 0, 0)
        why = REJECTIONS.get((source, reason), f"result {result} source {source} reason {reason}")
        archive.audit.record(Record(
            door="dimse", action="association-refused", status=reason, outcome="failure", reason=why,
            actor=requestor.ae_title, credential="ae", ae_title=requestor.ae_title, source=requestor.address,
            route=f"called {requestor.called_ae_title}"))
    except Exception:
        log.warning("audit of a refused association failed", exc_info=True)
