"""The PHI access audit trail: who touched which patient's data, how, and with what outcome.

Every door records here: the HTTP middleware of :mod:`pacs.web_audit` (DICOMweb, the
worklist, reports, AI results, FHIR), the DIMSE dispatcher (:mod:`pacs.dimse.service`:
C-FIND, C-MOVE, C-GET, C-STORE, storage commitment, MWL, MPPS) and the acceptor
(associations refused, :mod:`pacs.dimse.server`). The fields follow the questions of
IHE ATNA / DICOM PS3.15 A.5 (RFC 3881): event (action, time, outcome), active
participant (actor, credential, AE title, network access point), participant objects
(patient id, study uid).

Writes are cheap and never fail the request: :meth:`AuditTrail.record` puts the event
on a bounded queue and returns; one thread drains it into ``audit_event`` in batches
(one transaction per batch). When the queue is full the event is dropped, counted in
``pacs_audit_dropped`` and logged (WARNING, without identifiers).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from sqlalchemy import Connection, Float, Integer, String, Text, and_, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from .errors import PacsError
from .index.db import Database
from .index.models import Base, BigId, Patient, Study

if TYPE_CHECKING:
    from .audit_syslog import SyslogExporter

log = logging.getLogger(__name__)

DROPPED = Counter("pacs_audit_dropped", "Audit events dropped because the audit queue was full")
WRITTEN = Counter("pacs_audit_written", "Audit events written to the index")
#: Events written per transaction at most.
BATCH = 500
#: The longest an event waits in the queue before its batch is written, in seconds.
LINGER = 0.2
#: Column widths; longer values are cut (an audit row must never be refused).
WIDTHS = {"door": 8, "action": 32, "outcome": 8, "actor": 128, "credential": 64, "ae_title": 16,
          "source": 64, "route": 128, "patient_id": 64, "study_uid": 64, "reason": 256}


class AuditEvent(Base):
    """One audited access (PS3.15 A.5.1: event, active participant, participant objects)."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    door: Mapped[str] = mapped_column(String(8))  # dimse | dicomweb | rest
    action: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str] = mapped_column(String(8))  # success | failure
    status: Mapped[int] = mapped_column(Integer)  # HTTP status or DIMSE status
    reason: Mapped[str] = mapped_column(String(256), default="")
    actor: Mapped[str] = mapped_column(String(128), index=True)  # user/subject, or calling AE
    credential: Mapped[str] = mapped_column(String(64), default="")  # token id or kind, "ae", "anonymous"
    ae_title: Mapped[str] = mapped_column(String(16), default="")
    source: Mapped[str] = mapped_column(String(64), default="")  # network access point
    route: Mapped[str] = mapped_column(String(128), default="")  # "GET /dicom-web/studies" or SOP class UID
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    details: Mapped[str] = mapped_column(Text, default="")  # more study uids / patient ids, space-free list


@dataclass
class Record:
    """One event as recorded by a door (the columns of :class:`AuditEvent` but ``id``)."""

    door: str
    action: str
    status: int
    actor: str
    outcome: str = "success"
    reason: str = ""
    credential: str = ""
    ae_title: str = ""
    source: str = ""
    route: str = ""
    patient_id: str = ""
    study_uid: str = ""
    details: str = ""
    time: float = field(default_factory=time.time)

    def row(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in _RECORD_FIELDS}  # asdict copies deeply: 13x slower
        for name, width in WIDTHS.items():
            value = values[name]
            if isinstance(value, str) and len(value) > width:
                values[name] = value[:width]
        return values


_RECORD_FIELDS = tuple(f.name for f in fields(Record))


class AuditTrail:
    """The bounded queue and its writer thread (started on the first record)."""

    def __init__(self, db: Database, *, enabled: bool = True, capacity: int = 10000,
                 exporter: SyslogExporter | None = None) -> None:
        self.db = db
        self.enabled = enabled
        self.exporter = exporter  # PS3.15 A.5 messages to syslog (pacs/audit_syslog.py)
        self._queue: queue.Queue[Record | None] = queue.Queue(maxsize=max(1, capacity))
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._last_warning = 0.0

    def record(self, event: Record) -> None:
        """Queue ``event`` for writing; never blocks, never raises."""
        if not self.enabled:
            return
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            DROPPED.inc()
            now = time.monotonic()
            if now - self._last_warning > 10:
                self._last_warning = now
                log.warning("audit queue full (%d events): audit events dropped", self._queue.maxsize)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer thread."""
        thread = self._thread
        if thread is None:
            return
        self.flush(timeout)
        self._queue.put(None)
        thread.join(timeout)
        self._thread = None
        if self.exporter is not None:
            self.exporter.close()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="audit-writer", daemon=True)
                self._thread.start()

    def _drain(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                return
            batch, stop = [first], False
            # Let the batch gather while this thread sleeps: waiting on the queue instead
            # would wake it (a thread switch, an interpreter-lock hand-off) for every event
            # of a storing association. A full batch already waiting goes at once.
            if self._queue.qsize() < BATCH:
                time.sleep(LINGER)
            while len(batch) < BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    self._queue.task_done()
                    break
                batch.append(item)
            self._write(batch)
            for _ in batch:
                self._queue.task_done()
            if stop:
                return

    def _write(self, batch: list[Record]) -> None:
        for attempt in range(3):
            try:
                with self.db.write() as conn:
                    fill_patients(conn, batch)
                    conn.execute(insert(AuditEvent), [r.row() for r in batch])
                WRITTEN.inc(len(batch))
                if self.exporter is not None:
                    self.exporter.send(batch)
                return
            except Exception as exc:  # the index is down: retry a little, then drop
                if attempt == 2:
                    DROPPED.inc(len(batch))
                    log.warning("audit: %d events lost, index unavailable (%s)", len(batch), type(exc).__name__)
                    return
                time.sleep(0.5 * (attempt + 1))


def fill_patients(conn: Connection, batch: list[Record]) -> None:
    """Give events that name a study but no patient the study's Patient ID, with one query
    per batch: the doors need not look it up on their hot paths."""
    wanted = {r.study_uid for r in batch if r.study_uid and not r.patient_id}
    if not wanted:
        return
    rows = conn.execute(select(Study.study_uid, Patient.patient_id).join(Patient, Study.patient_fk == Patient.id)
                        .where(Study.study_uid.in_(sorted(wanted)[:BATCH])))
    patients = dict(rows.all())
    for record in batch:
        if record.study_uid and not record.patient_id:
            record.patient_id = patients.get(record.study_uid, "")


def patient_of_study(db: Database, study_uid: str) -> str:
    """The Patient ID of a held study ('' when none): for events whose study is about to go."""
    with db.read() as conn:
        value = conn.execute(select(Patient.patient_id).join(Study, Study.patient_fk == Patient.id)
                             .where(Study.study_uid == study_uid)).scalar()
    return value or ""


# -- reading (GET /api/audit) ------------------------------------------------------------------
#: Filters of :func:`search`: name -> column compared for equality.
EQUAL_FILTERS = {"actor": AuditEvent.actor, "action": AuditEvent.action, "patient_id": AuditEvent.patient_id,
                 "study_uid": AuditEvent.study_uid, "outcome": AuditEvent.outcome, "door": AuditEvent.door}
COLUMNS = ("id", "time", "door", "action", "outcome", "status", "reason", "actor", "credential", "ae_title",
           "source", "route", "patient_id", "study_uid", "details")


class InvalidAuditQuery(PacsError):
    """A filter of ``GET /api/audit`` that cannot be understood (400)."""

    http_status = 400


def search(db: Database, filters: dict[str, Any], *, since: float | None = None, until: float | None = None,
           after_id: int = 0, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Events matching every filter (equality; time range ``[since, until)``), oldest first."""
    conditions = [EQUAL_FILTERS[name] == value for name, value in filters.items()]
    if since is not None:
        conditions.append(AuditEvent.time >= since)
    if until is not None:
        conditions.append(AuditEvent.time < until)
    if after_id:
        conditions.append(AuditEvent.id > after_id)
    columns = [getattr(AuditEvent, name) for name in COLUMNS]
    statement = select(*columns).where(and_(True, *conditions)).order_by(AuditEvent.id).limit(limit).offset(offset)
    with db.read() as conn:
        return [dict(zip(COLUMNS, row)) for row in conn.execute(statement)]
