"""Failures of a C-MOVE / C-GET before any sub-operation, answered with an Error Comment.

PS3.4 C.4.2.1.5 / C.4.3.1.4 let the final response of a refused retrieve carry an Error
Comment (0000,0902) saying why: the move destination is unknown (0xA801), the
identifier is wrong (0xA900), the caller is not authorised (0x0124), the index is
unavailable (0xA701), ...

pynetdicom's handler contract cannot express that before the sub-association exists:
for C-MOVE the only early failure is yielding ``(None, None)``, which ``_move_scp``
answers with a bare 0xA801 (``service_class.py``); a status ``Dataset`` (whose Error
Comment pynetdicom would copy) is accepted only after the count and the sub-association.
For C-GET a status can follow the count, but the response then reports the unused
count as one failed sub-operation with an empty Failed SOP Instance UID List.

The least intrusive fix we found, and the one used here: the handler arms a one-shot
``EVT_DIMSE_SENT`` handler on its own association, then takes the contract's early
exit. pynetdicom triggers ``EVT_DIMSE_SENT`` after building the response message and
before encoding it into PDUs (``dimse.py DIMSEServiceProvider.send_msg``), so the
handler can set the real Status and the Error Comment on that one response (matched by
command field and Message ID Being Responded To), drop sub-operation counts that never
happened, and recompute the command group length. Everything else about the exchange
stays pynetdicom's. The handler unbinds itself after use.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pynetdicom import evt

from .status import status_dataset


if TYPE_CHECKING:
    from pynetdicom.events import Event

C_GET_RSP, C_MOVE_RSP = 0x8010, 0x8021


class _NoUnknownDestinationNoise(logging.Filter):
    """pynetdicom logs "Unknown Move Destination" at ERROR for every ``(None, None)``,
    which is our early exit for all early failures; the handlers log the real reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unknown Move Destination")


logging.getLogger("pynetdicom.service_class").addFilter(_NoUnknownDestinationNoise())
_COUNTS = ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
           "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")


#: A failure status with an Error Comment (kept as the retrieve handlers' name).
failure = status_dataset


def rewrite_final_response(event: Event, status: Dataset, command_field: int) -> None:
    """Make the next response to ``event``'s request carry ``status`` (Status, Error
    Comment), without sub-operation counts or identifier."""
    assoc = event.assoc
    msg_id = int(event.request.MessageID)

    def _rewrite(sent: Event) -> None:
        message = sent.message  # type: ignore[attr-defined]
        command = message.command_set
        if command.get("CommandField") != command_field or command.get("MessageIDBeingRespondedTo") != msg_id:
            return
        assoc.unbind(evt.EVT_DIMSE_SENT, _rewrite)
        command.Status = int(status.Status)
        if "ErrorComment" in status:
            command.ErrorComment = status.ErrorComment
        for keyword in _COUNTS:
            if keyword in command:
                delattr(command, keyword)
        if message.data_set is not None:
            message.data_set = None
            command.CommandDataSetType = 0x0101  # no identifier follows
        message._set_command_group_length()

    assoc.bind(evt.EVT_DIMSE_SENT, _rewrite)
