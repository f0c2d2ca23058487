"""Which remote AE may do what: the one place DIMSE handlers ask (after Orthanc's
``IApplicationEntityFilter``).

Rules:

* an AE in the registry (``pacs ae``, ``/api/aes``) may use exactly the operations its
  ``allow_*`` flags permit, whatever the mode;
* an AE not in the registry may do everything when ``PACS_OPEN_MODE`` is true (the
  default), nothing when it is false;
* with ``PACS_CHECK_AE_ADDRESS`` on, a registered AE title calling from an address that is
  not its registered host (an IP address, or a name resolved at most every
  :data:`RESOLVE_SECONDS`) may do nothing.

A refused request is answered with status 0x0124 "Refused: Not Authorized" (PS3.7 C.5.x,
listed for C-STORE, C-FIND, C-MOVE, C-GET, N-ACTION; PS3.4 B.2.3, C.4.x, J.3.2). AE titles
are not authentication: they are sent in clear by the caller. The registry is read at most
every :data:`CACHE_SECONDS` (sooner when this process changed it), so a check costs a
dictionary lookup.

Handlers use :func:`refusal`::

    refused = policy.refusal(event, archive, "find")
    if refused is not None:
        yield refused, None   # or: return refused
        return
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from sqlalchemy import select

from .. import aes
from .status import Status, status_dataset
from ..errors import StorageUnavailable
from ..index.models import RemoteAE

if TYPE_CHECKING:
    from .service import DimseRequest

    from ..archive import Archive
    from ..index.db import Database

log = logging.getLogger(__name__)

#: Registry reads are cached for at most this many seconds.
CACHE_SECONDS = 2.0
#: Registered host names are resolved again after this many seconds.
RESOLVE_SECONDS = 60.0
#: PS3.7 C.5: Refused: Not Authorized.
NOT_AUTHORIZED = 0x0124
OPERATIONS = aes.OPERATIONS
#: How a refused operation is named in the Error Comment.
_VERBS = {"echo": "echo", "store": "store", "find": "query", "move": "retrieve (C-MOVE)",
          "get": "retrieve (C-GET)", "commitment": "request storage commitment",
          "mwl": "query the modality worklist", "mpps": "report procedure steps (MPPS)"}


@dataclass(frozen=True)
class _Snapshot:
    flags: dict[str, frozenset[str]]  # AE title -> allowed operations
    hosts: dict[str, str]  # AE title -> registered host
    loaded_at: float
    generation: int


class AEPolicy:
    """Decides ``is_allowed(calling_ae, address, operation)`` from the AE registry."""

    def __init__(self, db: Database, *, open_mode: bool = True, cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic, check_address: bool = False) -> None:
        self.db = db
        self.open_mode = open_mode
        self.check_address = check_address
        self._resolved: dict[str, tuple[float, frozenset[str]]] = {}  # host -> (when, addresses)
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def is_allowed(self, calling_ae: str, address: str, operation: str) -> bool:
        """May ``calling_ae`` (connecting from ``address``) use ``operation``?

        ``operation`` is one of echo, store, find, move, get, commitment. The address is
        compared with the registered host when ``check_address`` is on (else only logged
        with refusals). Raises :class:`StorageUnavailable` only when the registry was never
        readable.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        snap = self._load_snapshot()
        title = calling_ae.strip()
        allowed = snap.flags.get(title)
        if allowed is None:
            return self.open_mode
        if self.check_address and not self.address_matches(snap.hosts[title], address):
            return False
        return operation in allowed

    def address_matches(self, host: str, address: str) -> bool:
        """Whether the peer ``address`` is the registered ``host`` (an address, or a name
        whose resolved addresses are cached for :data:`RESOLVE_SECONDS`)."""
        peer = _normalise(address)
        if peer is None:
            return False
        if _normalise(host) is not None:
            return _normalise(host) == peer
        now = self._clock()
        cached = self._resolved.get(host)
        if cached is None or now - cached[0] >= RESOLVE_SECONDS:
            try:
                infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
                addresses = frozenset(a for a in (_normalise(str(i[4][0])) for i in infos) if a)
            except OSError:
                log.warning("registered AE host %s does not resolve", host)
                addresses = frozenset()
            cached = (now, addresses)
            self._resolved[host] = cached
        return peer in cached[1]

    def is_registered(self, calling_ae: str) -> bool:
        return calling_ae.strip() in self._load_snapshot().flags

    def address_refused(self, calling_ae: str, address: str) -> bool:
        """True when ``calling_ae`` is registered and refused for its address alone."""
        if not self.check_address:
            return False
        host = self._load_snapshot().hosts.get(calling_ae.strip())
        return host is not None and not self.address_matches(host, address)

    def invalidate(self) -> None:
        """Forget the cached registry (the next check reads it again)."""
        with self._lock:
            self._snapshot = None

    def _load_snapshot(self) -> _Snapshot:
        snap = self._snapshot
        now = self._clock()
        generation = aes.registry_generation()
        if snap is not None and now - snap.loaded_at < self.cache_seconds and snap.generation == generation:
            return snap
        with self._lock:
            snap = self._snapshot
            if snap is None or now - snap.loaded_at >= self.cache_seconds or snap.generation != generation:
                try:
                    flags, hosts = self._load()
                except StorageUnavailable:
                    if snap is None:
                        raise
                    # Keep deciding from the last registry seen; try the database again later.
                    log.warning("AE registry unreadable; using the copy from %.0f s ago", now - snap.loaded_at)
                    flags, hosts = snap.flags, snap.hosts
                snap = _Snapshot(flags, hosts, now, generation)
                self._snapshot = snap
        return snap

    def _load(self) -> tuple[dict[str, frozenset[str]], dict[str, str]]:
        columns = [getattr(RemoteAE, f"allow_{op}") for op in OPERATIONS]
        with self.db.read() as conn:
            rows = conn.execute(select(RemoteAE.ae_title, RemoteAE.host, *columns)).all()
        flags = {row[0]: frozenset(op for op, ok in zip(OPERATIONS, row[2:]) if ok) for row in rows}
        return flags, {row[0]: row[1] for row in rows}


def _normalise(address: str) -> str | None:
    """An IP address in canonical form (IPv4-mapped IPv6 as IPv4); None if not one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def policy_of(archive: Archive) -> AEPolicy:
    """The archive's policy (``archive.policy``, created on first use from its settings)."""
    return archive.policy


def refusal(request: DimseRequest, archive: Archive, operation: str) -> Status | None:
    """None when the request's calling AE may use ``operation``; else the 0x0124 status
    (with an Error Comment) to answer, after an INFO log line (AE title and address only)."""
    calling, address = request.calling_ae, request.assoc.requestor.address
    if policy_of(archive).is_allowed(calling, address, operation):
        return None
    log.info("%s from %s (%s) refused by the AE policy", operation, calling, address)
    return status_dataset(NOT_AUTHORIZED, f"calling AE not allowed to {_VERBS[operation]} from this address"
                          if policy_of(archive).address_refused(calling, address)
                          else f"calling AE not allowed to {_VERBS[operation]}")
