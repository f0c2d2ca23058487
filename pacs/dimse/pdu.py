"""DICOM upper layer PDUs (PS3.8 9.3) and the Implicit VR Little Endian element coding of
command sets (PS3.7 6.3.1), shared by our acceptor and our Storage SCU.

The association negotiation PDUs (A-ASSOCIATE-RQ/AC/RJ) are decoded and encoded with
pynetdicom's PDU classes: they run once per association and pynetdicom covers every
sub-item. The per-message PDUs (P-DATA-TF, release, abort) are coded here by hand with
``struct``: they run for every fragment of every message, and this is the hot path
(pynetdicom's object-per-PDU coding costs more than the rest of a C-STORE round trip).
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections import deque
from typing import Iterator

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: PDU types (PS3.8 9.3.1).
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)
#: Our Implementation Class UID (PS3.7 D.3.3.2) and Version Name (at most 16 characters).
IMPLEMENTATION_CLASS_UID = "2.25.254744669673858892091941610480033487832"
IMPLEMENTATION_VERSION = "PYPACS_010"

#: Message Control Header bits (PS3.8 E.2).
COMMAND, LAST = 0x01, 0x02

_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")
_P_DATA_HEADER = struct.Struct(">BBIIBB")
_ELEMENT = struct.Struct("<HHI")

#: Abort sources and reasons (PS3.8 9.3.8).
ABORT_SOURCE_USER, ABORT_SOURCE_PROVIDER = 0, 2
REASON_NOT_SPECIFIED, REASON_UNRECOGNISED_PDU, REASON_UNEXPECTED_PDU = 0, 1, 2
REASON_INVALID_PARAMETER = 6


def pdu_header(data: bytes | bytearray) -> tuple[int, int]:
    """(PDU type, length of what follows) from the 6 bytes of a PDU header."""
    kind, _, length = _PDU_HEADER.unpack(data)
    return kind, length


def release_rq() -> bytes:
    return struct.pack(">BBII", RELEASE_RQ, 0, 4, 0)


def release_rp() -> bytes:
    return struct.pack(">BBII", RELEASE_RP, 0, 4, 0)


def abort(source: int = ABORT_SOURCE_USER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    return struct.pack(">BBIBBBB", ABORT, 0, 4, 0, 0, source, reason)


def p_data_header(context_id: int, flags: int, length: int) -> bytes:
    """The header of a P-DATA-TF PDU carrying one PDV of ``length`` bytes."""
    return _P_DATA_HEADER.pack(P_DATA, 0, length + 6, length + 2, context_id, flags)


def iter_pdvs(body: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(context id, message control header, value) of each PDV of a P-DATA-TF body."""
    view, pos, end = memoryview(body), 0, len(body)
    while pos + 6 <= end:
        length, context_id, flags = _PDV_HEADER.unpack_from(view, pos)
        if length < 2 or pos + 4 + length > end:
            raise ValueError("PDV length exceeds its PDU")
        yield context_id, flags, view[pos + 6:pos + 4 + length]
        pos += 4 + length
    if pos != end:
        raise ValueError("trailing bytes in P-DATA-TF")


def send_buffers(sock: socket.socket, buffers: list[bytes | memoryview]) -> None:
    """Send every buffer in order with as few ``sendmsg`` calls as the kernel allows (one
    for a whole message in the usual case; no joining copy). A TLS socket has no
    ``sendmsg``: its buffers are joined and sent with ``sendall``."""
    if isinstance(sock, ssl.SSLSocket):
        sock.sendall(b"".join(buffers))
        return
    pending = deque(memoryview(b).cast("B") for b in buffers)
    while pending:
        sent = sock.sendmsg(list(pending)[:512])
        while sent:
            head = pending[0]
            if sent >= len(head):
                sent -= len(head)
                pending.popleft()
            else:
                pending[0] = head[sent:]
                sent = 0


# -- command set elements (Implicit VR Little Endian) ---------------------------------------
def element(group: int, elem: int, value: bytes) -> bytes:
    """An Implicit VR Little Endian element (command sets, PS3.7 6.3.1)."""
    return _ELEMENT.pack(group, elem, len(value)) + value


def parse_command(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """Element number (0000,eeee) -> raw value, from an Implicit VR LE command set."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    view = memoryview(data)
    while pos + 8 <= end:
        group, elem, length = _ELEMENT.unpack_from(view, pos)
        if group != 0 or pos + 8 + length > end:
            raise ValueError("malformed command set")
        values[elem] = bytes(view[pos + 8:pos + 8 + length])
        pos += 8 + length
    if pos != end:
        raise ValueError("malformed command set")
    return values


# -- association items (A-ASSOCIATE-RQ of our Storage SCU) -----------------------------------
def item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def ae_title(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def uid_value(value: str) -> bytes:
    """A UID padded to even length with NUL (PS3.5 9.1)."""
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def sub_items(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(data):
        kind, _, length = struct.unpack_from(">BBH", data, pos)
        yield kind, data[pos + 4:pos + 4 + length]
        pos += 4 + length
