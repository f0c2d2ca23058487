"""The one builder of DIMSE status datasets (PS3.7 C: Status (0000,0900), Error Comment
(0000,0902)) used by every handler."""

from __future__ import annotations

from pydicom.dataset import Dataset

from ..errors import error_comment


def status_dataset(code: int, comment: str | Exception = "") -> Dataset:
    """A status with an optional Error Comment (LO: at most 64 characters, no backslash)."""
    ds = Dataset()
    ds.Status = code
    if isinstance(comment, Exception):
        comment = error_comment(comment)
    if comment:
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds
