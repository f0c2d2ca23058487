"""Authorisation inside the archive service: every service call carries its caller.

The doors authenticate (pacs/auth.py for HTTP, the AE policy and TLS for DIMSE) and turn
what they learnt into a :class:`Caller`; the archive service then decides, here, what
that caller may do, whichever door it came through:

* a scope per operation: ``read`` to search, retrieve and view (QIDO-RS, WADO-RS,
  C-FIND, C-MOVE, C-GET), ``write`` to store (STOW-RS, C-STORE), ``delete`` to delete,
  ``report`` to store a signed report's SR, ``ai`` to store an AI result;
* a study confinement: a caller with ``study`` set (the AI hooks' study-scoped tokens)
  is answered about that study only: searches are narrowed to it, a retrieve or a store
  of another study is refused, and patient-level searches are refused outright.

Refusals raise :class:`Forbidden`, a domain error (HTTP 403; DIMSE 0x0124 "Refused: Not
Authorized", PS3.7 C.4). The archive's own work (stability sweeps, AI pushes, the CLI
run by the host's administrator) calls as :data:`SYSTEM`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .errors import PacsError
from .query import Level, Query
from .query.matchers import make_matcher
from .scopes import SCOPES


@dataclass(frozen=True)
class Caller:
    """Who calls the archive: ``kind`` is anonymous, jwt, api-token, study-token (HTTP),
    ae (DIMSE) or system; ``scopes`` what it may do; ``study`` the one study it may touch."""

    subject: str
    kind: str
    scopes: frozenset[str]
    study: Optional[str] = None
    token_id: Optional[str] = None

    @classmethod
    def for_ae(cls, ae_title: str, *scopes: str) -> "Caller":
        """A DIMSE peer admitted by the AE policy for the operations behind ``scopes``."""
        return cls(ae_title, "ae", frozenset(scopes))


#: The archive itself and its administrator's command line.
SYSTEM = Caller("pacs", "system", frozenset(SCOPES))
#: HTTP without authentication (allowed on loopback only): every scope, as documented.
ANONYMOUS = Caller("anonymous", "anonymous", frozenset(SCOPES))
#: A request no authentication step has looked at: nothing is allowed (fail closed).
NOBODY = Caller("nobody", "none", frozenset())

#: The scope that storing an object needs, by ingest ``source`` (default ``write``).
INGEST_SCOPES = {"report": "report", "ai": "ai"}


class Forbidden(PacsError):
    """The caller may not do this (RFC 6750 3.1 insufficient_scope; PS3.7 C.4 0x0124)."""

    dimse_status = 0x0124
    http_status = 403


def require(caller: Caller, scope: str, study: str | None = None) -> None:
    """Refuse unless ``caller`` holds ``scope`` and, when confined, ``study`` is its study."""
    if scope not in caller.scopes:
        raise Forbidden(f"this needs the {scope} scope")
    if caller.study is not None and study is not None and study != caller.study:
        raise Forbidden("this credential opens one other study only")


def confine(caller: Caller, query: Query, scope: str = "read") -> Query:
    """``query`` checked for ``scope`` and narrowed to the caller's study, if it has one."""
    require(caller, scope)
    if caller.study is None:
        return query
    if query.level is Level.PATIENT:
        raise Forbidden("this credential opens one study: patient-level searches are refused")
    narrowed = [*query.matchers, make_matcher("StudyInstanceUID", [caller.study])]
    return dataclasses.replace(query, matchers=narrowed)


def ingest_scope(source: str) -> str:
    """The scope storing an object from ``source`` needs."""
    return INGEST_SCOPES.get(source, "write")
