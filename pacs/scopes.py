"""Authorisation: which scope each HTTP route needs, decided here and nowhere else.

Scopes (OAuth 2.0, RFC 6749 3.3): ``read`` (QIDO-RS, WADO-RS/URI, change feed),
``write`` (STOW-RS), ``delete`` (DICOMweb DELETE), ``admin`` (AE registry, outbox, API
tokens, audit, metrics), ``worklist`` (scheduled procedures, FHIR ServiceRequest intake),
``report`` (reading worklist, reports), ``ai`` (AI subscriptions, deliveries, results).
``admin`` does not imply the others: a token gets exactly the scopes it lists.

:func:`required_scope` maps (method, route pattern) to a scope, :data:`PUBLIC` (no
credentials) or, for a route no rule names, ``admin`` (fail closed: a new route is
refused to everyone else until it is given a rule).
"""

from __future__ import annotations

import re

from .errors import InvalidQuery

SCOPES = ("read", "write", "delete", "admin", "worklist", "report", "ai")
#: Marker of routes answered without credentials.
PUBLIC = ""
READ_METHODS = frozenset({"GET", "HEAD"})

#: Public routes: the health probe, the static viewer and reading page code (their data
#: calls go to authenticated routes), and CORS preflights (browsers send no credentials
#: with them, Fetch standard 3.2.2; OPTIONS /dicom-web is the capabilities statement).
_PUBLIC_PATHS = re.compile(r"^/(healthz|viewer(/.*)?|reading(/static.*)?)?$")

#: (path pattern, scope for GET/HEAD, scope for other methods); first match wins.
_RULES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern), read, other) for pattern, read, other in (
        (r"^/dicom-web(/|$)", "read", "write"),
        (r"^/wado$", "read", "read"),
        (r"^/api/changes$", "read", "read"),
        (r"^/metrics$", "admin", "admin"),
        (r"^/api/(aes|outbox|tokens|audit)(/|$)", "admin", "admin"),
        (r"^/api/worklist(/|$)", "worklist", "worklist"),
        (r"^/fhir/ServiceRequest(/|$)", "worklist", "worklist"),
        (r"^/api/(reading-worklist|reports)(/|$)", "report", "report"),
        (r"^/api/ai(/|$)", "ai", "ai"),
    )
)


def parse_scopes(scopes: str | list[str] | tuple[str, ...]) -> frozenset[str]:
    """Scopes from ``read,write`` / ``read write`` or a list; 400 on unknown ones."""
    items = scopes.replace(",", " ").split() if isinstance(scopes, str) else [str(s).strip() for s in scopes]
    unknown = sorted(set(items) - set(SCOPES))
    if unknown:
        raise InvalidQuery(f"unknown scopes {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not items:
        raise InvalidQuery(f"at least one scope is needed: {', '.join(SCOPES)}")
    return frozenset(items)


def required_scope(method: str, path: str) -> str:
    """The scope a request needs: ``path`` is the route's pattern (``/dicom-web/studies/{study}``)
    or, for a request no route matched, its path. :data:`PUBLIC` for public routes."""
    if method == "OPTIONS" or _PUBLIC_PATHS.match(path):
        return PUBLIC
    if method == "DELETE" and path.startswith("/dicom-web/"):
        return "delete"
    for pattern, read, other in _RULES:
        if pattern.match(path):
            return read if method in READ_METHODS else other
    return "admin"
