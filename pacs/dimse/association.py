"""One accepted association: negotiation, message assembly and sending (PS3.8 7, 9; PS3.7 8).

Each association runs in its own thread with a blocking socket, from the A-ASSOCIATE-RQ
to the release or abort. A received message is handled in that same thread and its
response written straight to the socket: no queue, no hand-off between threads, no
polling (pynetdicom crosses two threads per message and polls its queues every
millisecond, which cost ~4 ms per C-STORE round trip: docs/performance.md).

While a long operation runs (C-FIND, C-MOVE, C-GET), :meth:`Association.cancelled` reads
whatever the peer has sent meanwhile without blocking, so a C-CANCEL-RQ is seen between
two responses.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE

from . import pdu
from .. import tls
from .negotiation import Context, accept, reject
from .command import C_CANCEL_RQ, C_STORE_RQ, AFFECTED_SOP_CLASS, AFFECTED_SOP_INSTANCE, MESSAGE_ID_RESPONDED, Command
from .spool import DatasetTooLarge, FileSpool, MemorySpool, file_meta

if TYPE_CHECKING:
    from .server import AcceptorConfig

log = logging.getLogger(__name__)

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
#: Largest PDV we send when the peer sets no limit (Maximum Length 0).
UNLIMITED_PDV = 1 << 20
#: Deferred messages are sent once this many bytes wait (see :meth:`Association.send`).
DEFERRED_BYTES = 64 << 10
#: ARTIM timer (PS3.8 9.1.5): how long a rejected or released requestor has to close.
ARTIM_SECONDS = 5.0
#: Bytes asked of the socket per receive call; a PDU body above half of it is received
#: into a buffer of its own instead (see :meth:`Association._take`).
RECEIVE_BUFFER = 64 << 10


class AssociationClosed(Exception):
    """The peer released or aborted the association, or the connection broke."""


class ProtocolError(Exception):
    """The peer broke the upper layer protocol; the association is aborted."""

    def __init__(self, message: str, reason: int = pdu.REASON_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Requestor:
    ae_title: str
    address: str
    port: int
    called_ae_title: str
    #: Subject (RFC 4514) of the verified TLS client certificate; empty without one.
    certificate: str = ""


@dataclass(slots=True)
class Message:
    """A received DIMSE message: its context, command set and data set (if any)."""

    context: Context
    command: Command
    dataset: MemorySpool | FileSpool | None = None


class Association:
    """The acceptor side of one association, driven by :meth:`pacs.dimse.server.DimseServer`."""

    def __init__(self, sock: socket.socket, address: tuple[str, int], config: AcceptorConfig) -> None:
        self.sock = sock
        self.config = config
        self.address = address
        self.requestor = Requestor("", address[0], address[1], "")
        self.contexts: dict[int, Context] = {}
        self.peer_max_pdu = 0
        self.is_established = False
        self.rejection: tuple[int, int, int] | None = None
        self._ready: deque[Message] = deque()
        self._command = bytearray()
        self._current: Message | None = None
        self._cancelled: set[int] = set()
        self._header = bytearray(6)
        # Bytes are received RECEIVE_BUFFER at a time into ``_inbox`` (``_in_start`` to
        # ``_in_end`` not yet taken), so that a small message's PDUs (command and data
        # set) come in one or two receive calls instead of a header and a body call
        # each: every call lets the interpreter lock go to another thread and back.
        self._inbox = bytearray(RECEIVE_BUFFER)
        self._in_start = self._in_end = 0
        self._received = False  # whether reading the current PDU called the socket
        # Larger PDU bodies are received straight into this buffer, reused while large
        # enough: a fresh bytearray per PDU cost an allocation and a zero-fill of up to
        # max PDU bytes. It keeps the size of the largest such PDU (at most PACS_MAX_PDU_SIZE).
        # What is read from a body is copied or written out before the next PDU is read.
        self._body = bytearray(64 << 10)
        self._outbox: list[bytes | memoryview] = []
        self._outbox_bytes = 0
        self.peer: tls.PeerCertificate | None = None
        self._tls_thread: int | None = None  # the thread that completed the TLS handshake

    def handshake(self) -> None:
        """Complete the TLS handshake of a socket accepted on the DICOM TLS port (PS3.15
        B.1), within the ACSE timeout; a plain socket has nothing to do. Raises
        :class:`ssl.SSLError` (an OSError) when the client fails it."""
        if isinstance(self.sock, ssl.SSLSocket):
            self.sock.settimeout(self.config.acse_timeout)
            self.sock.do_handshake()
            self._tls_thread = threading.get_ident()
            self.peer = tls.peer_certificate(self.sock)

    # -- negotiation (PS3.8 7.1, PS3.7 D.3.3) ---------------------------------------------------
    def negotiate(self, active: int) -> bool:
        """Read the A-ASSOCIATE-RQ and answer it; True when the association is established.

        ``active``: associations already established, for the local-limit check.
        """
        self.sock.settimeout(self.config.acse_timeout)
        kind, body = self._read_pdu(limit=1 << 20)
        if kind != pdu.ASSOCIATE_RQ:
            raise ProtocolError(f"PDU type {kind} before A-ASSOCIATE-RQ")
        request = A_ASSOCIATE_RQ()
        request.decode(bytes(self._header) + bytes(body))
        primitive = request.to_primitive()
        self.requestor = Requestor(str(primitive.calling_ae_title).strip(), self.address[0], self.address[1],
                                   str(primitive.called_ae_title).strip(), self.peer.subject if self.peer else "")
        rejection = self._rejection(request, primitive, active)
        self.rejection = rejection  # audit trail (pacs/dimse/audit.py)
        if rejection is not None:
            self._send(reject(*rejection).encode())
            self._await_close()
            return False
        self._send(self._accept(primitive).encode())
        self.sock.settimeout(self.config.network_timeout)
        self.is_established = True
        return True

    def _rejection(self, request: A_ASSOCIATE_RQ, primitive: A_ASSOCIATE, active: int) -> tuple[int, int, int] | None:
        """(result, source, reason) of PS3.8 9.3.4 when the request must be rejected."""
        if request.protocol_version != 1:
            return 1, 2, 2  # permanent, ACSE: protocol version not supported
        if str(primitive.application_context_name) != pdu.APPLICATION_CONTEXT:
            return 1, 1, 2  # permanent, user: application context name not supported
        if self.config.require_called_ae and self.requestor.called_ae_title != self.config.ae_title:
            return 1, 1, 7  # permanent, user: called AE title not recognised
        if tls.binding_refused(self.requestor.ae_title, self.peer, self.config.tls_client_aes):
            return 1, 1, 3  # permanent, user: calling AE title not recognised
        if active >= self.config.max_associations:
            return 2, 3, 2  # transient, presentation: local limit exceeded
        return None

    def _accept(self, primitive: A_ASSOCIATE) -> A_ASSOCIATE_AC:
        reply, self.contexts, self.peer_max_pdu = accept(primitive, self.config.supported_contexts,
                                                         self.config.max_pdu)
        return reply

    # -- receiving ---------------------------------------------------------------------------
    def receive(self) -> Message:
        """The next complete message; raises :class:`AssociationClosed` at release or abort."""
        while not self._ready:
            self._feed(*self._read_pdu())
        return self._ready.popleft()

    def cancelled(self, message_id: int) -> bool:
        """Whether a C-CANCEL-RQ for ``message_id`` arrived (reads what is waiting, never blocks)."""
        while self._readable():
            self._feed(*self._read_pdu())
        self._take_cancels()
        return message_id in self._cancelled

    def _readable(self) -> bool:
        """Whether a read would not block: bytes received but not yet taken, and TLS
        records already decrypted, count too."""
        if self._in_end > self._in_start:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        return bool(select.select([self.sock], [], [], 0)[0])

    def receive_response(self, message_id: int) -> Message:
        """Wait for the response to our request ``message_id`` (C-STORE of a C-GET),
        noting any C-CANCEL-RQ that arrives first."""
        self.sock.settimeout(self.config.dimse_timeout)
        try:
            while True:
                self._take_cancels()
                for message in self._ready:
                    if message.command.us(MESSAGE_ID_RESPONDED) == message_id and message.command.field & 0x8000:
                        self._ready.remove(message)
                        return message
                self._feed(*self._read_pdu())
        finally:
            self.sock.settimeout(self.config.network_timeout)

    def _take_cancels(self) -> None:
        for message in [m for m in self._ready if m.command.field == C_CANCEL_RQ]:
            self._ready.remove(message)
            self._cancelled.add(message.command.us(MESSAGE_ID_RESPONDED, 0) or 0)

    def _read_pdu(self, limit: int | None = None) -> tuple[int, memoryview]:
        """The next PDU's type and body (PS3.8 9.3.1); the body is valid until the next call."""
        self._received = False
        self._header[:] = self._take(6)
        kind, length = pdu.pdu_header(self._header)
        if length > (limit or self.config.max_pdu + 1024):
            raise ProtocolError(f"PDU of {length} bytes exceeds the negotiated maximum",
                                pdu.REASON_INVALID_PARAMETER)
        body = self._take(length)
        # A peer with Nagle on must not wait ~40 ms for our ACK; the kernel clears the
        # flag again after a while, so it is set after every read from the socket.
        if _QUICKACK is not None and self._received:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass
        if kind == pdu.ABORT:
            raise AssociationClosed("aborted by the peer")
        if kind == pdu.RELEASE_RQ and self.is_established:
            self._discard_partial()
            self._send(pdu.release_rp())
            self.is_established = False
            self._await_close()
            raise AssociationClosed("released")
        return kind, body

    def _take(self, size: int) -> memoryview:
        """The next ``size`` bytes from the peer, valid until the next call."""
        start, held = self._in_start, self._in_end - self._in_start
        if held >= size:
            self._in_start = start + size
            return memoryview(self._inbox)[start:start + size]
        if size > RECEIVE_BUFFER // 2:  # a large body: straight into its own buffer
            if size > len(self._body):
                self._body = bytearray(size)  # a new buffer: views of the old one may live on
            body = memoryview(self._body)[:size]
            body[:held] = memoryview(self._inbox)[start:self._in_end]
            self._in_start = self._in_end = 0
            self._recv_into(body[held:])
            return body
        inbox = memoryview(self._inbox)
        inbox[:held] = inbox[start:self._in_end]  # what was held moves to the front
        while held < size:
            count = self.sock.recv_into(inbox[held:])
            if not count:
                raise AssociationClosed("connection closed by the peer")
            held += count
            self._received = True
        self._in_start, self._in_end = size, held
        return inbox[:size]

    def _recv_into(self, view: memoryview) -> None:
        self._received = True
        received = 0
        while received < len(view):
            count = self.sock.recv_into(view[received:])
            if not count:
                raise AssociationClosed("connection closed by the peer")
            received += count

    def _feed(self, kind: int, body: memoryview) -> None:
        """Add the PDVs of a P-DATA-TF PDU to the message being assembled (PS3.8 E.2)."""
        if kind != pdu.P_DATA:
            raise ProtocolError(f"unexpected PDU type {kind}")
        try:
            pdvs = list(pdu.iter_pdvs(body))
        except ValueError as exc:
            raise ProtocolError(str(exc), pdu.REASON_INVALID_PARAMETER) from None
        for context_id, flags, value in pdvs:
            if flags & pdu.COMMAND:
                self._feed_command(context_id, flags, value)
            else:
                self._feed_dataset(context_id, flags, value)

    def _feed_command(self, context_id: int, flags: int, value: memoryview) -> None:
        if self._current is not None:
            raise ProtocolError("command fragment while a data set was expected")
        self._command += value
        if not flags & pdu.LAST:
            return
        context = self.contexts.get(context_id)
        if context is None:
            raise ProtocolError(f"presentation context {context_id} was not accepted", pdu.REASON_INVALID_PARAMETER)
        try:
            command = Command.decode(self._command)
        except ValueError as exc:
            raise ProtocolError(str(exc), pdu.REASON_INVALID_PARAMETER) from None
        self._command = bytearray()
        message = Message(context, command)
        if not command.has_dataset:
            self._ready.append(message)
            return
        message.dataset = self._spool_for(message)
        self._current = message

    def _spool_for(self, message: Message) -> MemorySpool | FileSpool:
        command = message.command
        if command.field == C_STORE_RQ:
            meta = file_meta(command.text(AFFECTED_SOP_CLASS), command.text(AFFECTED_SOP_INSTANCE),
                             message.context.transfer_syntax, self.requestor.ae_title)
            return FileSpool(self.config.incoming_dir, meta)
        return MemorySpool(self.config.max_identifier_size)

    def _feed_dataset(self, context_id: int, flags: int, value: memoryview) -> None:
        message = self._current
        if message is None or message.dataset is None:
            raise ProtocolError("data set fragment without a command")
        if context_id != message.context.context_id:
            raise ProtocolError("data set on another presentation context than its command")
        try:
            message.dataset.write(value)
        except DatasetTooLarge as exc:
            raise ProtocolError(str(exc), pdu.REASON_INVALID_PARAMETER) from None
        if flags & pdu.LAST:
            message.dataset.close()
            self._current = None
            self._ready.append(message)

    def _discard_partial(self) -> None:
        if self._current is not None and self._current.dataset is not None:
            self._current.dataset.discard()
        self._current = None
        for message in self._ready:
            if message.dataset is not None:
                message.dataset.discard()
        self._ready.clear()

    # -- sending -----------------------------------------------------------------------------
    def send(self, context_id: int, command: bytes, dataset: bytes | Iterable[bytes] | None = None,
             *, defer: bool = False) -> None:
        """One DIMSE message: its command set, then its data set (bytes, or chunks streamed
        as they come), in P-DATA-TF PDUs no larger than the peer accepts (PS3.8 9.3.5).

        ``defer`` (a message whose data set is bytes): queue it and send it with the next
        message that is not deferred or once ~64 KiB are queued: C-FIND's pending
        responses then cost one ``sendmsg`` per batch instead of one each.
        """
        buffers, self._outbox = self._outbox, []
        self._fragment(buffers, context_id, command, pdu.COMMAND | pdu.LAST)
        if dataset is None or isinstance(dataset, (bytes, bytearray, memoryview)):
            if dataset is not None:
                self._fragment(buffers, context_id, dataset, pdu.LAST)
            self._outbox_bytes += len(command) + (len(dataset) if dataset is not None else 0)
            if defer and self._outbox_bytes < DEFERRED_BYTES:
                self._outbox = buffers
            else:
                self._outbox_bytes = 0
                self._send_buffers(buffers)
            return
        self._outbox_bytes = 0
        chunks = iter([dataset] if isinstance(dataset, (bytes, bytearray, memoryview)) else dataset)
        current = next(chunks, b"")
        while True:
            following = next(chunks, None)
            self._fragment(buffers, context_id, current, pdu.LAST if following is None else 0)
            self._send_buffers(buffers)
            buffers = []
            if following is None:
                return
            current = following

    def _fragment(self, buffers: list[bytes | memoryview], context_id: int, data: bytes, last_flags: int) -> None:
        limit = self.peer_max_pdu - 6 if self.peer_max_pdu > 6 else UNLIMITED_PDV
        view, offset = memoryview(data), 0
        command_bit = last_flags & pdu.COMMAND
        while True:
            piece = view[offset:offset + limit]
            offset += len(piece)
            done = offset >= len(view)
            buffers.append(pdu.p_data_header(context_id, last_flags if done else command_bit, len(piece)))
            buffers.append(piece)
            if done:
                return

    def _send_buffers(self, buffers: list[bytes | memoryview]) -> None:
        pdu.send_buffers(self.sock, buffers)

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _await_close(self) -> None:
        """Sta13 (PS3.8 9.2): after A-ASSOCIATE-RJ or A-RELEASE-RP the requestor closes the
        connection; wait for that, at most ARTIM, instead of closing first: a close with
        data unread resets the connection, and the peer may lose our answer (seen over TLS)."""
        try:
            self.sock.settimeout(ARTIM_SECONDS)
            while self.sock.recv(4096):
                pass
        except (OSError, ValueError):
            pass

    def abort(self, reason: int = pdu.REASON_NOT_SPECIFIED, source: int = pdu.ABORT_SOURCE_PROVIDER) -> None:
        """Send an A-ABORT (best effort) and close.

        A TLS connection is used by its own thread only (an SSL object is not thread-safe):
        from another thread (server shutdown), or before its handshake, the connection is
        shut down without an A-ABORT, which wakes its thread.
        """
        if isinstance(self.sock, ssl.SSLSocket) and self._tls_thread != threading.get_ident():
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass
        elif self.sock.fileno() >= 0:
            try:
                self.sock.sendall(pdu.abort(source, reason))
            except OSError:
                pass
        self.is_established = False
        self.close()

    def close(self) -> None:
        self._discard_partial()
        try:
            self.sock.close()
        except OSError:
            pass
