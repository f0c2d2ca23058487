"""The C-STORE sub-operations of C-MOVE and C-GET (PS3.4 C.4.2.3, C.4.3.3), shared.

:func:`run_suboperations` sends each instance through a :class:`Sender`, answers a
pending response with the counts after each, honours a C-CANCEL before each, and ends
with the final response: 0x0000 all completed, 0xB000 some failed or warned, 0xA702 all
failed, 0xFE00 cancelled; the Failed SOP Instance UID List (0008,0058) as identifier
whenever a sub-operation failed or the retrieve was cancelled.

Each object is read from the blob store only when its turn comes, one at a time; it goes
as stored when the peer accepted its transfer syntax, else decoded to an uncompressed
syntax the peer accepted (:func:`pacs.retrieve.choose_syntax`), else it fails alone.
"""

from __future__ import annotations

import itertools
import logging
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Protocol

from pydicom.uid import UID

from .. import retrieve
from ..access import Caller
from ..errors import InvalidQuery, PacsError, StorageUnavailable
from ..query import Level
from ..retrieve import RetrieveFailure, RetrieveItem
from . import command as cmd
from . import policy
from .scu import AssociationError, c_store_rq
from .status import CANCEL, PENDING, SUCCESS, Status, status

if TYPE_CHECKING:
    from .service import DimseRequest

log = logging.getLogger(__name__)

#: Failures before any sub-operation (PS3.4 C.4.2.1.5, C.4.3.1.4).
UNABLE_TO_CALCULATE, IDENTIFIER_INVALID, UNABLE_TO_PROCESS = 0xA701, 0xA900, 0xC000
#: Status of a sub-operation whose object could not be sent (never on the wire).
SUBOPERATION_FAILED = 0xC000
ALL_FAILED, SOME_FAILED = 0xA702, 0xB000
#: C-STORE warning statuses (PS3.4 B.2.3).
STORE_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})
#: The counts are US (PS3.7 9.3.2.2): at most 65,535 sub-operations per request, else
#: a failure in the "unable to process" range (0xC516 C-MOVE, 0xC416 C-GET).
MAX_SUBOPERATIONS = 0xFFFF
TOO_MANY_MOVE, TOO_MANY_GET = 0xC516, 0xC416
#: Largest Failed SOP Instance UID List we encode (an Explicit VR value has 16 bits of length).
MAX_FAILED_LIST = 0xFFF0


class Sender(Protocol):
    def send(self, item: RetrieveItem) -> int:
        """Send one instance; its C-STORE status (or :data:`SUBOPERATION_FAILED`)."""

    def close(self) -> None:
        """Release whatever :meth:`send` used."""


@dataclass
class Progress:
    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def record(self, code: int, sop_instance_uid: str) -> None:
        self.remaining -= 1
        if code == SUCCESS:
            self.completed += 1
        elif code in STORE_WARNINGS:
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)

    def counts(self, *, with_remaining: bool) -> dict[int, cmd.Value]:
        return {cmd.REMAINING: self.remaining if with_remaining else None, cmd.COMPLETED: self.completed,
                cmd.FAILED: self.failed, cmd.WARNING: self.warning}


def failed_list(uids: list[str], transfer_syntax: str) -> bytes:
    """An identifier holding only (0008,0058) Failed SOP Instance UID List."""
    value = b""
    for count in range(len(uids), -1, -1):  # as many UIDs as fit in one value
        value = "\\".join(uids[:count]).encode("ascii")
        if len(value) <= MAX_FAILED_LIST:
            break
    if len(value) % 2:
        value += b"\x00"
    if UID(transfer_syntax).is_implicit_VR:
        return struct.pack("<HHI", 0x0008, 0x0058, len(value)) + value
    return struct.pack("<HH2sH", 0x0008, 0x0058, b"UI", len(value)) + value


def plan_or_refusal(request: DimseRequest, operation: str,
                    models: dict[str, tuple[Level, ...]]) -> Status | list[RetrieveItem]:
    """The instances a C-MOVE/C-GET identifier selects (one query, :func:`pacs.retrieve.plan`),
    or the failure to answer before any sub-operation, with an Error Comment: 0x0124 the
    AE policy refuses ``operation``, 0xA900 invalid identifier or information model,
    0xA701 index unavailable, 0xC000 anything else (PS3.4 C.4.2.1.5, C.4.3.1.4)."""
    refused = policy.refusal(request, request.archive, operation)
    if refused is not None:
        return refused
    try:
        levels = models.get(request.sop_class)
        if levels is None:
            raise InvalidQuery("unsupported information model")
        query = retrieve.query_from_identifier(request.identifier(), levels)
        return request.archive.plan_retrieve(query, caller=Caller.for_ae(request.calling_ae, "read"))
    except InvalidQuery as exc:
        return status(IDENTIFIER_INVALID, exc)
    except StorageUnavailable as exc:
        return status(UNABLE_TO_CALCULATE, exc)
    except PacsError as exc:
        return status(UNABLE_TO_PROCESS, exc)
    except Exception:
        log.exception("C-%s failed", operation.upper())
        return status(UNABLE_TO_PROCESS, "internal error")


def run_suboperations(request: DimseRequest, items: list[RetrieveItem], sender: Sender) -> None:
    """Send ``items`` and answer the C-MOVE/C-GET request as described in the module doc."""
    if len(items) > MAX_SUBOPERATIONS:
        sender.close()
        code = TOO_MANY_MOVE if request.command.field == cmd.C_MOVE_RQ else TOO_MANY_GET
        request.respond(Status(code, f"{len(items)} instances match; at most {MAX_SUBOPERATIONS} per request"))
        return
    progress = Progress(len(items))
    syntax = request.context.transfer_syntax
    try:
        for item in items:
            if request.cancelled():
                sender.close()
                request.respond(Status(CANCEL), extra=progress.counts(with_remaining=True),
                                dataset=failed_list(progress.failed_uids, syntax))
                return
            progress.record(sender.send(item), item.sop_instance_uid)
            request.respond(Status(PENDING), extra=progress.counts(with_remaining=True))
    finally:
        sender.close()
    if not progress.failed and not progress.warning:
        request.respond(Status(SUCCESS), extra=progress.counts(with_remaining=False))
        return
    code = ALL_FAILED if progress.failed == len(items) else SOME_FAILED
    request.respond(Status(code), extra=progress.counts(with_remaining=False),
                    dataset=failed_list(progress.failed_uids, syntax))


def payload(archive, item: RetrieveItem, accepted: dict[str, list[str]]) -> tuple[str, Iterator[bytes]]:  # type: ignore[no-untyped-def]
    """The transfer syntax to send ``item`` in and its data set bytes: as stored (streamed),
    or transcoded. The first chunk is read before anything is sent, so a missing or
    unreadable object fails this sub-operation only. Raises RetrieveFailure."""
    target = retrieve.choose_syntax(item.transfer_syntax_uid, accepted.get(item.sop_class_uid, []))
    if target is None:
        raise RetrieveFailure(f"peer accepted no usable transfer syntax for "
                              f"{UID(item.sop_class_uid).name} in {UID(item.transfer_syntax_uid).name}")
    if target == item.transfer_syntax_uid:
        chunks = retrieve.stream_dataset(archive, item)
        first = next(chunks, b"")
        return target, itertools.chain([first], chunks)
    return target, iter([retrieve.transcoded_bytes(archive, item, target)])


class SameAssociationSender:
    """C-GET: C-STOREs on the requesting association, on the storage contexts where the
    requestor took the SCP role (PS3.4 C.4.3.3; PS3.7 D.3.3.4)."""

    def __init__(self, request: DimseRequest) -> None:
        self.request = request
        self.contexts: dict[tuple[str, str], int] = {}
        self.accepted: dict[str, list[str]] = {}
        for context in request.assoc.contexts.values():
            if context.as_scu:
                self.contexts.setdefault((context.abstract_syntax, context.transfer_syntax), context.context_id)
                self.accepted.setdefault(context.abstract_syntax, []).append(context.transfer_syntax)
        self._ids = itertools.count(1)

    def send(self, item: RetrieveItem) -> int:
        request = self.request
        try:
            target, chunks = payload(request.archive, item, self.accepted)
        except (RetrieveFailure, PacsError) as exc:
            log.info("C-GET sub-operation failed: %s", exc.reason)
            return SUBOPERATION_FAILED
        msg_id = next(self._ids) & 0xFFFF
        command = c_store_rq(msg_id, item.sop_class_uid, item.sop_instance_uid, None, None)
        request.assoc.send(self.contexts[(item.sop_class_uid, target)], command, chunks)
        answer = request.assoc.receive_response(msg_id)
        if answer.dataset is not None:
            answer.dataset.discard()
        return answer.command.us(cmd.STATUS, SUBOPERATION_FAILED) or 0

    def close(self) -> None:
        return None


class SubAssociationSender:
    """C-MOVE: C-STOREs on our association to the Move Destination (:mod:`pacs.dimse.scu`)."""

    def __init__(self, store, originator: DimseRequest) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self.originator = originator
        self.accepted: dict[str, list[str]] = {}
        self.by_key = {}
        for context in store.accepted:
            self.accepted.setdefault(context.abstract_syntax, []).append(context.transfer_syntax)
            self.by_key.setdefault((context.abstract_syntax, context.transfer_syntax), context)
        self._ids = itertools.count(1)

    def send(self, item: RetrieveItem) -> int:
        if not self.store.is_established:
            return SUBOPERATION_FAILED
        try:
            target, chunks = payload(self.originator.archive, item, self.accepted)
            code, _ = self.store.store(
                self.by_key[(item.sop_class_uid, target)], item.sop_instance_uid, chunks,
                msg_id=next(self._ids) & 0xFFFF, originator_aet=self.originator.calling_ae,
                originator_id=self.originator.command.message_id)
            return code
        except (RetrieveFailure, PacsError) as exc:
            log.info("C-MOVE sub-operation failed: %s", exc.reason)
        except (OSError, AssociationError) as exc:
            log.warning("C-MOVE sub-association to %s broken: %s", self.store.called_ae, exc)
        return SUBOPERATION_FAILED

    def close(self) -> None:
        self.store.release()
