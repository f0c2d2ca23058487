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


def sop_uid_candidates(key: str) -> tuple[str, ...]:
    """The SOP Instance UIDs an instance key can have been made from. ``{sop}.{version}``
    cannot be told apart from a longer UID when the version is all digits, so a key with a
    dot in its last part gives both readings; a key of another shape gives none."""
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != "studies" or parts[2] != "series" or not parts[4].endswith(".dcm"):
        return ()
    stem = parts[4][:-len(".dcm")]
    head, _, last = stem.rpartition(".")
    versioned = (head,) if head and last and all(c in "0123456789abcdef" for c in last) else ()
    return (stem, *versioned)
