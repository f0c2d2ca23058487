"""API tokens: long-lived bearer credentials for scripts, RIS and viewers (``pacs token``).

A token is ``pacst1.<id>.<secret>``: ``id`` (12 hex digits) names its row in
``api_token``, ``secret`` is 32 random bytes (base64url). Only
HMAC-SHA256(salt, secret) (RFC 2104) with a per-token random salt is stored, so a copy of
the database does not reveal usable tokens; the token itself is shown once, at creation.
A token carries scopes (``pacs/scopes.py``), may expire and may be revoked; verification
compares in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, String, Text, insert, select, update
from sqlalchemy.orm import Mapped, mapped_column

from .errors import InvalidQuery, NotFound
from .index.db import Database
from .index.models import Base
from .scopes import parse_scopes

PREFIX = "pacst1"
_ID = re.compile(r"^[0-9a-f]{12}$")
_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ApiToken(Base):
    """One API token (migration ``0007``); ``secret_hash`` is hex HMAC-SHA256(salt, secret)."""

    __tablename__ = "api_token"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    salt: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class InvalidApiToken(Exception):
    """Unknown, badly formed, wrong secret, expired or revoked (answered 401)."""


@dataclass(frozen=True)
class TokenInfo:
    """What the server knows about a token (never its secret)."""

    id: str
    name: str
    scopes: frozenset[str]
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "scopes": sorted(self.scopes), "created_at": self.created_at,
                "expires_at": self.expires_at, "revoked_at": self.revoked_at}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s``, ``2w`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise InvalidQuery("expires must be a positive duration such as 30d, 12h, 90m or 2w")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


_TABLE = ApiToken.__table__


def _info(row: Any) -> TokenInfo:
    """A record from a row of ``api_token`` (a Core row or a mapping)."""
    m = row._mapping if hasattr(row, "_mapping") else row
    return TokenInfo(m["id"], m["name"], frozenset(s for s in m["scopes"].split(",") if s), m["created_at"],
                     m["expires_at"], m["revoked_at"])


def create(db: Database, name: str, scopes: str | list[str], expires_in: float | None = None,
           now: float | None = None) -> tuple[str, TokenInfo]:
    """A new token and its record; the token string exists only in this return value."""
    name = name.strip()
    if not 0 < len(name) <= 64:
        raise InvalidQuery("name must be 1 to 64 characters")
    granted = parse_scopes(scopes)
    now = time.time() if now is None else now
    token_id, salt, secret = secrets.token_hex(6), secrets.token_hex(16), secrets.token_urlsafe(32)
    row = {"id": token_id, "name": name, "salt": salt, "secret_hash": _digest(salt, secret),
           "scopes": ",".join(sorted(granted)), "created_at": now,
           "expires_at": None if expires_in is None else now + expires_in, "revoked_at": None}
    with db.write() as conn:
        conn.execute(insert(ApiToken).values(**row))
    return f"{PREFIX}.{token_id}.{secret}", _info(row)


def list_tokens(db: Database) -> list[TokenInfo]:
    with db.read() as conn:
        return [_info(r) for r in conn.execute(select(_TABLE).order_by(_TABLE.c.created_at, _TABLE.c.id))]


def revoke(db: Database, token_id: str, now: float | None = None) -> TokenInfo:
    """Revoke a token (idempotent); NotFound for an unknown id."""
    if not _ID.match(token_id):
        raise NotFound(f"no API token {token_id[:20]!r}")
    with db.write() as conn:
        conn.execute(update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
                     .values(revoked_at=time.time() if now is None else now))
        row = conn.execute(select(_TABLE).where(_TABLE.c.id == token_id)).one_or_none()
    if row is None:
        raise NotFound(f"no API token {token_id}")
    return _info(row)


def is_api_token(token: str) -> bool:
    return token.startswith(PREFIX + ".")


def verify(db: Database, token: str, now: float | None = None) -> TokenInfo:
    """The record of a valid token; raises :class:`InvalidApiToken`."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not _ID.match(parts[1]) or not parts[2]:
        raise InvalidApiToken("malformed API token")
    with db.read() as conn:
        row = conn.execute(select(_TABLE).where(_TABLE.c.id == parts[1])).one_or_none()
    if row is None or not hmac.compare_digest(row.secret_hash, _digest(row.salt, parts[2])):
        raise InvalidApiToken("unknown API token")
    if row.revoked_at is not None:
        raise InvalidApiToken("API token revoked")
    if row.expires_at is not None and row.expires_at <= (time.time() if now is None else now):
        raise InvalidApiToken("API token expired")
    return _info(row)
