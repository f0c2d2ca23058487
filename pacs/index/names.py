"""Normalisation of person names and other matched strings, versioned.

PS3.4 C.2.2.2.1 lets an SCP match PN values insensitively to case and accents. We
store a normalised copy next to every raw value and normalise query values the same
way. Changing this function changes what existing rows match, so it carries a version
that is recorded in ``schema_meta`` (after Orthanc's NormalizeIdentifier lesson); a new
version needs a re-index migration.

Version 1: Unicode NFKD, combining marks removed (accent-insensitive), upper-case,
runs of spaces collapsed, trailing component/group separators (``^``, ``=``) and
spaces removed. Wildcard characters ``*`` and ``?`` survive unchanged.
"""

from __future__ import annotations

import re
import unicodedata

PN_NORMALISATION_VERSION = "1"

_SPACES = re.compile(r"\s+")


def normalise_pn(value: str | None) -> str:
    """Normalised form of a person name (or query pattern), per version 1 above."""
    if not value:
        return ""
    text = unicodedata.normalize("NFKD", str(value))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _SPACES.sub(" ", text.upper()).strip()
    return text.rstrip("^= ")


def person_name_text(value: object) -> str:
    """The full text of a pydicom PersonName (all groups), '' for empty."""
    if value is None:
        return ""
    return str(value)
