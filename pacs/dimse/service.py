"""Dispatch of received DIMSE requests to the service handlers, and their answers.

A handler gets a :class:`DimseRequest` (the association's requestor, the presentation
context, the command set, the data set) and answers through it: :meth:`DimseRequest.respond`
builds the response command set (PS3.7 9.3, 10.3) and sends it with an optional data set.
Unknown requests get 0x0211 "unrecognized operation" (PS3.7 C.5.4); an unexpected error
in a handler gets 0x0110 "processing failure" with an Error Comment and the association
goes on serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Callable

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from ..errors import InvalidQuery
from . import command as cmd
from . import audit
from .association import Association, Context, Message
from .status import Status

if TYPE_CHECKING:
    from ..archive import Archive

log = logging.getLogger(__name__)

UNRECOGNIZED_OPERATION, PROCESSING_FAILURE = 0x0211, 0x0110

#: The response Command Field of each request.
RESPONSE_FIELD = {
    cmd.C_STORE_RQ: cmd.C_STORE_RSP, cmd.C_FIND_RQ: cmd.C_FIND_RSP, cmd.C_MOVE_RQ: cmd.C_MOVE_RSP,
    cmd.C_GET_RQ: cmd.C_GET_RSP, cmd.C_ECHO_RQ: cmd.C_ECHO_RSP, cmd.N_ACTION_RQ: cmd.N_ACTION_RSP,
    cmd.N_CREATE_RQ: cmd.N_CREATE_RSP, cmd.N_SET_RQ: cmd.N_SET_RSP, cmd.N_GET_RQ: cmd.N_GET_RSP,
    cmd.N_DELETE_RQ: cmd.N_DELETE_RSP, cmd.N_EVENT_REPORT_RQ: cmd.N_EVENT_REPORT_RSP,
}


@dataclass
class DimseRequest:
    """One request being served: what a handler reads and how it answers."""

    assoc: Association
    message: Message
    archive: Archive
    _identifier: Dataset | None = field(default=None, repr=False)
    #: Audit trail (pacs/dimse/audit.py): the last status sent, and what handlers learnt of
    #: the data concerned (e.g. the stored instance's study and patient).
    last_status: Status | None = field(default=None, repr=False)
    audit_subjects: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def context(self) -> Context:
        return self.message.context

    @property
    def command(self) -> cmd.Command:
        return self.message.command

    @property
    def calling_ae(self) -> str:
        return self.assoc.requestor.ae_title

    @property
    def sop_class(self) -> str:
        return self.command.sop_class

    @property
    def dataset_path(self) -> str | None:
        spool = self.message.dataset
        return spool.path if spool is not None else None

    def identifier(self) -> Dataset:
        """The data set decoded with the context's transfer syntax (an empty one if none).
        Every element is decoded here, items too: one that cannot be (its length or value
        does not fit its VR) raises :class:`~pacs.errors.InvalidQuery`, 0xA900."""
        if self._identifier is None:
            spool = self.message.dataset
            data = bytes(spool.data) if spool is not None and spool.data is not None else b""
            syntax = UID(self.context.transfer_syntax)
            try:
                identifier = read_dataset(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
            except Exception as exc:  # pydicom raises many types on malformed input
                raise InvalidQuery(f"data set cannot be decoded ({type(exc).__name__})") from None
            decode_elements(identifier)
            self._identifier = identifier
        return self._identifier

    def cancelled(self) -> bool:
        """Whether the requestor sent a C-CANCEL-RQ for this request."""
        return self.assoc.cancelled(self.command.message_id)

    def respond(self, status: Status | int, *, dataset: bytes | Dataset | None = None,
                extra: dict[int, cmd.Value] | None = None, defer: bool = False) -> None:
        """Send a response with ``status`` (and its Error Comment) and an optional data set;
        ``defer``: it may wait for the next response (:meth:`Association.send`)."""
        if isinstance(status, int):
            status = Status(status)
        self.last_status = status  # audit
        if isinstance(dataset, Dataset):
            dataset = encode_dataset(dataset, self.context.transfer_syntax)
        command = cmd.response(self.command, RESPONSE_FIELD[self.command.field], status.code,
                               comment=status.comment, has_dataset=dataset is not None, extra=extra)
        self.assoc.send(self.context.context_id, command, dataset, defer=defer)


def decode_elements(ds: Dataset) -> None:
    """Decode every element of ``ds`` and of its items now (pydicom decodes an element on
    first access, so a malformed one would otherwise fail in the middle of a handler)."""
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
        except Exception as exc:  # e.g. a UL of 9 bytes, a bad item in a sequence
            raise InvalidQuery(f"element {tag} cannot be decoded ({type(exc).__name__})") from None
        if elem.VR == "SQ":
            for item in elem.value:
                decode_elements(item)


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` encoded in an uncompressed transfer syntax (identifiers, event information)."""
    syntax = UID(transfer_syntax)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
    write_dataset(buffer, ds)
    return buffer.getvalue()


Handler = Callable[[DimseRequest], None]


@dataclass(frozen=True)
class ServiceBinding:
    """A SOP class served by a package outside ``pacs/`` (entry-point group ``pacs.dimse``,
    e.g. the Modality Worklist and MPPS SCPs of ``worklist/``): its presentation context
    (SCP role, uncompressed syntaxes by default) and its handler per Command Field."""

    sop_class: str
    handlers: dict[int, Handler]
    transfer_syntaxes: tuple[str, ...] = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


class Dispatcher:
    """Command Field (and SOP class where several services share one) -> handler."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._by_field: dict[int, Handler] = {}
        self._by_sop_class: dict[tuple[int, str], Handler] = {}

    def register(self, field: int, handler: Handler, sop_class: str | None = None) -> None:
        """``handler`` for ``field``; with ``sop_class`` only for requests of that SOP class
        (e.g. the MWL C-FIND), which then take precedence over the field's default."""
        if sop_class is None:
            self._by_field[field] = handler
        else:
            self._by_sop_class[(field, sop_class)] = handler

    def dispatch(self, assoc: Association, message: Message) -> None:
        request = DimseRequest(assoc, message, self.archive)
        field = message.command.field
        handler = self._by_sop_class.get((field, message.command.sop_class)) or self._by_field.get(field)
        try:
            if handler is None:
                if message.command.field in RESPONSE_FIELD:
                    request.respond(Status(UNRECOGNIZED_OPERATION, "operation not supported"))
                return  # a stray response or C-CANCEL: nothing to answer
            handler(request)
        except OSError:  # the connection: the association ends
            raise
        except Exception:
            if not assoc.is_established:
                raise
            log.exception("DIMSE request 0x%04X failed", message.command.field)
            request.respond(Status(PROCESSING_FAILURE, "internal error"))
        finally:
            if message.dataset is not None:
                message.dataset.discard()
            if handler is not None:
                audit.record_request(request)  # audit trail: never raises
