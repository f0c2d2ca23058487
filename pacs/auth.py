"""HTTP authentication: who is calling, checked once per request by one middleware.

Credentials are bearer tokens (RFC 6750 2.1, ``Authorization: Bearer <token>``) of three kinds:

* **API tokens** ``pacst1.<id>.<secret>`` (pacs/api_tokens.py, ``pacs token create``);
* **study-scoped tokens** of other packages, e.g. the AI hooks' ``pacsai1.`` tokens: a door
  registers a verifier for its prefix in ``app[TOKEN_VERIFIERS]`` (pacs/ imports no door);
  such a principal is confined to :data:`STUDY_TOKEN_PATHS` and the door's own study check;
* **OIDC access tokens**: JWTs (RFC 7519) signed by the identity provider, checked with
  PyJWT against ``oidc_jwks_url`` (keys cached by ``PyJWKClient``) or ``oidc_public_key``
  (PEM public key, or a shared HMAC secret); ``iss``, ``aud``, ``exp`` and ``sub`` are
  required and checked (RFC 7519 4.1); scopes come from ``scope`` (space separated,
  RFC 8693 4.2) or ``scp``.

The route's scope comes from pacs/scopes.py. Answers: 401 with
``WWW-Authenticate: Bearer realm="pacs"`` without credentials (RFC 6750 3.1: no error
code then) or ``error="invalid_token"`` for a bad one; 403 with
``error="insufficient_scope"`` when the scope is missing. The principal is
``request["principal"]``: ``ANONYMOUS`` (all scopes) when authentication is off and no
token was sent; a token that is sent is always checked, and its scopes hold, either way.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Awaitable, Callable

import jwt
from aiohttp import web

from . import api_tokens
from .access import ANONYMOUS, NOBODY, Caller
from .scopes import PUBLIC, SCOPES, required_scope
from .settings import Settings

log = logging.getLogger(__name__)

#: Where a study-scoped principal may go at all (its door checks the study itself).
STUDY_TOKEN_PATHS = (("/dicom-web/", None), ("/api/ai/results", "POST"))
ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
SYMMETRIC = ["HS256", "HS384", "HS512"]
LEEWAY_SECONDS = 30


def caller_of(request: web.Request) -> Caller:
    """The authenticated caller of ``request``, for the archive service calls it makes;
    :data:`~pacs.access.NOBODY` (no scope) if authentication never ran."""
    return request.get("principal", NOBODY)
Verifier = Callable[[web.Request, str], Awaitable[Caller]]
#: Bearer-token prefix -> verifier (raises :class:`InvalidCredentials`), added by doors.
TOKEN_VERIFIERS = web.AppKey("token_verifiers", dict)


class InvalidCredentials(Exception):
    """A bearer token that is malformed, unknown, expired, revoked or badly signed."""


def _challenge(status: type[web.HTTPException], error: str | None, reason: str) -> web.HTTPException:
    value = 'Bearer realm="pacs"' + (f', error="{error}", error_description="{reason}"' if error else "")
    return status(headers={"WWW-Authenticate": value}, content_type="application/json",
                  text=json.dumps({"error": reason}))


def unauthorized(reason: str, error: str | None = "invalid_token") -> web.HTTPException:
    """401 with the RFC 6750 3 challenge."""
    return _challenge(web.HTTPUnauthorized, error, reason)


def forbidden(reason: str) -> web.HTTPException:
    """403 ``insufficient_scope`` (RFC 6750 3.1)."""
    return _challenge(web.HTTPForbidden, "insufficient_scope", reason)


class JwtVerifier:
    """OIDC access-token validation with PyJWT (see module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.issuer, self.audience = settings.oidc_issuer, settings.oidc_audience
        self.jwks = jwt.PyJWKClient(settings.oidc_jwks_url, cache_keys=True, lifespan=300) \
            if settings.oidc_jwks_url else None
        key = settings.oidc_public_key
        if key and not key.lstrip().startswith("-----BEGIN") and Path(key).is_file():
            key = Path(key).read_text()
        self.static_key = key
        self.static_algorithms = ASYMMETRIC if key.lstrip().startswith("-----BEGIN") else SYMMETRIC

    @property
    def configured(self) -> bool:
        return bool(self.jwks or self.static_key)

    def verify(self, token: str) -> Caller:
        """Blocking (a JWKS fetch when the key id is new): run in an executor."""
        if not self.configured:
            raise InvalidCredentials("no OIDC issuer is configured")
        try:
            if self.jwks is not None:
                key, algorithms = self.jwks.get_signing_key_from_jwt(token).key, ASYMMETRIC
            else:
                key, algorithms = self.static_key, self.static_algorithms
            claims = jwt.decode(token, key, algorithms=algorithms, audience=self.audience, issuer=self.issuer,
                                leeway=LEEWAY_SECONDS, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.PyJWTError as exc:
            raise InvalidCredentials(f"invalid access token: {type(exc).__name__}") from None
        raw = claims.get("scope") or claims.get("scp") or ""
        names = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
        return Caller(str(claims["sub"])[:256], "jwt", frozenset(names) & frozenset(SCOPES))


JWT = web.AppKey("jwt_verifier", JwtVerifier)
AUTH_SETTINGS = web.AppKey("auth_settings", Settings)


def bearer(request: web.Request) -> str | None:
    """The bearer token of ``Authorization`` (RFC 6750 2.1), or None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def authenticate(request: web.Request, token: str) -> Caller:
    """The principal of a bearer token; raises :class:`InvalidCredentials`."""
    from .web import ARCHIVE

    for prefix, verifier in request.app.get(TOKEN_VERIFIERS, {}).items():
        if token.startswith(prefix):
            return await verifier(request, token)
    loop = asyncio.get_running_loop()
    if api_tokens.is_api_token(token):
        try:
            info = await loop.run_in_executor(None, api_tokens.verify, request.app[ARCHIVE].db, token)
        except api_tokens.InvalidApiToken as exc:
            raise InvalidCredentials(str(exc)) from None
        return Caller(f"token:{info.name}", "api-token", info.scopes, token_id=info.id)
    return await loop.run_in_executor(None, request.app[JWT].verify, token)


def authorise(principal: Caller, scope: str, request: web.Request) -> None:
    """403 unless ``principal`` holds ``scope`` (and, study-scoped, stays on its paths)."""
    if scope not in principal.scopes:
        raise forbidden(f"this request needs the {scope} scope")
    if principal.study is not None and not any(
            request.path.startswith(path) and method in (None, request.method) for path, method in STUDY_TOKEN_PATHS):
        raise forbidden("a study-scoped token opens its study's DICOMweb resources only")


def _pattern(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


@web.middleware
async def auth_middleware(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Authenticate, then authorise against pacs/scopes.py (see module doc)."""
    scope = required_scope(request.method, _pattern(request))
    token = bearer(request) if scope != PUBLIC else None
    if token is None:
        settings = request.app[AUTH_SETTINGS]
        if scope != PUBLIC and settings.auth_required:
            raise unauthorized("authentication required", error=None)
        request["principal"] = ANONYMOUS
        return await handler(request)
    try:
        principal = await authenticate(request, token)
    except InvalidCredentials as exc:
        log.info("rejected bearer token on %s %s: %s", request.method, _pattern(request), exc)
        raise unauthorized(str(exc)) from None
    request["principal"] = principal
    authorise(principal, scope, request)
    return await handler(request)



def setup_auth(app: web.Application, settings: Settings) -> None:
    """Install the middleware (first after the error middleware) and its state."""
    app[AUTH_SETTINGS] = settings
    app[JWT] = JwtVerifier(settings)
    app[TOKEN_VERIFIERS] = {}
    app.middlewares.append(auth_middleware)
