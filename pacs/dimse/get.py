"""C-GET SCP (PS3.4 C.4.3): Patient Root and Study Root, every level.

The C-STORE sub-operations go back over the requesting association, on the storage
presentation contexts the requestor proposed with SCP/SCU Role Selection (PS3.7 D.3.3.4)
and we accepted (:func:`pacs.dimse.server.context_table` accepts both roles on every
storage context). The stored bytes are streamed without decoding, as for C-MOVE; the
sub-operations, pending responses, cancel and final status are
:func:`pacs.dimse.suboperations.run_suboperations`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)

from ..query import Level
from .status import Status
from .suboperations import SameAssociationSender, plan_or_refusal, run_suboperations

if TYPE_CHECKING:
    from .service import DimseRequest

log = logging.getLogger(__name__)


MODELS: dict[str, tuple[Level, ...]] = {
    str(PatientRootQueryRetrieveInformationModelGet): (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    str(StudyRootQueryRetrieveInformationModelGet): (Level.STUDY, Level.SERIES, Level.IMAGE),
}


def handle_get(request: DimseRequest) -> None:
    """C-GET (PS3.4 C.4.3.2): C-STORE sub-operations over the requesting association.

    Failures before any sub-operation, each with an Error Comment: 0x0124 refused by the
    AE policy, 0xA900 invalid identifier, 0xA701 index unavailable, 0xC000 unexpected
    error. A C-CANCEL is honoured before every sub-operation.
    """
    outcome = plan_or_refusal(request, "get", MODELS)
    if isinstance(outcome, Status):
        log.info("C-GET from %s: 0x%04X %s", request.calling_ae, outcome.code, outcome.comment)
        request.respond(outcome)
        return
    log.info("C-GET of %d instances requested by %s", len(outcome), request.calling_ae)
    run_suboperations(request, outcome, SameAssociationSender(request))
