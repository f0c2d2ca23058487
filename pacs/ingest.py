"""The one ingest path: C-STORE, STOW-RS, folder import and AI results all end here.

Order of work (DESIGN.md "One ingest path"):

0. the object is spooled to a file in the archive's incoming folder (DIMSE receives
   into it; other callers' files are copied) and fsynced (a large one received over
   DIMSE in the background, while 1-2 run);
1. parse the header only and validate (UIDs present and well formed, SOP class as
   negotiated);
2. hash the bytes; an identical re-send is answered as stored and changes nothing;
3. write the object (durable, atomic) to the blob store under its content-addressed key
   (a folder store hard-links the spool into place);
4. in one transaction: patient/study/series/instance rows, aggregates and an
   ``InstanceStored`` event; then the spool is removed.

The spool is the record of a write in progress: a crash between 3 and 4 (or a failure
in 4) leaves it in the incoming folder, and :func:`pacs.recovery.sweep_orphans` later removes the
object it names unless an index row uses it. So an index row never lacks its object, and
no object outlives a failed ingest past the grace period, without a database round trip
before the write. Object keys are content-addressed (``<sop>.<sha256 prefix>.dcm``):
two different objects under one SOP Instance UID never overwrite each other's bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import metrics
from .access import SYSTEM, Caller, ingest_scope, require
from .errors import Conflict, DuplicateConflict, PacsError, SOPClassMismatch, StorageUnavailable, StudyMismatch
from .events import EventType, append_event
from .staging import stage
from .incoming import create_spool_file
from .index import direct
from .index.models import Instance, PendingWrite, Series, Study
from .index.summary import write_summary
from .index.writer import (
    StaleEntry, bump_counts, bump_cached, entry_after_bump, lock_study, object_in_use, upsert_patient,
    upsert_series,
)
from .parse import ParsedInstance, parse_instance
from .storage import instance_key
from .storage.folder import fsync_file

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


#: Threads that fsync large received objects while ingest parses them.
_FLUSHER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ingest-fsync")
#: Objects up to this size are fsynced by the ingesting thread itself. Handing a small
#: object's flush to a thread cost more than the overlap saved (the wake-ups and GIL
#: hand-offs): DIMSE tiny objects over four associations went ~12 % faster inline, CT
#: slices (526 kB) ~5-10 % slower (docs/performance.md, session 10).
INLINE_FLUSH_BYTES = 128 * 1024


def _start_flush(path: str, size: int, background: bool) -> Future | None:
    """The fsync of a received object of ``size`` bytes: started in the background while
    ingest parses it when ``background`` and the object is large (its Future), else done
    here (None); a failure here is :class:`StorageUnavailable` before anything is written."""
    if background and size > INLINE_FLUSH_BYTES:
        return _FLUSHER.submit(fsync_file, path)
    try:
        fsync_file(path)
    except OSError as exc:
        raise _flush_failed(exc) from None
    return None


def _flushed(flushing: Future | None) -> None:
    """Wait for a background flush (None: it was done inline)."""
    try:
        if flushing is not None:
            flushing.result()
    except OSError as exc:
        raise _flush_failed(exc) from None


def _flush_failed(exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(f"cannot flush the received object: {exc.strerror or exc}")


def _wait_quietly(work: Future) -> None:
    """Wait for background file work whose failure is reported elsewhere."""
    try:
        work.result()
    except Exception:
        pass


def file_sha256(path: str) -> str:
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
    expected_study: str | None = None,
    consume: bool = False,
    sha256: str | None = None,
    content: bytes | None = None,
    caller: Caller = SYSTEM,
    flush_in_background: bool = True,
) -> IngestResult:
    """Ingest the Part 10 file at ``path``. With ``consume`` the file is ours to remove;
    it must then lie in the archive's incoming folder (the spool, see module doc).
    ``sha256``: the file's digest when the caller computed it while writing the file.
    ``content``: the file's bytes when the caller still holds them (a small object received
    over DIMSE): its header is parsed from them instead of read back from the file.
    ``expected_study``: refuse an instance of another study (STOW-RS to /studies/{study})
    before anything is written. ``caller`` needs the scope of ``source`` (pacs/access.py)
    and, when confined to a study, the object must be of that study.
    ``flush_in_background``: a large object's fsync overlaps its parse in a flusher thread;
    False when the caller already ingests several objects at once (STOW-RS parts), where
    that hand-off only adds thread wake-ups."""
    started = time.perf_counter()
    try:
        require(caller, ingest_scope(source))
    except PacsError:
        if consume:
            _unlink_quietly(os.fspath(path))
        raise
    spool = _Spool(os.fspath(path) if consume else _spool_copy(archive, os.fspath(path)))
    flushing: Future | None = None
    try:
        size = os.path.getsize(spool.path) if content is None else len(content)
        staged = content if content is not None and archive.stages(size) else None
        if staged is None:  # a staged object is made durable by its index commit instead
            flushing = _start_flush(spool.path, size, flush_in_background)
        parsed = _parse_expected(spool.path, content, size, expected_sop_class, expected_study)
        require(caller, ingest_scope(source), parsed.study_uid)
        sha = sha256 or file_sha256(spool.path)
        result = _store_and_index(archive, spool, parsed, size, sha, source, calling_ae, flushing, staged)
    except PacsError as exc:
        metrics.INGEST_FAILURES.labels(reason=type(exc).__name__).inc()
        raise
    finally:
        if flushing is not None:
            _wait_quietly(flushing)
        if not spool.keep:
            _unlink_quietly(spool.path)
    metrics.INGEST_SECONDS.observe(time.perf_counter() - started)
    if result.status in ("stored", "replaced"):
        metrics.INSTANCES_STORED.labels(source=source).inc()
        metrics.BYTES_STORED.inc(size)
    return result


def _parse_expected(path: str, content: bytes | None, size: int, sop_class: str | None,
                    study: str | None) -> ParsedInstance:
    """The object's header (from ``content`` when held, else from its file), refused when
    it is not of the SOP class negotiated for it (PS3.4 B.2.3) or of the study asked for."""
    with open(path, "rb") if content is None else io.BytesIO(content) as fp:
        parsed = parse_instance(fp, size)
    if sop_class and parsed.sop_class_uid != sop_class:
        raise SOPClassMismatch("SOPClassUID differs from the negotiated SOP class")
    if study and parsed.study_uid != study:
        raise StudyMismatch("StudyInstanceUID differs from the study of the request")
    return parsed


@dataclass
class _Spool:
    """The received object in the incoming folder; ``keep``: leave it for the sweep."""

    path: str
    keep: bool = False


def _spool_copy(archive: Archive, path: str) -> str:
    """A copy of a caller's file in the incoming folder (the caller's file stays)."""
    fd, copy = create_spool_file(archive.incoming_dir)
    os.close(fd)
    try:
        shutil.copyfile(path, copy)
    except BaseException:
        _unlink_quietly(copy)
        raise
    return copy


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def ingest_bytes(archive: Archive, data: bytes, *, source: str, calling_ae: str = "",
                 caller: Caller = SYSTEM) -> IngestResult:
    """Ingest an object held in memory (small objects, tests): spooled to the temp dir."""
    fd, path = create_spool_file(archive.incoming_dir)
    with os.fdopen(fd, "wb") as fp:
        fp.write(data)
    return ingest_file(archive, path, source=source, calling_ae=calling_ae, consume=True, caller=caller,
                       content=data)


def ingest_dataset(archive: Archive, ds: Dataset, *, source: str, caller: Caller = SYSTEM) -> IngestResult:
    """Ingest a data set the archive made itself (a report's or an AI engine's SR): written
    as Part 10 straight into a spool file, then the one ingest path."""
    fd, path = create_spool_file(archive.incoming_dir)
    try:
        with os.fdopen(fd, "wb") as fp:
            dcmwrite(fp, ds, enforce_file_format=True)
    except BaseException:
        _unlink_quietly(path)
        raise
    return ingest_file(archive, path, source=source, consume=True, caller=caller)


def _result(parsed: ParsedInstance, status: str, size: int, warning: str = "") -> IngestResult:
    return IngestResult(
        status, parsed.sop_class_uid, parsed.sop_instance_uid,
        parsed.study_uid, parsed.series_uid, size, warning,
    )


_SELECT_EXISTING = select(Instance.id, Instance.sha256, Instance.blob_key, Instance.series_fk).where(
    Instance.sop_instance_uid == bindparam("b_sop")
)


_INSERT_INSTANCE = insert(Instance)
_INSERT_INSTANCE_RETURNING = insert(Instance).returning(Instance.id)


def _existing(archive: Archive, sop_uid: str):  # type: ignore[no-untyped-def]
    with archive.db.read() as conn:
        return conn.execute(_SELECT_EXISTING, {"b_sop": sop_uid}).first()


def _store_and_index(
    archive: Archive, spool: _Spool, parsed: ParsedInstance, size: int, sha: str,
    source: str, calling_ae: str, flushing: Future | None, staged: bytes | None = None,
) -> IngestResult:
    """Write the object, then one index transaction.

    Optimistic: nothing is read first. A new instance (nearly every one) is inserted at
    once; a SOP Instance UID already held makes the insert fail on its unique index and
    the duplicate policy decides then (:func:`_index`). That saves a read transaction per
    instance; a re-send costs a write of the object instead, which for identical content
    is a no-op in the folder store (same content-addressed key) and a repeated PUT on S3.
    An object written for nothing (policy ``keep`` or ``reject``) is removed again.

    Once the object is written under its key, any failure leaves the spool in the
    incoming folder: :func:`pacs.recovery.sweep_orphans` then removes the object unless an index row
    uses it (an identical copy stored concurrently may).

    ``staged``: the object's bytes, recorded by the index transaction, which makes the
    object durable; its file is flushed afterwards (pacs/staging.py).
    """
    key = instance_key(parsed.study_uid, parsed.series_uid, parsed.sop_instance_uid, sha[:16])
    try:
        # While a large spool's fsync runs in the background: a folder store links it
        # into place and fsyncs the folder, so the two disk flushes overlap (a power loss
        # between them leaves an object without an index row, never the reverse).
        if staged is None:
            archive.store.put_file(key, spool.path, synced=True, keep_source=True)
        else:  # made durable by the index commit; the file is flushed later
            archive.deferred_sync.link(key, spool.path)
        _flushed(flushing)
    except BaseException:
        # A failed write may still land (an S3 PUT that timed out here completes there):
        # record it, so that the sweep removes the object unless an index row uses it.
        spool.keep = not _record_failed_write(archive, key)
        raise
    try:
        status, replaced_key = _index(archive, parsed, key, size, sha, source, calling_ae, staged)
    except Conflict:  # refused for good by the index (not interrupted): the object goes now
        spool.keep = not _discard_unused(archive, key)
        raise
    except BaseException:
        spool.keep = True
        raise
    if staged is not None and status in ("stored", "replaced"):
        archive.deferred_sync.add(key)
    if status == "kept":
        spool.keep = not _discard_unused(archive, key)
        return _result(parsed, status, size, "already stored; new copy discarded")
    if status == "replaced" and replaced_key not in (None, key):
        archive.store.delete(replaced_key)
    return _result(parsed, status, size)


def _record_failed_write(archive: Archive, key: str) -> bool:
    """A :class:`PendingWrite` row for an object write that failed (its outcome is
    unknown); False when the index cannot take it either (then the spool stays instead)."""
    try:
        with archive.db.write() as conn:
            conn.execute(insert(PendingWrite).values(blob_key=key, created_at=time.time()))
        return True
    except Exception as exc:
        log.warning("could not record the failed write of %s: %s", key, exc)
        return False


def _discard_unused(archive: Archive, key: str) -> bool:
    """Delete the object written under ``key`` unless an index row uses it (an identical
    copy committed meanwhile); False when that failed (the sweep will retry)."""
    try:
        with archive.db.write() as conn:
            if not object_in_use(conn, key):
                archive.store.delete(key)
        return True
    except (PacsError, OSError) as exc:
        log.warning("could not remove the refused object %s: %s", key, exc)
        return False


def _index(
    archive: Archive, parsed: ParsedInstance, key: str, size: int, sha: str,
    source: str, calling_ae: str, staged: bytes | None = None,
) -> tuple[str, str | None]:
    """One transaction: the rows, aggregates and event; the status and, for ``replaced``,
    the key of the object replaced. The instance is inserted without looking first; when
    its SOP Instance UID is held (the insert fails on the unique index) the duplicate
    policy decides: ``duplicate`` for the same content, else ``kept`` (policy keep),
    the held row overwritten in a second transaction (``replaced``), or a refusal."""
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
    def write(held: bool) -> str:
        return archive.db.write_grouped(lambda conn: _write_rows(conn, archive, parsed, row, held, staged))

    try:
        try:
            return write(False), None
        except StaleEntry:  # the cached series is gone; its writes were undone: look it up
            archive.series_cache.forget(parsed.series_uid)
            return write(True), None
    except IntegrityError:  # the SOP Instance UID is held (stored before, or just now)
        current = _existing(archive, parsed.sop_instance_uid)
    policy = archive.settings.duplicate_policy
    if current is not None and current.sha256 == sha:
        return "duplicate", None
    if current is not None and policy == "keep":
        return "kept", None
    if current is None or policy != "overwrite":
        raise DuplicateConflict("SOP Instance UID already stored with other content")
    try:  # the held row, looked up and overwritten in the transaction (_write_rows)
        return write(True), current.blob_key
    except IntegrityError:
        raise DuplicateConflict("SOP Instance UID stored concurrently with other content") from None


def _write_rows(conn, archive: Archive, parsed: ParsedInstance, row: dict, held: bool = True,  # type: ignore[no-untyped-def]
                staged: bytes | None = None) -> str:
    now = time.time()
    if not held and _write_cached(conn, archive, parsed, row, now):
        status = "stored"
    else:
        status = _write_looked_up(conn, archive, parsed, row, held, now)
    if staged is not None and status != "duplicate":
        stage(conn, row["blob_key"], staged)
    return status


def _write_looked_up(conn, archive: Archive, parsed: ParsedInstance, row: dict, held: bool, now: float) -> str:  # type: ignore[no-untyped-def]
    patient_pk = upsert_patient(conn, parsed.patient)
    study = lock_study(conn, parsed.study_uid, patient_pk, parsed.study, first=(parsed.dicom_json, row["sha256"]))
    series_pk, new_series = upsert_series(conn, parsed.series_uid, study.id, parsed.series)
    old = conn.execute(_SELECT_EXISTING, {"b_sop": parsed.sop_instance_uid}).first() if held else None
    if old is not None and old.sha256 == row["sha256"]:
        return "duplicate"  # an identical copy committed meanwhile
    if old is not None:
        if archive.settings.duplicate_policy != "overwrite" or old.series_fk != series_pk:
            raise DuplicateConflict("SOP Instance UID already stored with other content")
        conn.execute(update(Instance).where(Instance.id == old.id).values(**row))
        if old.id == study.summary_rep:  # the study's first instance: its summary follows
            write_summary(conn, study.id, old.id, row["dicom_json"], row["sha256"])
        _touch(conn, study.id, series_pk, now)
        status = "replaced"
    else:
        instance_pk = conn.execute(_INSERT_INSTANCE_RETURNING, {"series_fk": series_pk, **row}).scalar()
        modality = parsed.series["modality"]
        bump_counts(conn, study, series_pk, new_series, modality, parsed.sop_class_uid, now, instance_pk)
        archive.series_cache.put(parsed.series_uid, entry_after_bump(
            study, parsed.patient, patient_pk, series_pk, new_series, modality, parsed.sop_class_uid))
        status = "stored"
    _instance_stored(conn, parsed, replaced=status == "replaced")
    return status


def _write_cached(conn, archive: Archive, parsed: ParsedInstance, row: dict, now: float) -> bool:  # type: ignore[no-untyped-def]
    """The next instance of a series this process stored before, without looking up its
    patient, study and series: one conditional update each (study first, the lock order).
    False when the cache has nothing usable (nothing written)."""
    entry = archive.series_cache.get(parsed.series_uid, parsed.study_uid, parsed.patient,
                                     parsed.series["modality"], parsed.sop_class_uid)
    if entry is None or not bump_cached(conn, entry, now):
        return False
    direct.insert(conn, _INSERT_INSTANCE, {"series_fk": entry.series_pk, **row})
    _instance_stored(conn, parsed, replaced=False)
    return True


def _instance_stored(conn, parsed: ParsedInstance, *, replaced: bool) -> None:  # type: ignore[no-untyped-def]
    append_event(
        conn, EventType.INSTANCE_STORED, study_uid=parsed.study_uid, series_uid=parsed.series_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        payload={"sop_class_uid": parsed.sop_class_uid, "replaced": replaced},
    )


def _touch(conn, study_pk: int, series_pk: int, now: float) -> None:  # type: ignore[no-untyped-def]
    conn.execute(update(Series).where(Series.id == series_pk).values(last_instance_at=now, stable=False))
    conn.execute(update(Study).where(Study.id == study_pk).values(last_instance_at=now, stable=False))


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()
