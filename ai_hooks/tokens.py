"""Study-scoped access tokens for AI engines, and the middleware that enforces them.

A notification (ai_hooks/notify.py) carries a token that opens one study, for
``ai_token_ttl_seconds``: WADO-RS and QIDO-RS of that study (PS3.18 10.4, 10.6), STOW-RS
to ``/studies/{that study}`` (PS3.18 10.5) and ``POST /api/ai/results`` for that study.

Format: ``pacsai1.<payload>.<signature>``, payload the base64url JSON
``{"study": uid, "sub": subscription id, "exp": epoch seconds}``, signature the
base64url HMAC-SHA256 (RFC 2104) of ``pacsai1.<payload>`` under a 256-bit key created on
first use and kept in the index (``schema_meta``), so every server process on the
database issues and accepts the same tokens. Tokens are stateless: they cannot be
revoked before they expire (general authentication with revocable API tokens and OIDC
comes with the security issue, which reuses this module).

The middleware looks at requests under ``/dicom-web`` and ``/api/ai/results`` that carry
``Authorization: Bearer ...`` (RFC 6750): an invalid or expired token is answered 401
with ``WWW-Authenticate: Bearer error="invalid_token"``; a valid one outside its study 403.
Requests without a bearer token are untouched here (pacs/auth.py decides whether they
need one), except ``POST /api/ai/results`` when ``ai_require_token`` is set; other
bearer tokens (API tokens, JWTs) are pacs/auth.py's, which also accepts these tokens
through :func:`principal_of` (registered by ai_hooks/web.py ``setup``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web

from pacs.access import Caller
from pacs.errors import PacsError
from pacs.index.db import Database
from pacs.index.keys import stored_key
from pacs.web import ARCHIVE, run_blocking


PREFIX = "pacsai1"
KEY_NAME = "ai_token_key"
#: Paths under the DICOMweb root that QIDO-RS searches across studies; a token may use
#: them only with ``StudyInstanceUID`` equal to its study.
SEARCHES = ("studies", "series", "instances")
READ_METHODS = ("GET", "HEAD", "OPTIONS")


class Forbidden(PacsError):
    """A valid token used outside its study (RFC 6750 3.1 insufficient_scope): 403."""

    http_status = 403


class InvalidToken(Exception):
    """A bearer token that is malformed, badly signed or expired (answered 401)."""


@dataclass(frozen=True)
class TokenClaims:
    study_uid: str
    subscription_id: int
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(db: Database) -> bytes:
    """The token key of this database (:func:`pacs.index.keys.stored_key`)."""
    return stored_key(db, KEY_NAME)


def issue(key: bytes, study_uid: str, subscription_id: int, ttl: float, now: float | None = None) -> tuple[str, float]:
    """A token for ``study_uid`` and when it expires."""
    expires = int((time.time() if now is None else now) + ttl)
    payload = _b64(json.dumps({"study": study_uid, "sub": subscription_id, "exp": expires},
                              separators=(",", ":")).encode())
    signed = f"{PREFIX}.{payload}"
    return f"{signed}.{_b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())}", float(expires)


def verify(key: bytes, token: str, now: float | None = None) -> TokenClaims:
    """The claims of a valid token; raises :class:`InvalidToken`."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise InvalidToken("not a study-scoped token")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        good = hmac.compare_digest(expected, _unb64(parts[2]))
        claims = json.loads(_unb64(parts[1])) if good else None
    except (ValueError, json.JSONDecodeError):
        raise InvalidToken("malformed token") from None
    if not good or not isinstance(claims, dict):
        raise InvalidToken("bad token signature")
    if not isinstance(claims.get("exp"), int) or not isinstance(claims.get("study"), str):
        raise InvalidToken("malformed token")
    if claims["exp"] <= (time.time() if now is None else now):
        raise InvalidToken("token expired")
    return TokenClaims(claims["study"], int(claims.get("sub", 0)), float(claims["exp"]))


def unauthorized(reason: str) -> web.HTTPUnauthorized:
    """401 with the RFC 6750 3 challenge."""
    challenge = f'Bearer realm="pacs", error="invalid_token", error_description="{reason}"'
    return web.HTTPUnauthorized(headers={"WWW-Authenticate": challenge}, content_type="application/json",
                                text=json.dumps({"error": reason}))


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def claims_of(request: web.Request) -> TokenClaims | None:
    """The request's verified token claims, None without a bearer token; 401 when invalid."""
    token = bearer(request)
    if token is None or not token.startswith(PREFIX + "."):  # others: pacs/auth.py checked them
        return None
    key = await run_blocking(signing_key, request.app[ARCHIVE].db)
    try:
        return verify(key, token)
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None


async def principal_of(request: web.Request, token: str) -> Caller:
    """The verifier pacs/auth.py calls for ``pacsai1.`` tokens: read, STOW-RS and AI results,
    confined to the token's study (:func:`check_dicomweb_scope`, ai_hooks/web.py post_results)."""
    from pacs.auth import InvalidCredentials

    key = await run_blocking(signing_key, request.app[ARCHIVE].db)
    try:
        claims = verify(key, token)
    except InvalidToken as exc:
        raise InvalidCredentials(str(exc)) from None
    return Caller(f"ai-subscription:{claims.subscription_id}", "study-token", frozenset({"read", "write", "ai"}),
                     study=claims.study_uid, token_id=f"subscription-{claims.subscription_id}")


def check_dicomweb_scope(request: web.Request, study_uid: str) -> None:
    """403 unless the DICOMweb request stays inside ``study_uid`` (see module doc)."""
    from dicomweb.routes import PREFIX as ROOT

    parts = [p for p in request.path[len(ROOT):].split("/") if p]
    if len(parts) >= 2 and parts[0] == "studies" and parts[1] == study_uid:
        if request.method in READ_METHODS or (request.method == "POST" and len(parts) == 2):
            return
        raise Forbidden(f"a study-scoped token allows reading and STOW-RS only, not {request.method}")
    if len(parts) == 1 and parts[0] in SEARCHES and request.method in READ_METHODS:
        if request.query.getall("StudyInstanceUID", []) == [study_uid]:
            return
        raise Forbidden("a study-scoped token searches only with StudyInstanceUID of its study")
    raise Forbidden("this token opens one study only")


@web.middleware
async def token_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Enforce study-scoped tokens (see module doc)."""
    path = request.path
    if path.startswith("/dicom-web") or path.startswith("/api/ai/results"):
        claims = await claims_of(request)
        if claims is not None:
            request["ai_token"] = claims
            if path.startswith("/dicom-web"):
                check_dicomweb_scope(request, claims.study_uid)
    return await handler(request)
