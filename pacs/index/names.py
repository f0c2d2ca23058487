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


def normalise_time(value: str, *, upper: bool = False) -> str:
    """A TM value as ``HHMMSS.FFFFFF`` for range matching (PS3.4 C.2.2.2.5).

    Missing parts are zero, or their maximum with ``upper`` (so "1015" as an upper bound
    means 10:15:59.999999). Colons of the old ACR-NEMA form are dropped. Values that are
    not times come back unchanged.
    """
    text = value.replace(":", "").strip()
    if not text:
        return ""
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) > 6 or (fraction and not fraction.isdigit()):
        return text
    whole = whole + ("595959"[len(whole):] if upper else "000000"[len(whole):])
    fraction = (fraction + ("9" if upper else "0") * 6)[:6]
    return f"{whole}.{fraction}"
