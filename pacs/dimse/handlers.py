"""pynetdicom event handlers: translate DIMSE requests into archive calls.

Each handler's contract follows pynetdicom's ``_handlers.doc_handle_*``; the statuses a
handler can answer are listed in its docstring. Domain errors map to statuses in one
place, :mod:`pacs.errors`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from .. import metrics
from .status import status_dataset
from ..errors import PacsError, error_comment
from . import policy

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from ..archive import Archive

log = logging.getLogger(__name__)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110


def handle_echo(event: Event, archive: Archive | None = None) -> int | Dataset:
    """C-ECHO (PS3.4 A.4): Success (0x0000), or 0x0124 when the AE policy refuses the caller."""
    if archive is not None:
        try:
            refused = policy.refusal(event, archive, "echo")
        except PacsError as exc:
            return status_dataset(PROCESSING_FAILURE, error_comment(exc))
        if refused is not None:
            return refused
    return SUCCESS


def handle_store(event: Event, archive: Archive) -> Dataset:
    """C-STORE (PS3.4 B.2.3) through the one ingest path.

    Statuses: 0x0000 stored (also for an identical re-send); 0xA700 out of resources
    (storage or index unavailable); 0xA900 dataset does not match the SOP class;
    0xC000-0xC0FF cannot understand / refused (unparseable, bad UIDs, conflicts), each
    with an Error Comment; 0x0124 when the AE policy refuses the caller (nothing stored).
    Never a success for an object that is not stored.
    """
    calling = event.assoc.requestor.ae_title
    try:
        refused = policy.refusal(event, archive, "store")
        if refused is not None:
            return refused
        result = archive.ingest_file(
            event.dataset_path,
            source="dimse",
            calling_ae=calling,
            expected_sop_class=event.request.AffectedSOPClassUID,
            consume=True,
        )
    except PacsError as exc:
        log.info("C-STORE from %s refused: %s (0x%04X)", calling, exc.reason, exc.dimse_status)
        return status_dataset(exc.dimse_status, error_comment(exc))
    except Exception:
        log.exception("C-STORE from %s failed", calling)
        return status_dataset(PROCESSING_FAILURE, "internal error while storing")
    if result.sop_instance_uid != event.request.AffectedSOPInstanceUID:
        # Stored, but the command named another instance: PS3.4 B.2.3 has no code for
        # this; the object is kept under the UID in its dataset.
        log.warning("C-STORE from %s: AffectedSOPInstanceUID differs from dataset", calling)
    return status_dataset(SUCCESS)


def handle_association_accepted(event: Event) -> None:
    metrics.ASSOCIATIONS_TOTAL.inc()
    metrics.ASSOCIATIONS_ACTIVE.inc()


def handle_association_closed(event: Event) -> None:
    metrics.ASSOCIATIONS_ACTIVE.dec()


def handle_association_rejected(event: Event) -> None:
    metrics.ASSOCIATIONS_REJECTED.inc()
