"""DIMSE command sets (PS3.7 9.3, 10.3 and Annex E): decode requests, encode responses.

A command set is a handful of group 0000 elements in Implicit VR Little Endian. They are
coded here directly rather than through a pydicom ``Dataset``: a response costs a few
microseconds instead of the ~0.2 ms of building and encoding a dataset, which matters
when a C-FIND answers hundreds of matches or a C-GET sends thousands of objects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

from .pdu import element, parse_command, uid_value

# Command Field values (PS3.7 E.1).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_GET_RQ, N_GET_RSP = 0x0110, 0x8110
N_SET_RQ, N_SET_RSP = 0x0120, 0x8120
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
N_CREATE_RQ, N_CREATE_RSP = 0x0140, 0x8140
N_DELETE_RQ, N_DELETE_RSP = 0x0150, 0x8150
C_CANCEL_RQ = 0x0FFF

#: CommandDataSetType value meaning "no data set" (PS3.7 E.1).
NO_DATASET = 0x0101

# Element numbers of group 0000 (PS3.7 E.1), with the VR that decides their coding.
AFFECTED_SOP_CLASS, REQUESTED_SOP_CLASS = 0x0002, 0x0003
COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED = 0x0100, 0x0110, 0x0120
MOVE_DESTINATION, PRIORITY, DATASET_TYPE = 0x0600, 0x0700, 0x0800
STATUS, OFFENDING_ELEMENT, ERROR_COMMENT, ERROR_ID = 0x0900, 0x0901, 0x0902, 0x0903
AFFECTED_SOP_INSTANCE, REQUESTED_SOP_INSTANCE = 0x1000, 0x1001
EVENT_TYPE_ID, ATTRIBUTE_IDENTIFIERS, ACTION_TYPE_ID = 0x1002, 0x1005, 0x1008
REMAINING, COMPLETED, FAILED, WARNING = 0x1020, 0x1021, 0x1022, 0x1023
MOVE_ORIGINATOR_AE, MOVE_ORIGINATOR_ID = 0x1030, 0x1031

_VR = {
    AFFECTED_SOP_CLASS: "UI", REQUESTED_SOP_CLASS: "UI", AFFECTED_SOP_INSTANCE: "UI",
    REQUESTED_SOP_INSTANCE: "UI", MOVE_DESTINATION: "AE", MOVE_ORIGINATOR_AE: "AE",
    ERROR_COMMENT: "LO", OFFENDING_ELEMENT: "AT", ATTRIBUTE_IDENTIFIERS: "AT",
}
_US = struct.Struct("<H")

Value = Union[int, str, bytes, None]


def _encode_value(elem: int, value: int | str | bytes) -> bytes:
    vr = _VR.get(elem, "US")
    if isinstance(value, bytes):
        return value + (b"\x00" if vr == "UI" and len(value) % 2 else b" " if len(value) % 2 else b"")
    if vr == "UI":
        return uid_value(str(value))
    if vr in ("AE", "LO"):
        raw = str(value).encode("ascii", "replace")[:16 if vr == "AE" else 64]
        return raw + b" " * (len(raw) % 2)
    if vr == "AT":
        return struct.pack("<HH", int(value) >> 16, int(value) & 0xFFFF)
    return _US.pack(int(value))


def encode_command(fields: dict[int, Value]) -> bytes:
    """A command set from element number -> value (``None`` values are left out), with its
    Command Group Length first and the elements in ascending order (PS3.7 6.3.1)."""
    body = b"".join(
        element(0, elem, _encode_value(elem, value))
        for elem, value in sorted(fields.items()) if value is not None and elem != 0
    )
    return element(0, 0, struct.pack("<I", len(body))) + body


@dataclass(slots=True)
class Command:
    """A decoded command set: raw values by element number, read through typed accessors."""

    values: dict[int, bytes]

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Command:
        return cls(parse_command(data))

    def us(self, elem: int, default: int | None = None) -> int | None:
        raw = self.values.get(elem)
        return _US.unpack_from(raw)[0] if raw is not None and len(raw) >= 2 else default

    def text(self, elem: int) -> str:
        """A UI, AE or LO value without its padding ("" when absent)."""
        return self.values.get(elem, b"").decode("ascii", "replace").rstrip("\x00 ").lstrip(" ")

    @property
    def field(self) -> int:
        return self.us(COMMAND_FIELD, -1)  # type: ignore[return-value]

    @property
    def message_id(self) -> int:
        return self.us(MESSAGE_ID, 0)  # type: ignore[return-value]

    @property
    def has_dataset(self) -> bool:
        return self.us(DATASET_TYPE, NO_DATASET) != NO_DATASET

    @property
    def sop_class(self) -> str:
        """Affected SOP Class UID, or Requested SOP Class UID for N-SET/N-ACTION/... ."""
        return self.text(AFFECTED_SOP_CLASS) or self.text(REQUESTED_SOP_CLASS)


def response(request: Command, field: int, status: int, *, comment: str = "",
             has_dataset: bool = False, extra: dict[int, Value] | None = None) -> bytes:
    """The response command set to ``request`` (PS3.7 9.3 and 10.3): Affected SOP Class
    and Instance echoed where the request had them, Status, optional Error Comment."""
    fields: dict[int, Value] = {
        COMMAND_FIELD: field,
        MESSAGE_ID_RESPONDED: request.message_id,
        DATASET_TYPE: 0x0000 if has_dataset else NO_DATASET,
        STATUS: status,
        ERROR_COMMENT: comment or None,
    }
    sop_class = request.sop_class
    if sop_class:
        fields[AFFECTED_SOP_CLASS] = sop_class
    instance = request.text(AFFECTED_SOP_INSTANCE) or request.text(REQUESTED_SOP_INSTANCE)
    if instance and field in (C_STORE_RSP, N_SET_RSP, N_ACTION_RSP, N_CREATE_RSP, N_GET_RSP,
                              N_DELETE_RSP, N_EVENT_REPORT_RSP):
        fields[AFFECTED_SOP_INSTANCE] = instance
    if extra:
        fields.update(extra)
    return encode_command(fields)
