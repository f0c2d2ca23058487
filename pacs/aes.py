"""The registry of remote application entities, kept in the index database.

Used for C-MOVE destinations, storage-commitment replies and the AE policy (what each
registered AE may ask of us, :mod:`pacs.dimse.policy`). Every process reads it from the
database, so ``pacs ae add`` takes effect while the server runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sqlalchemy import delete, insert, select, update

from .errors import Conflict, InvalidQuery, NotFound
from .index.db import Database
from .index.models import RemoteAE

#: What a remote AE can ask of us; each has an ``allow_<name>`` column in ``remote_ae``.
OPERATIONS = ("echo", "store", "find", "move", "get", "commitment", "mwl", "mpps")

_generation = itertools.count(1)
_current_generation = 0


def registry_generation() -> int:
    """A number that changes whenever this process changes the registry.

    Caches of the registry (the AE policy) reload at once when it moved; changes made by
    other processes reach them when their cache expires.
    """
    return _current_generation


def _bump_generation() -> None:
    global _current_generation
    _current_generation = next(_generation)


@dataclass(frozen=True)
class AEEntry:
    ae_title: str
    host: str
    port: int
    description: str = ""
    #: Operations this AE may not use (a subset of :data:`OPERATIONS`).
    denied: frozenset[str] = frozenset()

    def allows(self, operation: str) -> bool:
        """True when the AE may use ``operation`` (one of :data:`OPERATIONS`)."""
        return operation not in self.denied

    @property
    def allow(self) -> dict[str, bool]:
        """Every operation with whether it is allowed."""
        return {op: op not in self.denied for op in OPERATIONS}

    def as_json(self) -> dict[str, Any]:
        return {"ae_title": self.ae_title, "host": self.host, "port": self.port,
                "description": self.description, "allow": self.allow}


def parse_operations(text: str) -> frozenset[str]:
    """``"store,find"`` -> {"store", "find"}; unknown names raise :class:`InvalidQuery`."""
    names = frozenset(part.strip().lower() for part in text.split(",") if part.strip())
    unknown = sorted(names - set(OPERATIONS))
    if unknown:
        raise InvalidQuery(f"unknown operation(s) {', '.join(unknown)}; known: {', '.join(OPERATIONS)}")
    return names


def denied_from_allow(allow: Mapping[str, Any] | None, base: frozenset[str] = frozenset()) -> frozenset[str]:
    """Apply an ``{"store": false, ...}`` map to the denied set ``base``."""
    if allow is None:
        return base
    if not isinstance(allow, Mapping):
        raise InvalidQuery("allow must be an object of operation: true/false")
    denied = set(base)
    for name, value in allow.items():
        if name not in OPERATIONS:
            raise InvalidQuery(f"unknown operation {name!r}; known: {', '.join(OPERATIONS)}")
        if not isinstance(value, bool):
            raise InvalidQuery(f"allow.{name} must be true or false")
        (denied.discard if value else denied.add)(name)
    return frozenset(denied)


def _validate(ae_title: str, host: str, port: int) -> str:
    title = ae_title.strip() if isinstance(ae_title, str) else ""
    if not title or len(title) > 16 or "\\" in title or not title.isprintable():
        raise InvalidQuery("AE title must be 1-16 printable characters without backslash")
    if not isinstance(host, str) or not host or len(host) > 255 or any(c.isspace() for c in host):
        raise InvalidQuery("host must be a host name or address")
    try:
        number = int(port)
    except (TypeError, ValueError):
        number = 0
    if isinstance(port, bool) or not 0 < number < 65536:
        raise InvalidQuery("port must be between 1 and 65535")
    return title


def _flag_values(denied: frozenset[str]) -> dict[str, bool]:
    return {f"allow_{op}": op not in denied for op in OPERATIONS}


def _entry(row: Any) -> AEEntry:
    denied = frozenset(op for op in OPERATIONS if not getattr(row, f"allow_{op}"))
    return AEEntry(row.ae_title, row.host, row.port, row.description, denied)


def list_aes(db: Database) -> list[AEEntry]:
    with db.read() as conn:
        rows = conn.execute(select(RemoteAE).order_by(RemoteAE.ae_title)).all()
    return [_entry(r) for r in rows]


def get_ae(db: Database, ae_title: str) -> AEEntry | None:
    with db.read() as conn:
        r = conn.execute(select(RemoteAE).where(RemoteAE.ae_title == ae_title.strip())).first()
    return _entry(r) if r else None


def add_ae(
    db: Database, ae_title: str, host: str, port: int, description: str = "",
    *, denied: Iterable[str] = (),
) -> AEEntry:
    """Register an AE; ``denied`` names the operations it may not use. 409 if present."""
    title = _validate(ae_title, host, port)
    refused = denied_from_allow({op: False for op in denied})
    with db.write() as conn:
        if conn.execute(select(RemoteAE.id).where(RemoteAE.ae_title == title)).first():
            raise Conflict(f"AE {title} is already registered")
        conn.execute(insert(RemoteAE).values(
            ae_title=title, host=host, port=int(port), description=description, **_flag_values(refused)))
    _bump_generation()
    return AEEntry(title, host, int(port), description, refused)


def update_ae(
    db: Database, ae_title: str, host: str, port: int, description: str = "",
    *, denied: Iterable[str] | None = None,
) -> AEEntry:
    """Change an AE's address and description; its allow flags too when ``denied`` is given."""
    title = _validate(ae_title, host, port)
    values: dict[str, Any] = {"host": host, "port": int(port), "description": description}
    if denied is not None:
        values.update(_flag_values(denied_from_allow({op: False for op in denied})))
    with db.write() as conn:
        count = conn.execute(update(RemoteAE).where(RemoteAE.ae_title == title).values(**values)).rowcount
    _bump_generation()
    if not count:
        raise NotFound(f"AE {title} is not registered")
    entry = get_ae(db, title)
    assert entry is not None
    return entry


def remove_ae(db: Database, ae_title: str) -> None:
    with db.write() as conn:
        count = conn.execute(delete(RemoteAE).where(RemoteAE.ae_title == ae_title.strip())).rowcount
    _bump_generation()
    if not count:
        raise NotFound(f"AE {ae_title.strip()} is not registered")
