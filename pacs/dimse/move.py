"""C-MOVE SCP (PS3.4 C.4.2): Patient Root and Study Root, every level.

pynetdicom runs the exchange (``service_class.py _move_scp``): our handler yields the
destination, the number of sub-operations, then one ``(0xFF00, Dataset)`` per instance;
pynetdicom opens the sub-association with ``self.ae.associate(...)``, sends a pending
response after each C-STORE, counts completed/failed/warning sub-operations, builds the
Failed SOP Instance UID List and the final status (0x0000, 0xB000, 0xA702, 0xFE00).

Two departures, each in one place:

* **The sub-association is ours.** Our AE (:class:`RetrieveAE`) overrides ``associate``:
  when the move handler passes ``move_sender=`` in the destination's keyword arguments,
  it returns that :class:`MoveSender` instead of a pynetdicom requestor.
  :class:`MoveSender` offers the members ``_move_scp`` uses (``is_established``,
  ``send_c_store``, ``release``, ``dul.socket.close``) on a
  :class:`~pacs.dimse.scu.StoreAssociation`, which streams the stored bytes without
  decoding them and tells us exactly which transfer syntax the destination accepted per
  presentation context (see :mod:`pacs.dimse.scu` for why: about twice the rate). The
  datasets we yield are therefore light references (SOP Class/Instance UID); the object
  is opened from the blob store only while it is sent, one at a time.
  (pynetdicom alone could also tell us the accepted syntaxes: the destination's keyword
  arguments may carry ``evt_handlers`` whose ``EVT_ACCEPTED`` handler sees the
  sub-association; but its C-STORE of a decoded ``Dataset`` is the slow path we avoid.)
* **Early failures carry an Error Comment** (:mod:`pacs.dimse.retrieve_status`).

Proposed presentation contexts (at most 128, :func:`propose_contexts`): per SOP class
its stored transfer syntaxes, each in a context of its own, and Explicit plus Implicit
VR Little Endian in a fallback context. An object goes as stored when its syntax was
accepted, else transcoded (:func:`pacs.retrieve.choose_syntax`), else it fails without
stopping the others.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterator

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)

from .. import aes, retrieve
from .status import status_dataset
from ..errors import InvalidQuery, PacsError, StorageUnavailable
from ..query import Level
from ..retrieve import RetrieveFailure, RetrieveItem, TRANSCODE_TARGETS
from . import policy
from .retrieve_status import C_MOVE_RSP, failure, rewrite_final_response
from .scu import AcceptedContext, AssociationError, StoreAssociation

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from ..archive import Archive

log = logging.getLogger(__name__)

PENDING, CANCEL = 0xFF00, 0xFE00
UNABLE_TO_CALCULATE, DESTINATION_UNKNOWN, IDENTIFIER_INVALID, UNABLE_TO_PROCESS = 0xA701, 0xA801, 0xA900, 0xC000
#: Status a sub-operation gets when we could not send the object (never sent on the wire).
SUBOPERATION_FAILED = 0xC000
MAX_CONTEXTS = 128

MODELS: dict[str, tuple[Level, ...]] = {
    str(PatientRootQueryRetrieveInformationModelMove): (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    str(StudyRootQueryRetrieveInformationModelMove): (Level.STUDY, Level.SERIES, Level.IMAGE),
}


class RetrieveAE(AE):
    """Our AE: pynetdicom's, except that a C-MOVE sub-association is a :class:`MoveSender`."""

    def associate(self, addr: str, port: int, *args: Any, move_sender: MoveSender | None = None,
                  **kwargs: Any) -> Any:
        """pynetdicom's ``associate``, or, with ``move_sender``, that sender connected to
        (addr, port) with the Called AE Title ``ae_title`` (the Move Destination)."""
        if move_sender is None:
            return super().associate(addr, port, *args, **kwargs)
        move_sender.connect(addr, port, str(kwargs.get("ae_title", "ANY-SCP")))
        return move_sender


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


def _reference(item: RetrieveItem) -> Dataset:
    """What we yield per instance: the UIDs pynetdicom counts and lists, and the item."""
    ds = Dataset()
    ds.SOPClassUID = item.sop_class_uid
    ds.SOPInstanceUID = item.sop_instance_uid
    ds.pacs_retrieve_item = item  # plain attribute, not a DICOM element
    return ds


class MoveSender:
    """The sub-association of one C-MOVE, as pynetdicom's ``_move_scp`` uses it."""

    def __init__(self, event: Event, archive: Archive, items: list[RetrieveItem]) -> None:
        self.event, self.archive = event, archive
        self.contexts = propose_contexts(items)
        self.assoc: StoreAssociation | None = None
        self.dul = SimpleNamespace(socket=SimpleNamespace(close=self._close))
        self._by_class: dict[str, list[AcceptedContext]] = {}

    @property
    def is_established(self) -> bool:
        return self.assoc is not None and self.assoc.is_established

    def connect(self, host: str, port: int, called_ae: str) -> None:
        """Open the sub-association; on failure arm the 0xA801 comment and stay closed."""
        settings, ae = self.archive.settings, self.event.assoc.ae
        self.assoc = StoreAssociation(
            settings.ae_title, called_ae, self.contexts, max_pdu=settings.max_pdu_size,
            connect_timeout=float(ae.acse_timeout or 30), dimse_timeout=settings.dimse_timeout,
            implementation_uid=str(ae.implementation_class_uid),
            implementation_version=ae.implementation_version_name or "")
        try:
            self.assoc.connect(host, port)
        except (OSError, AssociationError) as exc:
            reason = str(exc) if isinstance(exc, AssociationError) else type(exc).__name__
            log.info("C-MOVE destination %s (%s:%d) unreachable: %s", called_ae, host, port, reason)
            rewrite_final_response(self.event, failure(
                DESTINATION_UNKNOWN, f"cannot reach {called_ae} at {host}:{port}: {reason}"), C_MOVE_RSP)
            return
        for context in self.assoc.accepted:
            self._by_class.setdefault(context.abstract_syntax, []).append(context)

    def send_c_store(self, dataset: Dataset, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None, originator_id: int | None = None) -> Dataset:
        """One C-STORE sub-operation; returns the destination's status, or a failure
        status when the object could not be sent (counted failed by pynetdicom)."""
        item: RetrieveItem = dataset.pacs_retrieve_item
        if not self.is_established:
            return status_dataset(SUBOPERATION_FAILED, "sub-association lost")
        try:
            context, chunks = self._payload(item)
            assert self.assoc is not None
            status, comment = self.assoc.store(context, item.sop_instance_uid, chunks, msg_id=msg_id,
                                               originator_aet=originator_aet, originator_id=originator_id)
        except RetrieveFailure as exc:
            log.info("C-MOVE sub-operation failed: %s", exc.reason)
            return status_dataset(SUBOPERATION_FAILED, exc.reason)
        except (OSError, AssociationError, PacsError) as exc:
            log.warning("C-MOVE sub-association to %s broken: %s", self.assoc.called_ae if self.assoc else "?", exc)
            return status_dataset(SUBOPERATION_FAILED, "sub-association lost")
        return status_dataset(status, comment)

    def _payload(self, item: RetrieveItem) -> tuple[AcceptedContext, Iterator[bytes]]:
        """The context to use and the dataset bytes: as stored, or transcoded.

        The first chunk is read before anything is sent, so a missing or unreadable
        object fails this sub-operation only.
        """
        accepted = self._by_class.get(item.sop_class_uid, [])
        target = retrieve.choose_syntax(item.transfer_syntax_uid, [c.transfer_syntax for c in accepted])
        if target is None:
            raise RetrieveFailure(f"destination accepted no usable transfer syntax for "
                                  f"{UID(item.sop_class_uid).name} in {UID(item.transfer_syntax_uid).name}")
        context = next(c for c in accepted if c.transfer_syntax == target)
        if target == item.transfer_syntax_uid:
            chunks = retrieve.stream_dataset(self.archive, item)
            first = next(chunks, b"")
            return context, itertools.chain([first], chunks)
        return context, iter([retrieve.transcoded_bytes(self.archive, item, target)])

    def release(self) -> None:
        if self.assoc is not None:
            self.assoc.release()

    def _close(self) -> None:
        if self.assoc is not None:
            self.assoc.close()


def _plan(event: Event, archive: Archive) -> list[RetrieveItem]:
    levels = MODELS.get(str(event.request.AffectedSOPClassUID))
    if levels is None:
        raise InvalidQuery("unsupported information model")
    query = retrieve.query_from_identifier(event.identifier, levels)
    return retrieve.plan(archive, query)


def _items_or_refusal(event: Event, archive: Archive) -> Dataset | list[RetrieveItem]:
    """The instances to move, or the status dataset refusing the request."""
    refused = policy.refusal(event, archive, "move")
    if refused is not None:
        return refused
    try:
        items = _plan(event, archive)
    except InvalidQuery as exc:
        return failure(IDENTIFIER_INVALID, exc)
    except StorageUnavailable as exc:
        return failure(UNABLE_TO_CALCULATE, exc)
    except PacsError as exc:
        return failure(UNABLE_TO_PROCESS, exc)
    return items


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


def handle_move(event: Event, archive: Archive) -> Iterator[Any]:
    """EVT_C_MOVE (PS3.4 C.4.2.2): destination, count, then (0xFF00, reference) per instance.

    Failures before any sub-operation, each with an Error Comment: 0x0124 refused by the
    AE policy, 0xA900 invalid identifier, 0xA701 index unavailable, 0xA801 destination
    not registered (or unreachable), 0xC000 unexpected error. A C-CANCEL is honoured
    before every sub-operation (0xFE00 with the counts and the failed UIDs so far).
    """
    destination = str(event.move_destination).strip()
    calling = str(event.assoc.requestor.ae_title).strip()
    try:
        outcome = _items_or_refusal(event, archive)
        entry = aes.get_ae(archive.db, destination) if isinstance(outcome, list) else None
    except StorageUnavailable as exc:
        outcome, entry = failure(UNABLE_TO_CALCULATE, exc), None
    except Exception:
        log.exception("C-MOVE failed")
        outcome, entry = failure(UNABLE_TO_PROCESS, "internal error"), None
    if isinstance(outcome, list) and entry is None:
        outcome = failure(DESTINATION_UNKNOWN, unknown_destination_comment(destination))
    if not isinstance(outcome, list):
        log.info("C-MOVE from %s to %s: 0x%04X %s", calling, destination, outcome.Status, outcome.ErrorComment)
        rewrite_final_response(event, outcome, C_MOVE_RSP)
        yield None, None  # pynetdicom's early exit; the rewrite sets the real status
        return
    items = outcome
    log.info("C-MOVE of %d instances to %s requested by %s", len(items), destination, calling)
    yield entry.host, entry.port, {"move_sender": MoveSender(event, archive, items)} if items else {}
    yield len(items)
    for item in items:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, _reference(item)
