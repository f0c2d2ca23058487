"""The registry of remote application entities, kept in the index database.

Used for C-MOVE destinations and storage-commitment replies. Every process reads it from
the database on use, so ``pacs ae add`` takes effect while the server runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from .errors import Conflict, InvalidQuery, NotFound
from .index.db import Database
from .index.models import RemoteAE


@dataclass(frozen=True)
class AEEntry:
    ae_title: str
    host: str
    port: int
    description: str = ""


def _validate(ae_title: str, host: str, port: int) -> str:
    title = ae_title.strip()
    if not title or len(title) > 16 or "\\" in title or not title.isprintable():
        raise InvalidQuery("AE title must be 1-16 printable characters without backslash")
    if not host or len(host) > 255 or any(c.isspace() for c in host):
        raise InvalidQuery("host must be a host name or address")
    if not 0 < int(port) < 65536:
        raise InvalidQuery("port must be between 1 and 65535")
    return title


def list_aes(db: Database) -> list[AEEntry]:
    with db.read() as conn:
        rows = conn.execute(select(RemoteAE).order_by(RemoteAE.ae_title)).all()
    return [AEEntry(r.ae_title, r.host, r.port, r.description) for r in rows]


def get_ae(db: Database, ae_title: str) -> AEEntry | None:
    with db.read() as conn:
        r = conn.execute(select(RemoteAE).where(RemoteAE.ae_title == ae_title.strip())).first()
    return AEEntry(r.ae_title, r.host, r.port, r.description) if r else None


def add_ae(db: Database, ae_title: str, host: str, port: int, description: str = "") -> AEEntry:
    title = _validate(ae_title, host, port)
    with db.write() as conn:
        if conn.execute(select(RemoteAE.id).where(RemoteAE.ae_title == title)).first():
            raise Conflict(f"AE {title} is already registered")
        conn.execute(insert(RemoteAE).values(ae_title=title, host=host, port=int(port), description=description))
    return AEEntry(title, host, int(port), description)


def update_ae(db: Database, ae_title: str, host: str, port: int, description: str = "") -> AEEntry:
    title = _validate(ae_title, host, port)
    with db.write() as conn:
        count = conn.execute(
            update(RemoteAE).where(RemoteAE.ae_title == title)
            .values(host=host, port=int(port), description=description)
        ).rowcount
    if not count:
        raise NotFound(f"AE {title} is not registered")
    return AEEntry(title, host, int(port), description)


def remove_ae(db: Database, ae_title: str) -> None:
    with db.write() as conn:
        count = conn.execute(delete(RemoteAE).where(RemoteAE.ae_title == ae_title.strip())).rowcount
    if not count:
        raise NotFound(f"AE {ae_title.strip()} is not registered")
