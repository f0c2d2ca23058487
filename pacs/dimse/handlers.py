"""C-ECHO and C-STORE: the DIMSE requests that go straight into the archive.

Domain errors map to statuses in one place, :mod:`pacs.errors`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import command as cmd
from . import policy
from ..access import Caller
from ..errors import PacsError, error_comment
from .status import SUCCESS, Status

if TYPE_CHECKING:
    from .service import DimseRequest

log = logging.getLogger(__name__)

PROCESSING_FAILURE = 0x0110


def handle_echo(request: DimseRequest) -> None:
    """C-ECHO (PS3.4 A.4): Success (0x0000), or 0x0124 when the AE policy refuses the caller."""
    try:
        refused = policy.refusal(request, request.archive, "echo")
    except PacsError as exc:
        refused = Status(PROCESSING_FAILURE, error_comment(exc))
    request.respond(refused or Status(SUCCESS))


def handle_store(request: DimseRequest) -> None:
    """C-STORE (PS3.4 B.2.3) through the one ingest path.

    Statuses: 0x0000 stored (also for an identical re-send); 0xA700 out of resources
    (storage or index unavailable); 0xA900 dataset does not match the SOP class;
    0xC000-0xC0FF cannot understand / refused (unparseable, bad UIDs, conflicts), each
    with an Error Comment; 0x0124 when the AE policy refuses the caller (nothing stored).
    Never a success for an object that is not stored.
    """
    request.respond(_store(request))


def _store(request: DimseRequest) -> Status:
    calling = request.calling_ae
    try:
        refused = policy.refusal(request, request.archive, "store")
        if refused is not None:
            return refused
        if request.context.abstract_syntax != request.sop_class:
            return Status(0xA900, "Affected SOP Class differs from the presentation context")
        spool = request.message.dataset
        if spool is not None:
            spool.consumed = True  # from here on the file is ingest's (see FileSpool)
        result = request.archive.ingest_file(
            request.dataset_path, source="dimse", calling_ae=calling,
            expected_sop_class=request.sop_class, consume=True,
            sha256=getattr(spool, "sha256", None), content=getattr(spool, "content", None),
            caller=Caller.for_ae(calling, "write"),
        )
    except PacsError as exc:
        log.info("C-STORE from %s refused: %s (0x%04X)", calling, exc.reason, exc.dimse_status)
        return Status(exc.dimse_status, error_comment(exc))
    except Exception:
        log.exception("C-STORE from %s failed", calling)
        return Status(PROCESSING_FAILURE, "internal error while storing")
    request.audit_subjects["study_uid"] = result.study_uid  # audit trail (pacs/dimse/audit.py)
    if result.sop_instance_uid != request.command.text(cmd.AFFECTED_SOP_INSTANCE):
        # Stored, but the command named another instance: PS3.4 B.2.3 has no code for
        # this; the object is kept under the UID in its dataset.
        log.warning("C-STORE from %s: AffectedSOPInstanceUID differs from dataset", calling)
    return Status(SUCCESS)
