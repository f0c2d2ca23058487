"""What a crash or a failure left behind, cleaned up (DESIGN.md "One ingest path").

:func:`sweep_orphans` (at start and every minute) removes objects whose write never
reached the index: recorded failed writes, and spool files left in the incoming folder
after their object may have been written (pacs/ingest.py). Staged small objects whose
files may not have reached the disk are restored by :func:`pacs.staging.restore_staged`
before the archive serves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from .errors import PacsError
from .index.models import PendingWrite
from .index.writer import object_in_use
from .ingest import file_sha256
from .parse import parse_instance
from .storage import instance_key

if TYPE_CHECKING:
    from .archive import Archive


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
            if not object_in_use(conn, key):
                archive.store.delete(key)
                removed += 1
            conn.execute(delete(PendingWrite).where(PendingWrite.id == pending_id))
    archive.store.sweep_temporary(grace_seconds)
    return removed + _sweep_incoming(archive, grace_seconds)


def _sweep_incoming(archive: Archive, grace_seconds: float) -> int:
    """Spooled objects older than the grace period: a crash or a failure left them after
    their object may have been written. Remove that object unless an index row uses it,
    then the spool. Returns the number of objects removed."""
    cutoff, removed = time.time() - grace_seconds, 0
    for entry in Path(archive.incoming_dir).glob("*.dcm"):
        try:
            if entry.stat().st_mtime > cutoff:
                continue
            key = _spooled_key(entry)
            if key is not None:
                with archive.db.write() as conn:
                    if not object_in_use(conn, key) and archive.store.exists(key):
                        archive.store.delete(key)
                        removed += 1
            entry.unlink()
        except FileNotFoundError:
            pass
    return removed


def _spooled_key(path: Path) -> str | None:
    """The blob key a spooled object is stored under, or None when it cannot be parsed
    (then it was refused before anything was written)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            parsed = parse_instance(fp, size)
        sha = file_sha256(str(path))
    except (PacsError, OSError):
        return None
    return instance_key(parsed.study_uid, parsed.series_uid, parsed.sop_instance_uid, sha[:16])
