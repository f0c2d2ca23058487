"""Object keys, derived only from validated UIDs."""

from __future__ import annotations

from ..uids import validate_uid


def instance_key(study_uid: str, series_uid: str, sop_uid: str, version: str = "") -> str:
    """Key of an instance object; ``version`` (hex) distinguishes a replaced object."""
    study = validate_uid(study_uid, "StudyInstanceUID")
    series = validate_uid(series_uid, "SeriesInstanceUID")
    sop = validate_uid(sop_uid, "SOPInstanceUID")
    if version and not all(c in "0123456789abcdef" for c in version):
        raise ValueError("version must be lower-case hex")
    suffix = f".{version}" if version else ""
    return f"studies/{study}/series/{series}/{sop}{suffix}.dcm"
