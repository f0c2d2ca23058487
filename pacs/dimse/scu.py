"""A lean Storage SCU association: the requestor side of C-MOVE sub-operations.

It speaks just enough of the DICOM upper layer (PS3.8 9.3: A-ASSOCIATE-RQ/AC/RJ,
P-DATA-TF, A-RELEASE, A-ABORT) and of DIMSE (PS3.7 9.3.1: C-STORE-RQ/RSP) to send
objects whose dataset bytes are already encoded, streaming them from the blob store
without decoding them.

Why not pynetdicom's requestor: its C-STORE takes a decoded ``Dataset``, re-encodes it
with pydicom (~1 ms for a CT header) and hands every PDU to the DUL thread through
queues polled every millisecond. On this project's 2-core machine a loop of pynetdicom
C-STOREs reaches ~150-300 CT slices/s into dcmtk storescp, the same loop sending the
stored bytes this way ~1,100/s (inside the C-MOVE SCP, whose pending responses
pynetdicom still builds, about twice pynetdicom's rate: docs/performance.md). The
association is also where we learn, exactly, which transfer syntax the destination
accepted for each presentation context, so an object is transcoded only when its own
syntax was refused.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Iterable

from .pdu import (
    ABORT, APPLICATION_CONTEXT, ASSOCIATE_AC, ASSOCIATE_RJ, ASSOCIATE_RQ, P_DATA, RELEASE_RP,
    ae_title as _ae, element as _element, item as _item, parse_command, send_buffers, sub_items as _sub_items,
    uid_value as _uid,
)
from .pdu import abort as abort_pdu, release_rq

#: Largest PDV we send when the peer sets no limit (Maximum Length 0).
UNLIMITED_PDV = 1 << 20
#: Largest PDU we read (we only receive association replies and C-STORE responses).
MAX_INCOMING_PDU = 16 << 20


class AssociationError(Exception):
    """The association could not be established or broke (reason in the message)."""


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str










def associate_rq(calling: str, called: str, contexts: list[tuple[str, list[str]]],
                 max_pdu: int, implementation_uid: str, implementation_version: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2); context ids are 1, 3, 5, ... in list order."""
    body = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for index, (abstract, syntaxes) in enumerate(contexts):
        payload = struct.pack(">BBBB", 2 * index + 1, 0, 0, 0) + _item(0x30, abstract.encode())
        payload += b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        body += _item(0x20, payload)
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, implementation_uid.encode())
    if implementation_version:
        user += _item(0x55, implementation_version.encode()[:16])
    body += _item(0x50, user)
    return struct.pack(">BBI", ASSOCIATE_RQ, 0, len(body)) + body




def parse_associate_ac(body: bytes, proposed: list[tuple[str, list[str]]]) -> tuple[list[AcceptedContext], int]:
    """Accepted presentation contexts and the peer's maximum PDU length from an A-ASSOCIATE-AC."""
    accepted, max_length = [], 0
    for kind, value in _sub_items(body[68:]):
        if kind == 0x21 and len(value) >= 4 and value[2] == 0:
            context_id = value[0]
            index = (context_id - 1) // 2
            syntax = next((v for k, v in _sub_items(value[4:]) if k == 0x40), b"")
            if 0 <= index < len(proposed):
                accepted.append(AcceptedContext(
                    context_id, proposed[index][0], syntax.decode("ascii", "replace").rstrip("\x00 ")))
        elif kind == 0x50:
            for sub, sub_value in _sub_items(value):
                if sub == 0x51 and len(sub_value) == 4:
                    max_length = struct.unpack(">I", sub_value)[0]
    return accepted, max_length


def c_store_rq(msg_id: int, sop_class: str, sop_instance: str,
               originator_aet: str | None, originator_id: int | None) -> bytes:
    """The command set of a C-STORE-RQ (PS3.7 9.3.1.1), priority medium."""
    body = _element(0, 0x0002, _uid(sop_class)) + _element(0, 0x0100, struct.pack("<H", 0x0001))
    body += _element(0, 0x0110, struct.pack("<H", msg_id)) + _element(0, 0x0700, struct.pack("<H", 0))
    body += _element(0, 0x0800, struct.pack("<H", 0x0000)) + _element(0, 0x1000, _uid(sop_instance))
    if originator_aet:
        title = originator_aet.encode("ascii", "replace")[:16]
        body += _element(0, 0x1030, title + b" " * (len(title) % 2))
    if originator_id is not None:
        body += _element(0, 0x1031, struct.pack("<H", originator_id))
    return _element(0, 0x0000, struct.pack("<I", len(body))) + body




class StoreAssociation:
    """One association to a Storage SCP, used from one thread.

    ``contexts`` are (SOP Class UID, [transfer syntax UIDs]) to propose, at most 128.
    After :meth:`connect`, :attr:`accepted` lists what the peer accepted.
    """

    def __init__(self, calling_ae: str, called_ae: str, contexts: list[tuple[str, list[str]]], *,
                 max_pdu: int, connect_timeout: float, dimse_timeout: float,
                 implementation_uid: str, implementation_version: str = "") -> None:
        if not 0 < len(contexts) <= 128:
            raise ValueError("between 1 and 128 presentation contexts")
        self.calling_ae, self.called_ae, self.contexts = calling_ae, called_ae, contexts
        self.max_pdu = max_pdu
        self.connect_timeout, self.dimse_timeout = connect_timeout, dimse_timeout
        self.implementation = (implementation_uid, implementation_version)
        self.accepted: list[AcceptedContext] = []
        self.peer_max_pdu = 0
        self.is_established = False
        self._sock: socket.socket | None = None

    # -- association ----------------------------------------------------------------------
    def connect(self, host: str, port: int) -> None:
        """Open the association; raises :class:`AssociationError` (or OSError) on failure."""
        self._sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(associate_rq(self.calling_ae, self.called_ae, self.contexts,
                                        self.max_pdu, *self.implementation))
        kind, body = self._read_pdu()
        if kind == ASSOCIATE_RJ:
            self.close()
            result, source, reason = tuple(body[1:4]) if len(body) >= 4 else (0, 0, 0)
            raise AssociationError(f"association rejected (result {result}, source {source}, reason {reason})")
        if kind != ASSOCIATE_AC:
            self.close()
            raise AssociationError(f"unexpected PDU type {kind} instead of A-ASSOCIATE-AC")
        self.accepted, self.peer_max_pdu = parse_associate_ac(body, self.contexts)
        self._sock.settimeout(self.dimse_timeout)
        self.is_established = True

    def release(self) -> None:
        """A-RELEASE (PS3.8 7.2): request, wait for the reply, close."""
        if self.is_established and self._sock is not None:
            self.is_established = False
            try:
                self._sock.sendall(release_rq())
                while self._read_pdu()[0] not in (RELEASE_RP, ABORT):
                    pass
            except (OSError, AssociationError):
                pass
        self.close()

    def abort(self) -> None:
        """A-ABORT from the service user (PS3.8 7.3), then close."""
        if self._sock is not None and self.is_established:
            try:
                self._sock.sendall(abort_pdu())
            except OSError:
                pass
        self.is_established = False
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    # -- C-STORE ----------------------------------------------------------------------------
    def store(self, context: AcceptedContext, sop_instance: str, chunks: Iterable[bytes], *,
              msg_id: int, originator_aet: str | None = None,
              originator_id: int | None = None) -> tuple[int, str]:
        """Send one C-STORE-RQ whose dataset is ``chunks`` (already encoded in the context's
        transfer syntax) and return the response's (Status, Error Comment).

        Any exception (:class:`AssociationError` or OSError when the association breaks, or
        one raised by ``chunks`` midway) aborts the association, which is then unusable: a
        half-sent message cannot be taken back.
        """
        if not self.is_established:
            raise AssociationError("association not established")
        try:
            command = c_store_rq(msg_id, context.abstract_syntax, sop_instance, originator_aet, originator_id)
            self._send_pdvs(context.context_id, command, 0x03)
            self._send_dataset(context.context_id, chunks)
            return self._read_store_response(msg_id)
        except BaseException:
            self.abort()
            raise

    def _pdv_limit(self) -> int:
        return self.peer_max_pdu - 6 if self.peer_max_pdu > 6 else UNLIMITED_PDV

    def _send_dataset(self, context_id: int, chunks: Iterable[bytes]) -> None:
        """Data PDVs, the last one flagged last (PS3.8 E.2), one chunk looked ahead."""
        iterator = iter(chunks)
        current = next(iterator, b"")
        while True:
            following = next(iterator, None)
            self._send_pdvs(context_id, current, 0x02 if following is None else 0x00)
            if following is None:
                return
            current = following

    def _send_pdvs(self, context_id: int, data: bytes, last_flags: int) -> None:
        """``data`` as P-DATA-TF PDUs of one PDV each; ``last_flags`` on the final PDV
        (bit 0: command, bit 1: last fragment)."""
        limit, view = self._pdv_limit(), memoryview(data)
        command = last_flags & 0x01
        buffers: list[bytes | memoryview] = []
        offset = 0
        while True:
            piece = view[offset:offset + limit]
            offset += len(piece)
            flags = last_flags if offset >= len(view) else command
            buffers.append(struct.pack(">BBIIBB", P_DATA, 0, len(piece) + 6, len(piece) + 2, context_id, flags))
            buffers.append(piece)
            if offset >= len(view):
                break
        self._send_all(buffers)

    def _send_all(self, buffers: list[bytes | memoryview]) -> None:
        assert self._sock is not None
        send_buffers(self._sock, buffers)

    def _read_store_response(self, msg_id: int) -> tuple[int, str]:
        command = bytearray()
        while True:
            kind, body = self._read_pdu()
            if kind == ABORT:
                raise AssociationError("destination aborted the association")
            if kind != P_DATA:
                raise AssociationError(f"unexpected PDU type {kind} while waiting for C-STORE-RSP")
            pos = 0
            while pos + 6 <= len(body):
                length = struct.unpack_from(">I", body, pos)[0]
                flags = body[pos + 5]
                if flags & 0x01:
                    command += body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if flags & 0x03 == 0x03:
                    return self._store_status(bytes(command), msg_id)

    @staticmethod
    def _store_status(command: bytes, msg_id: int) -> tuple[int, str]:
        values = parse_command(command)
        field = values.get(0x0100, b"\0\0")
        responded = values.get(0x0120, b"\0\0")
        if struct.unpack("<H", field[:2])[0] != 0x8001 or struct.unpack("<H", responded[:2])[0] != msg_id:
            raise AssociationError("response is not the C-STORE-RSP to our request")
        status = struct.unpack("<H", values.get(0x0900, b"\xff\xff")[:2])[0]
        comment = values.get(0x0902, b"").decode("ascii", "replace").rstrip("\x00 ")
        return status, comment

    def _read_pdu(self) -> tuple[int, bytes]:
        header = self._recv_exact(6)
        kind, _, length = struct.unpack(">BBI", header)
        if length > MAX_INCOMING_PDU:
            raise AssociationError(f"PDU of {length} bytes from the destination")
        return kind, self._recv_exact(length)

    def _recv_exact(self, count: int) -> bytes:
        assert self._sock is not None
        buffer = bytearray(count)
        view, got = memoryview(buffer), 0
        while got < count:
            received = self._sock.recv_into(view[got:])
            if not received:
                raise AssociationError("connection closed by the destination")
            got += received
        return bytes(buffer)
