"""Small objects made durable through the index, their files flushed afterwards.

A received object is acknowledged only once it is durable (PS3.4 B.2.3: a success status
means the SCP keeps it). With a folder store that took three disk flushes in a row per
object: the spool file's data, the folder it is linked into, then the index's WAL; over
one association, where each C-STORE waits for the previous answer, they were a third of
the time per small instance. For a small object (at most :data:`STAGE_BYTES`, whose bytes
the DIMSE or STOW-RS receiver still holds) the index transaction that records it also inserts its
bytes (:class:`~pacs.index.models.StagedObject`): the one WAL flush of that commit makes
object and rows durable together, and the file is linked into its folder without a
flush. :class:`DeferredSync` then makes those files durable in the background, a batch at
a time (one ``syncfs``, or one flush per file and per folder), and deletes their rows in
the ingests' group commit. Readers see the file at once (the page cache serves it).

After a crash the files of objects still staged may be missing or damaged:
:func:`restore_staged`, run before the archive serves (``pacs serve``: the supervisor,
before any worker starts), writes each staged object whose key an instance row uses back
to the store, atomically and flushed, and drops every staged row.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, select

from .index import direct
from .index.models import StagedObject
from .index.writer import object_in_use

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from .archive import Archive
    from .index.db import Database
    from .storage import FolderStore

log = logging.getLogger(__name__)

#: Objects up to this size are staged (the DIMSE receiver keeps up to 64 KiB in memory,
#: the STOW-RS reader up to 1 MiB of a part).
STAGE_BYTES = 64 * 1024
#: The background flush waits this long after its first object to gather a batch.
BATCH_SECONDS = 0.05
#: Keys handed to one batch at most.
MAX_BATCH = 1000

_INSERT_STAGED = insert(StagedObject)


def stage(conn: Connection, key: str, content: bytes) -> None:
    """Record ``content`` as the object under ``key``, in the caller's transaction."""
    direct.insert(conn, _INSERT_STAGED, {"blob_key": key, "content": content})


class DeferredSync:
    """Makes staged objects' files durable in a background thread, then deletes their
    rows. A failed batch leaves its rows: :func:`restore_staged` covers them at start."""

    def __init__(self, db: Database, store: FolderStore) -> None:
        self._db, self._store = db, store
        self._pending: list[str] = []
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def link(self, key: str, path: str) -> None:
        """Store the unflushed file at ``path`` under ``key`` (linked, the file stays), for
        an object that is about to be committed staged."""
        self._store.put_file(key, path, synced=True, keep_source=True, defer_sync=True)

    def add(self, key: str) -> None:
        """The object under ``key`` was committed staged: make its file durable soon."""
        with self._cond:
            self._pending.append(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="staged-sync", daemon=True)
                self._thread.start()
            if len(self._pending) == 1:
                self._cond.notify()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every object added so far is flushed and its row deleted."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is pending and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                if not self._closed:  # gather what arrives meanwhile: fewer flushes
                    self._cond.wait(BATCH_SECONDS)
                keys, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._busy = True
            try:
                self._sync(keys)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _sync(self, keys: list[str]) -> None:
        try:
            self._store.sync_objects(keys)
            # In the ingests' group commit (SQLite): no write transaction of its own.
            self._db.write_grouped(lambda conn: conn.execute(
                delete(StagedObject).where(StagedObject.blob_key.in_(keys))))
        except Exception as exc:  # the rows stay; the next start restores their objects
            log.warning("could not flush %d staged objects: %s", len(keys), exc)


def restore_staged(archive: Archive) -> int:
    """Write every staged object an instance row uses back to the store, durably, and
    drop every staged row. Run before the archive serves. Another process may still be
    flushing its own staged objects (a worker of another node, ``pacs import``): a row it
    deletes meanwhile is skipped, and a file rewritten here holds the same bytes.
    Returns the number of objects restored."""
    with archive.db.read() as conn:
        staged = conn.execute(select(StagedObject.id, StagedObject.blob_key)).all()
    restored = 0
    for staged_id, key in staged:
        with archive.db.write() as conn:
            content = conn.execute(select(StagedObject.content).where(StagedObject.id == staged_id)).scalar()
            if content is None:  # flushed and deleted by its own process meanwhile
                continue
            if object_in_use(conn, key):  # else deleted or replaced since, and its file with it
                archive.store.put_bytes(key, content)
                restored += 1
            conn.execute(delete(StagedObject).where(StagedObject.id == staged_id))
    if restored:
        log.warning("restored %d objects whose files were not yet flushed", restored)
    return restored
