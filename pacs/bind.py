"""The check before ``pacs serve`` listens: no network-wide address without authentication.

Kept apart from :mod:`pacs.auth` (aiohttp, JWT): the supervisor of ``--workers N`` runs it
and should not load the HTTP stack.
"""

from __future__ import annotations

import logging

from .settings import Settings

log = logging.getLogger("pacs.auth")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class InsecureBind(ValueError):
    """Listening beyond loopback without authentication and without the explicit opt-out."""


def check_bind(settings: Settings) -> None:
    """Refuse a non-loopback address without authentication unless explicitly allowed;
    warn loudly whenever authentication is off."""
    if settings.auth_required:
        return
    if settings.host not in LOOPBACK and not settings.allow_unauthenticated:
        raise InsecureBind(
            f"refusing to listen on {settings.host} without authentication: set PACS_AUTH_REQUIRED=true "
            "(with PACS_OIDC_* settings or `pacs token create`), or set PACS_ALLOW_UNAUTHENTICATED=true "
            "to serve this network without authentication")
    log.warning("AUTHENTICATION IS OFF: every HTTP client on %s can read, write and delete all studies "
                "(set PACS_AUTH_REQUIRED=true to require tokens)", settings.host)
