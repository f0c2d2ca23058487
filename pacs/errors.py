"""Domain errors of the archive, and their one mapping to DIMSE statuses.

Protocol code catches :class:`PacsError` and answers with :func:`dimse_status` (DIMSE)
or, in ``dicomweb``, the matching HTTP status. Nothing else maps errors.
"""

from __future__ import annotations


class PacsError(Exception):
    """Base of every error the archive reports to a client."""

    #: DIMSE status for a C-STORE that fails with this error (PS3.4 B.2.3).
    dimse_status: int = 0xC000
    #: HTTP status for the DICOMweb door.
    http_status: int = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInstance(PacsError):
    """The object cannot be parsed or lacks what an instance needs (PS3.4 B.2.3: C000-CFFF)."""

    dimse_status = 0xC000
    http_status = 400


class SOPClassMismatch(PacsError):
    """The dataset's SOP class differs from the negotiated one (PS3.4 B.2.3: A900)."""

    dimse_status = 0xA900
    http_status = 400


class Conflict(PacsError):
    """The object contradicts what the archive holds (study under another patient, duplicate)."""

    dimse_status = 0xC001
    http_status = 409


class DuplicateConflict(Conflict):
    """Another object with this SOP Instance UID is held, and the policy refuses it."""

    dimse_status = 0xC002


class StorageUnavailable(PacsError):
    """The blob store or the index cannot take the object now (PS3.4 B.2.3: A700)."""

    dimse_status = 0xA700
    http_status = 503


class NotFound(PacsError):
    """No such resource."""

    dimse_status = 0xC000
    http_status = 404


class NotAcceptable(PacsError):
    """No representation the client accepts can be produced (PS3.18 8.7.4): 406."""

    dimse_status = 0xC000
    http_status = 406


class InvalidQuery(PacsError):
    """A query identifier or parameter is malformed (PS3.4 C.4.1.1.4: A900)."""

    dimse_status = 0xA900
    http_status = 400


class StudyMismatch(PacsError):
    """STOW-RS to ``/studies/{study}``: the instance belongs to another study (PS3.18
    10.5.1.1, Table 10.5.3-1 "Study Instance UID mismatch"); Failure Reason C409, as
    dcm4chee-arc uses (implementation specific, PS3.18 I.2.2)."""

    dimse_status = 0xC409
    http_status = 409


class MalformedRequest(PacsError):
    """An HTTP request body that cannot be parsed (bad or missing multipart boundary,
    truncated body): 400."""

    http_status = 400


class PayloadTooLarge(PacsError):
    """A request or one of its parts is larger than the configured limit: 413
    (Failure Reason A700, out of resources, PS3.18 I.2.2)."""

    dimse_status = 0xA700
    http_status = 413


class UnsupportedMediaType(PacsError):
    """The request's or a part's Content-Type is not one the transaction takes: 415."""

    http_status = 415


def error_comment(error: Exception) -> str:
    """An Error Comment (0000,0902) value: LO, at most 64 characters."""
    text = str(error).replace("\\", "/").replace("\n", " ")
    return text[:64]
