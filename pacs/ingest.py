"""The one ingest path: C-STORE, STOW-RS, folder import and AI results all end here.

Order of work (DESIGN.md "One ingest path"):

1. parse the header only and validate (UIDs present and well formed, SOP class as
   negotiated);
2. hash the bytes; an identical re-send is answered as stored and changes nothing;
3. record a pending write, then write the object (durable, atomic) to the blob store;
4. in one transaction: patient/study/series/instance rows, aggregates, an
   ``InstanceStored`` event, and removal of the pending write.

A crash between 3 and 4 leaves an orphan object named by its pending row, which
:func:`sweep_orphans` removes after the grace period; it never leaves an index row
without its object. Object keys are content-addressed (``<sop>.<sha256 prefix>.dcm``):
two different objects under one SOP Instance UID never overwrite each other's bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import metrics
from .errors import DuplicateConflict, PacsError, SOPClassMismatch, StorageUnavailable
from .events import EventType, append_event
from .index.models import Instance, PendingWrite, Series, Study
from .index.writer import bump_counts, lock_study, upsert_patient, upsert_series
from .parse import ParsedInstance, parse_instance
from .storage import instance_key

if TYPE_CHECKING:
    from .archive import Archive

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """Outcome of one ingest: ``stored``, ``duplicate`` (identical re-send),
    ``kept`` (different object, policy keep) or ``replaced`` (policy overwrite)."""

    status: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    size: int
    warning: str = ""


#: Threads that fsync received objects while ingest parses them.
_FLUSHER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ingest-fsync")


def _flush(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flushed(flushing: Future) -> None:
    try:
        flushing.result()
    except OSError as exc:
        raise StorageUnavailable(f"cannot flush the received object: {exc.strerror or exc}") from None


def _wait_quietly(work: Future) -> None:
    """Wait for background file work whose failure is reported elsewhere."""
    try:
        work.result()
    except Exception:
        pass


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def ingest_file(
    archive: Archive,
    path: str | os.PathLike[str],
    *,
    source: str,
    calling_ae: str = "",
    expected_sop_class: str | None = None,
    consume: bool = False,
) -> IngestResult:
    """Ingest the Part 10 file at ``path``. With ``consume`` the file may be moved away."""
    started = time.perf_counter()
    path = os.fspath(path)
    # A file that will be renamed into the store is flushed to disk while we parse and
    # check it: fsync waits on the disk with the GIL released (~0.4 ms a small object).
    flushing = _FLUSHER.submit(_flush, path) if consume else None
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            parsed = parse_instance(fp, size)
        if expected_sop_class and parsed.sop_class_uid != expected_sop_class:
            raise SOPClassMismatch("SOPClassUID differs from the negotiated SOP class")
        sha = _sha256(path)
        result = _store_and_index(archive, path, parsed, size, sha, source, calling_ae, consume, flushing)
    except PacsError as exc:
        metrics.INGEST_FAILURES.labels(reason=type(exc).__name__).inc()
        raise
    finally:
        if flushing is not None:
            _wait_quietly(flushing)
        if consume and os.path.exists(path):
            os.unlink(path)
    metrics.INGEST_SECONDS.observe(time.perf_counter() - started)
    if result.status in ("stored", "replaced"):
        metrics.INSTANCES_STORED.labels(source=source).inc()
        metrics.BYTES_STORED.inc(size)
    return result


def ingest_bytes(archive: Archive, data: bytes, *, source: str, calling_ae: str = "") -> IngestResult:
    """Ingest an object held in memory (small objects, tests): spooled to the temp dir."""
    fd, path = tempfile.mkstemp(suffix=".dcm", dir=archive.incoming_dir)
    with os.fdopen(fd, "wb") as fp:
        fp.write(data)
    return ingest_file(archive, path, source=source, calling_ae=calling_ae, consume=True)


def _result(parsed: ParsedInstance, status: str, size: int, warning: str = "") -> IngestResult:
    return IngestResult(
        status, parsed.sop_class_uid, parsed.sop_instance_uid,
        parsed.study_uid, parsed.series_uid, size, warning,
    )


_SELECT_EXISTING = select(Instance.id, Instance.sha256, Instance.blob_key, Instance.series_fk).where(
    Instance.sop_instance_uid == bindparam("b_sop")
)
_INSERT_PENDING = insert(PendingWrite).returning(PendingWrite.id)
_DELETE_PENDING = delete(PendingWrite).where(PendingWrite.id == bindparam("b_id"))


def _existing(archive: Archive, sop_uid: str):  # type: ignore[no-untyped-def]
    with archive.db.read() as conn:
        return conn.execute(_SELECT_EXISTING, {"b_sop": sop_uid}).first()


def _check_and_begin(archive: Archive, parsed: ParsedInstance, sha: str):  # type: ignore[no-untyped-def]
    """One transaction: look for a held copy; if the object must be written, record the
    pending write. Returns (existing row or None, key or None, pending id or None)."""
    with archive.db.write() as conn:
        existing = conn.execute(_SELECT_EXISTING, {"b_sop": parsed.sop_instance_uid}).first()
        if existing is not None:
            if existing.sha256 == sha:
                return existing, None, None
            if archive.settings.duplicate_policy == "reject":
                raise DuplicateConflict("SOP Instance UID already stored with other content")
            if archive.settings.duplicate_policy == "keep":
                return existing, None, None
        key = instance_key(parsed.study_uid, parsed.series_uid, parsed.sop_instance_uid, sha[:16])
        pending_id = conn.execute(_INSERT_PENDING, {"blob_key": key, "created_at": time.time()}).scalar_one()
        return existing, key, int(pending_id)


def _put(archive: Archive, key: str, path: str, consume: bool, synced: bool = False) -> None:
    if consume:
        archive.store.put_file(key, path, synced=synced)
        return
    fd, copy = tempfile.mkstemp(suffix=".dcm", dir=archive.incoming_dir)
    os.close(fd)
    try:  # keep the caller's file: store a streamed copy
        shutil.copyfile(path, copy)
        archive.store.put_file(key, copy)
    finally:
        if os.path.exists(copy):
            os.unlink(copy)


def _store_and_index(
    archive: Archive, path: str, parsed: ParsedInstance, size: int, sha: str,
    source: str, calling_ae: str, consume: bool, flushing: Future | None = None,
) -> IngestResult:
    existing, key, pending_id = _check_and_begin(archive, parsed, sha)
    if key is None or pending_id is None:
        if existing is not None and existing.sha256 == sha:
            return _result(parsed, "duplicate", size)
        return _result(parsed, "kept", size, "already stored; new copy discarded")
    try:
        if flushing is not None:
            _flushed(flushing)
        _put(archive, key, path, consume, synced=flushing is not None)
        status = _index(archive, parsed, key, size, sha, source, calling_ae, pending_id)
    except BaseException:
        _abandon_write(archive, key, pending_id)
        raise
    if status == "replaced" and existing is not None and existing.blob_key != key:
        archive.store.delete(existing.blob_key)
    return _result(parsed, status, size)


def _abandon_write(archive: Archive, key: str, pending_id: int) -> None:
    """Undo a failed write, unless an index row (an identical concurrent ingest) uses it."""
    try:
        with archive.db.write() as conn:
            in_use = conn.execute(select(Instance.id).where(Instance.blob_key == key)).first()
            others = conn.execute(
                select(PendingWrite.id).where(PendingWrite.blob_key == key, PendingWrite.id != pending_id)
            ).first()
            if in_use is None and others is None:
                archive.store.delete(key)
            conn.execute(delete(PendingWrite).where(PendingWrite.id == pending_id))
    except Exception:  # the sweeper will finish the job
        log.warning("could not clean up a failed write; the orphan sweep will", exc_info=True)


def _index(
    archive: Archive, parsed: ParsedInstance, key: str, size: int, sha: str,
    source: str, calling_ae: str, pending_id: int,
) -> str:
    row = {
        "sop_instance_uid": parsed.sop_instance_uid,
        "sop_class_uid": parsed.sop_class_uid,
        "transfer_syntax_uid": parsed.transfer_syntax_uid,
        "blob_key": key, "size": size, "sha256": sha,
        "pixel_offset": parsed.pixel_offset, "pixel_length": parsed.pixel_length,
        "frame_ranges": _json(parsed.frame_ranges),
        "bulk_ranges": _json(parsed.bulk_ranges) if parsed.bulk_ranges else None,
        "dicom_json": parsed.dicom_json,
        "source": source[:32], "calling_ae": calling_ae[:16],
        **parsed.instance,
    }
    try:
        with archive.db.write() as conn:
            status = _write_rows(conn, archive, parsed, row)
            conn.execute(_DELETE_PENDING, {"b_id": pending_id})
        return status
    except IntegrityError:
        # A concurrent ingest of the same SOP Instance UID committed first.
        current = _existing(archive, parsed.sop_instance_uid)
        if current is not None and current.sha256 == sha:
            with archive.db.write() as conn:
                conn.execute(delete(PendingWrite).where(PendingWrite.id == pending_id))
            return "duplicate"
        raise DuplicateConflict("SOP Instance UID stored concurrently with other content") from None


_SELECT_OLD = select(Instance.id, Instance.series_fk, Instance.sha256).where(
    Instance.sop_instance_uid == bindparam("b_sop")
)
_INSERT_INSTANCE = insert(Instance)


def _write_rows(conn, archive: Archive, parsed: ParsedInstance, row: dict) -> str:  # type: ignore[no-untyped-def]
    now = time.time()
    patient_pk = upsert_patient(conn, parsed.patient)
    study = lock_study(conn, parsed.study_uid, patient_pk, parsed.study)
    series_pk, new_series = upsert_series(conn, parsed.series_uid, study.id, parsed.series)
    old = conn.execute(_SELECT_OLD, {"b_sop": parsed.sop_instance_uid}).first()
    if old is not None and old.sha256 == row["sha256"]:
        return "duplicate"  # an identical copy committed meanwhile
    if old is not None:
        if archive.settings.duplicate_policy != "overwrite" or old.series_fk != series_pk:
            raise DuplicateConflict("SOP Instance UID already stored with other content")
        conn.execute(update(Instance).where(Instance.id == old.id).values(**row))
        _touch(conn, study.id, series_pk, now)
        status = "replaced"
    else:
        conn.execute(_INSERT_INSTANCE, {"series_fk": series_pk, **row})
        bump_counts(conn, study, series_pk, new_series, parsed.series["modality"], parsed.sop_class_uid, now)
        status = "stored"
    append_event(
        conn, EventType.INSTANCE_STORED, study_uid=parsed.study_uid, series_uid=parsed.series_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        payload={"sop_class_uid": parsed.sop_class_uid, "replaced": status == "replaced"},
    )
    return status


def _touch(conn, study_pk: int, series_pk: int, now: float) -> None:  # type: ignore[no-untyped-def]
    conn.execute(update(Series).where(Series.id == series_pk).values(last_instance_at=now, stable=False))
    conn.execute(update(Study).where(Study.id == study_pk).values(last_instance_at=now, stable=False))


def _json(value: object) -> str | None:
    import json

    return None if value is None else json.dumps(value, separators=(",", ":"))


def sweep_orphans(archive: Archive, grace_seconds: float) -> int:
    """Remove objects whose write never reached the index, older than the grace period."""
    cutoff = time.time() - grace_seconds
    with archive.db.read() as conn:
        stale = conn.execute(
            select(PendingWrite.id, PendingWrite.blob_key).where(PendingWrite.created_at <= cutoff)
        ).all()
    removed = 0
    for pending_id, key in stale:
        with archive.db.write() as conn:
            in_use = conn.execute(select(Instance.id).where(Instance.blob_key == key)).first()
            if in_use is None:
                archive.store.delete(key)
                removed += 1
            conn.execute(delete(PendingWrite).where(PendingWrite.id == pending_id))
    archive.store.sweep_temporary(grace_seconds)
    _sweep_incoming(archive, grace_seconds)
    return removed


def _sweep_incoming(archive: Archive, grace_seconds: float) -> None:
    cutoff = time.time() - grace_seconds
    for entry in Path(archive.incoming_dir).glob("*.dcm"):
        try:
            if entry.stat().st_mtime <= cutoff:
                entry.unlink()
        except FileNotFoundError:
            pass
