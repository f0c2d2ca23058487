"""C-MOVE SCP (PS3.4 C.4.2): Patient Root and Study Root, every level.

The identifier selects the instances (one query, :func:`pacs.retrieve.plan`); the Move
Destination must be in the AE registry; the sub-association is our lean Storage SCU
(:mod:`pacs.dimse.scu`), which streams the stored bytes without decoding them and tells
us exactly which transfer syntax the destination accepted per presentation context. The
sub-operations, pending responses, cancel and final status are
:func:`pacs.dimse.suboperations.run_suboperations`.

Proposed presentation contexts (at most 128, :func:`propose_contexts`): per SOP class
its stored transfer syntaxes, each in a context of its own, and Explicit plus Implicit
VR Little Endian in a fallback context. An object goes as stored when its syntax was
accepted, else transcoded (:func:`pacs.retrieve.choose_syntax`), else it fails without
stopping the others.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)

from .. import aes
from ..errors import StorageUnavailable
from ..query import Level
from ..retrieve import RetrieveItem, TRANSCODE_TARGETS
from . import command as cmd
from .pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from .scu import AssociationError, StoreAssociation
from .status import Status, status as failure
from .suboperations import UNABLE_TO_CALCULATE, SubAssociationSender, plan_or_refusal, run_suboperations

if TYPE_CHECKING:
    from .service import DimseRequest

log = logging.getLogger(__name__)

DESTINATION_UNKNOWN = 0xA801
MAX_CONTEXTS = 128

MODELS: dict[str, tuple[Level, ...]] = {
    str(PatientRootQueryRetrieveInformationModelMove): (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    str(StudyRootQueryRetrieveInformationModelMove): (Level.STUDY, Level.SERIES, Level.IMAGE),
}


def propose_contexts(items: list[RetrieveItem]) -> list[tuple[str, list[str]]]:
    """Presentation contexts for the sub-association, at most 128.

    Per (SOP class, stored syntax) a context with that syntax alone, and per SOP class a
    fallback context with Explicit and Implicit VR Little Endian. Separate contexts
    because an acceptor picks one syntax per context by its own preference (pynetdicom's
    defaults put Implicit VR first): the stored one must not compete with the others,
    or objects would be re-encoded for nothing. When they do not all fit, every SOP
    class keeps its fallback first, then the most frequent stored syntaxes.
    """
    pairs = Counter((i.sop_class_uid, i.transfer_syntax_uid) for i in items)
    classes = Counter(i.sop_class_uid for i in items)
    exact = [(sop_class, [syntax]) for (sop_class, syntax), _ in pairs.most_common()]
    fallback = [(sop_class, list(TRANSCODE_TARGETS)) for sop_class, _ in classes.most_common()]
    if len(exact) + len(fallback) <= MAX_CONTEXTS:
        return exact + fallback
    fallback = fallback[:MAX_CONTEXTS]
    return fallback + exact[:MAX_CONTEXTS - len(fallback)]


def unknown_destination_comment(title: str) -> str:
    """How to register an unknown destination, in the 64 characters of an Error Comment."""
    forms = (
        f"unknown move destination {title}: run pacs ae add {title} HOST PORT",
        f"unknown move destination {title}: pacs ae add {title} HOST PORT",
        f"unknown destination {title}: pacs ae add {title} HOST PORT",
        f"unknown destination {title}: pacs ae add or POST /api/aes",
        f"unknown destination {title}: register with pacs ae add",
    )
    return next((form for form in forms if len(form) <= 64), forms[-1][:64])


def handle_move(request: DimseRequest) -> None:
    """C-MOVE (PS3.4 C.4.2.2): sub-operations to the Move Destination.

    Failures before any sub-operation, each with an Error Comment: 0x0124 refused by the
    AE policy, 0xA900 invalid identifier, 0xA701 index unavailable, 0xA801 destination
    not registered or unreachable, 0xC000 unexpected error. A C-CANCEL is honoured
    before every sub-operation (0xFE00 with the counts and the failed UIDs so far).
    """
    destination = request.command.text(cmd.MOVE_DESTINATION)
    outcome = plan_or_refusal(request, "move", MODELS)
    if isinstance(outcome, list):
        outcome = _open_destination(request, destination, outcome)
    if isinstance(outcome, Status):
        log.info("C-MOVE from %s to %s: 0x%04X %s", request.calling_ae, destination, outcome.code, outcome.comment)
        request.respond(outcome)
        return
    items, store = outcome
    log.info("C-MOVE of %d instances to %s requested by %s", len(items), destination, request.calling_ae)
    run_suboperations(request, items, SubAssociationSender(store, request) if store else _NoSender())


class _NoSender:
    def send(self, item: RetrieveItem) -> int:
        raise AssertionError("no instances to send")

    def close(self) -> None:
        return None


def _open_destination(request: DimseRequest, destination: str,
                      items: list[RetrieveItem]) -> Status | tuple[list[RetrieveItem], StoreAssociation | None]:
    """The sub-association to the registered destination (none when nothing is to be sent)."""
    archive = request.archive
    try:
        entry = aes.get_ae(archive.db, destination)
    except StorageUnavailable as exc:
        return failure(UNABLE_TO_CALCULATE, exc)
    if entry is None:
        return failure(DESTINATION_UNKNOWN, unknown_destination_comment(destination))
    if not items:
        return items, None
    settings = archive.settings
    store = StoreAssociation(
        settings.ae_title, destination, propose_contexts(items), max_pdu=settings.max_pdu_size,
        connect_timeout=30.0, dimse_timeout=settings.dimse_timeout,
        implementation_uid=IMPLEMENTATION_CLASS_UID, implementation_version=IMPLEMENTATION_VERSION)
    try:
        store.connect(entry.host, entry.port)
    except (OSError, AssociationError) as exc:
        reason = str(exc) if isinstance(exc, AssociationError) else type(exc).__name__
        log.info("C-MOVE destination %s (%s:%d) unreachable: %s", destination, entry.host, entry.port, reason)
        return failure(DESTINATION_UNKNOWN, f"cannot reach {destination} at {entry.host}:{entry.port}: {reason}")
    return items, store
