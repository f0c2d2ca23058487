"""UID validation (PS3.5 9.1): digits and dots, components without leading zeros, <= 64 chars.

Blob keys are built only from UIDs that passed :func:`validate_uid`, so nothing a client
sends can become a path outside the store.
"""

from __future__ import annotations

import re

from .errors import InvalidInstance

def validate_uid(value: object, name: str) -> str:
    """Return ``value`` as a UID string or raise :class:`InvalidInstance` naming the attribute."""
    if value is None or value == "":
        raise InvalidInstance(f"{name} missing")
    text = str(value).rstrip("\x00 ")
    if not lenient_uid(text):
        raise InvalidInstance(f"{name} is not a valid UID (digits and dots, at most 64)")
    return text


def lenient_uid(value: str) -> bool:
    """True for UIDs that are digits and dots but break the no-leading-zero rule.

    Such UIDs exist in the field (old modalities); we accept them when storing because
    refusing would lose images, and they are still safe as key components.
    """
    return 0 < len(value) <= 64 and re.fullmatch(r"[0-9]+(\.[0-9]+)*", value) is not None
