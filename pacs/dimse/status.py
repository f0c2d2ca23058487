"""The one builder of DIMSE statuses (PS3.7 C: Status (0000,0900), Error Comment
(0000,0902)) used by every handler."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import error_comment

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00


@dataclass(frozen=True, slots=True)
class Status:
    """A DIMSE status code and its optional Error Comment."""

    code: int
    comment: str = ""

    @property
    def is_pending(self) -> bool:
        return self.code in (0xFF00, 0xFF01)


def status(code: int, comment: str | Exception = "") -> Status:
    """A status with an optional Error Comment (LO: at most 64 characters, no backslash)."""
    if isinstance(comment, Exception):
        comment = error_comment(comment)
    return Status(code, comment.replace("\\", "/")[:64] if comment else "")


#: The name the handlers use.
status_dataset = status
