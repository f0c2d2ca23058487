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

from .. import retrieve
from ..errors import InvalidQuery, PacsError, StorageUnavailable
from ..query import Level
from ..retrieve import RetrieveItem
from . import policy
from .status import Status, status as failure
from .suboperations import SameAssociationSender, run_suboperations

if TYPE_CHECKING:
    from .service import DimseRequest

log = logging.getLogger(__name__)

UNABLE_TO_CALCULATE, IDENTIFIER_INVALID, UNABLE_TO_PROCESS = 0xA701, 0xA900, 0xC000

MODELS: dict[str, tuple[Level, ...]] = {
    str(PatientRootQueryRetrieveInformationModelGet): (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    str(StudyRootQueryRetrieveInformationModelGet): (Level.STUDY, Level.SERIES, Level.IMAGE),
}


def _items_or_refusal(request: DimseRequest) -> Status | list[RetrieveItem]:
    refused = policy.refusal(request, request.archive, "get")
    if refused is not None:
        return refused
    levels = MODELS.get(request.sop_class)
    try:
        if levels is None:
            raise InvalidQuery("unsupported information model")
        return retrieve.plan(request.archive, retrieve.query_from_identifier(request.identifier(), levels))
    except InvalidQuery as exc:
        return failure(IDENTIFIER_INVALID, exc)
    except StorageUnavailable as exc:
        return failure(UNABLE_TO_CALCULATE, exc)
    except PacsError as exc:
        return failure(UNABLE_TO_PROCESS, exc)
    except Exception:
        log.exception("C-GET failed")
        return failure(UNABLE_TO_PROCESS, "internal error")


def handle_get(request: DimseRequest) -> None:
    """C-GET (PS3.4 C.4.3.2): C-STORE sub-operations over the requesting association.

    Failures before any sub-operation, each with an Error Comment: 0x0124 refused by the
    AE policy, 0xA900 invalid identifier, 0xA701 index unavailable, 0xC000 unexpected
    error. A C-CANCEL is honoured before every sub-operation.
    """
    outcome = _items_or_refusal(request)
    if isinstance(outcome, Status):
        log.info("C-GET from %s: 0x%04X %s", request.calling_ae, outcome.code, outcome.comment)
        request.respond(outcome)
        return
    log.info("C-GET of %d instances requested by %s", len(outcome), request.calling_ae)
    run_suboperations(request, outcome, SameAssociationSender(request))
