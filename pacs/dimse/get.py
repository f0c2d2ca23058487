"""C-GET SCP (PS3.4 C.4.3): Patient Root and Study Root, every level.

The C-STORE sub-operations go back over the requesting association, on the storage
presentation contexts the requestor proposed with SCP/SCU Role Selection (PS3.7 D.3.3.4)
and we accepted (``build_ae`` accepts both roles on every storage context). pynetdicom
runs the exchange (``service_class.py _get_scp``): our handler yields the number of
sub-operations, then ``(0xFF00, Dataset)`` per instance; pynetdicom sends each with
``send_c_store``, answers pending responses with the counts, and builds the Failed SOP
Instance UID List and the final status (0x0000, 0xB000, 0xA702, 0xFE00).

Each object is read from the blob store only when its turn comes, one at a time. It goes
as stored when the requestor accepted its transfer syntax for our SCU role; compressed
pixel data not accepted is decoded to Explicit VR Little Endian (pynetdicom converts to
Implicit VR when only that was accepted); an object that cannot be sent or read counts
as a failed sub-operation and the retrieve goes on. Early failures carry an Error
Comment (:mod:`pacs.dimse.retrieve_status`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)

from .. import retrieve
from ..errors import InvalidQuery, PacsError, StorageUnavailable
from ..query import Level
from ..retrieve import RetrieveItem
from . import policy
from .retrieve_status import C_GET_RSP, failure, rewrite_final_response

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from ..archive import Archive

log = logging.getLogger(__name__)

PENDING, CANCEL = 0xFF00, 0xFE00
UNABLE_TO_CALCULATE, IDENTIFIER_INVALID, UNABLE_TO_PROCESS = 0xA701, 0xA900, 0xC000

MODELS: dict[str, tuple[Level, ...]] = {
    str(PatientRootQueryRetrieveInformationModelGet): (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    str(StudyRootQueryRetrieveInformationModelGet): (Level.STUDY, Level.SERIES, Level.IMAGE),
}


def storage_syntaxes(assoc: Association) -> dict[str, list[str]]:
    """SOP Class UID -> transfer syntaxes accepted on contexts where we may act as SCU
    (i.e. the requestor took the SCP role), in context order."""
    accepted: dict[str, list[str]] = {}
    for context in assoc.accepted_contexts:
        if context.as_scu and context.transfer_syntax:
            accepted.setdefault(str(context.abstract_syntax), []).append(str(context.transfer_syntax[0]))
    return accepted


def unsendable(item: RetrieveItem) -> Dataset:
    """A dataset pynetdicom cannot send (no File Meta Transfer Syntax UID): its C-STORE
    raises inside ``_get_scp``, which counts the sub-operation failed and lists the SOP
    Instance UID in the Failed SOP Instance UID List."""
    ds = Dataset()
    ds.SOPClassUID = item.sop_class_uid
    ds.SOPInstanceUID = item.sop_instance_uid
    return ds


def dataset_for(archive: Archive, item: RetrieveItem, accepted: dict[str, list[str]]) -> Dataset:
    """The dataset to send for ``item``: as stored, decoded, or :func:`unsendable`."""
    target = retrieve.choose_syntax(item.transfer_syntax_uid, accepted.get(item.sop_class_uid, []))
    if target is None:
        log.info("C-GET sub-operation failed: no accepted transfer syntax for %s in %s",
                 UID(item.sop_class_uid).name, UID(item.transfer_syntax_uid).name)
        return unsendable(item)
    try:
        ds = retrieve.load_dataset(archive, item)
        if target != item.transfer_syntax_uid and UID(item.transfer_syntax_uid).is_compressed:
            ds = retrieve.transcode(ds, ExplicitVRLittleEndian)
    except PacsError as exc:  # RetrieveFailure, or the store unavailable
        log.info("C-GET sub-operation failed: %s", exc.reason)
        return unsendable(item)
    return ds


def _items_or_refusal(event: Event, archive: Archive) -> Dataset | list[RetrieveItem]:
    refused = policy.refusal(event, archive, "get")
    if refused is not None:
        return refused
    levels = MODELS.get(str(event.request.AffectedSOPClassUID))
    try:
        if levels is None:
            raise InvalidQuery("unsupported information model")
        return retrieve.plan(archive, retrieve.query_from_identifier(event.identifier, levels))
    except InvalidQuery as exc:
        return failure(IDENTIFIER_INVALID, exc)
    except StorageUnavailable as exc:
        return failure(UNABLE_TO_CALCULATE, exc)
    except PacsError as exc:
        return failure(UNABLE_TO_PROCESS, exc)
    except Exception:
        log.exception("C-GET failed")
        return failure(UNABLE_TO_PROCESS, "internal error")


def handle_get(event: Event, archive: Archive) -> Iterator[Any]:
    """EVT_C_GET (PS3.4 C.4.3.2): the count, then (0xFF00, dataset) per instance.

    Failures before any sub-operation, each with an Error Comment: 0x0124 refused by the
    AE policy, 0xA900 invalid identifier, 0xA701 index unavailable, 0xC000 unexpected
    error. A C-CANCEL is honoured before every sub-operation.
    """
    calling = str(event.assoc.requestor.ae_title).strip()
    outcome = _items_or_refusal(event, archive)
    if not isinstance(outcome, list):
        log.info("C-GET from %s: 0x%04X %s", calling, outcome.Status, outcome.ErrorComment)
        # The contract's only failure path after the count; the rewrite drops the unused
        # count and the empty failed list (pacs.dimse.retrieve_status).
        rewrite_final_response(event, outcome, C_GET_RSP)
        yield 1
        yield outcome, None
        return
    items = outcome
    log.info("C-GET of %d instances requested by %s", len(items), calling)
    yield len(items)
    accepted = storage_syntaxes(event.assoc)
    for item in items:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, dataset_for(archive, item, accepted)
