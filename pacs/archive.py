"""The archive service: the one object every door calls (DESIGN.md "One archive, several doors").

It owns the index database and the blob store and exposes ingest, the change feed,
health and housekeeping. Protocol code holds a reference to it and nothing else.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .access import SYSTEM, Caller, confine, require
from .errors import StorageUnavailable
from .events import ChangeEvent, read_changes, sweep_stable
from .index.db import Database
from .index.writer import SeriesCache
from .index.migrate import upgrade
from .ingest import IngestResult, ingest_bytes, ingest_dataset, ingest_file
from .recovery import sweep_orphans
from .settings import Settings
from .staging import STAGE_BYTES, DeferredSync, restore_staged
from .storage import BlobStore, FolderStore, open_blob_store

if TYPE_CHECKING:
    from .audit import AuditTrail
    from .dimse.policy import AEPolicy
    from .frames import PixelSource
    from .query import Query
    from .query.run import Match
    from .retrieve import MetadataRow, RetrieveItem

log = logging.getLogger(__name__)


class Archive:
    """Settings + index + blob store, and the operations on them."""

    def __init__(self, settings: Settings, *, store: BlobStore | None = None, migrate: bool = True) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.resolved_database_url, pool_size=max(10, settings.max_associations + 8),
                           sqlite_synchronous=settings.sqlite_synchronous)
        self.store = store or open_blob_store(
            settings.resolved_storage_url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            multipart_threshold=settings.s3_multipart_threshold,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
            attempts=settings.s3_max_attempts,
        )
        self.incoming_dir = self._incoming_dir()
        self.series_cache = SeriesCache()  # ingest's hints, see pacs.index.writer
        if migrate:
            upgrade(self.db)
        self.audit  # noqa: B018  the one audit trail, made before any door's threads ask for it

    def _incoming_dir(self) -> str:
        """Where received objects are spooled: on the blob folder's filesystem when local,
        so that storing them is a rename, not a copy."""
        if isinstance(self.store, FolderStore):
            path = Path(self.store.temp_dir)
        else:
            path = self.settings.data_dir / "incoming"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    # -- ingest (every door's one path; the caller needs the source's scope) ------------
    def ingest_file(self, path: str | os.PathLike[str], *, caller: Caller = SYSTEM,
                    **kwargs) -> IngestResult:  # type: ignore[no-untyped-def]
        """Ingest a Part 10 file (see :func:`pacs.ingest.ingest_file`)."""
        return ingest_file(self, path, caller=caller, **kwargs)

    def ingest_bytes(self, data: bytes, *, caller: Caller = SYSTEM, **kwargs) -> IngestResult:  # type: ignore[no-untyped-def]
        """Ingest a Part 10 object held in memory."""
        return ingest_bytes(self, data, caller=caller, **kwargs)

    def ingest_dataset(self, ds, *, source: str, caller: Caller = SYSTEM) -> IngestResult:  # type: ignore[no-untyped-def]
        """Ingest a data set the archive made (see :func:`pacs.ingest.ingest_dataset`)."""
        return ingest_dataset(self, ds, source=source, caller=caller)

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
               caller: Caller):  # type: ignore[no-untyped-def]
        """Delete a study, a series or an instance (see :mod:`pacs.delete`); needs ``delete``."""
        from .delete import delete_objects

        require(caller, "delete", study_uid)
        return delete_objects(self, study_uid, series_uid, sop_uid)

    def stages(self, size: int) -> bool:
        """Whether a received object of ``size`` bytes, held in memory, is made durable
        by its index commit and its file flushed afterwards (:mod:`pacs.staging`)."""
        return size <= STAGE_BYTES and isinstance(self.store, FolderStore)

    @cached_property
    def deferred_sync(self) -> DeferredSync:
        """Flushes staged objects' files in the background (:mod:`pacs.staging`)."""
        assert isinstance(self.store, FolderStore)
        return DeferredSync(self.db, self.store)

    def restore_staged(self) -> int:
        """Before serving: write back objects whose files a crash may have lost."""
        return restore_staged(self)

    # -- query and retrieve, for a caller (pacs/access.py) -------------------------------
    def search(self, query: Query, tags: list[str] | None = None, *, caller: Caller) -> list[Match]:
        """Matches of ``query`` (PS3.4 C.2.2.2 matching, :func:`pacs.query.run.search`)."""
        from .query.run import search

        return list(search(self.db, confine(caller, query), tags))

    def plan_retrieve(self, query: Query, *, caller: Caller) -> list[RetrieveItem]:
        """The instances a retrieve of ``query`` sends, in order (:func:`pacs.retrieve.plan`)."""
        from .retrieve import plan

        return plan(self, confine(caller, query))

    def instance_metadata(self, query: Query, *, caller: Caller, with_json: bool = True) -> list[MetadataRow]:
        """Stored DICOM JSON of the instances ``query`` selects (WADO-RS metadata)."""
        from .retrieve import instance_metadata

        return instance_metadata(self, confine(caller, query), with_json)

    def locate(self, study: str, series: str, sop: str, *, caller: Caller) -> PixelSource:
        """One instance's pixel and bulk data locations (:func:`pacs.frames.locate`)."""
        from .frames import locate

        require(caller, "read", study)
        return locate(self, study, series, sop)

    def instances_of(self, study: str, series: str | None = None, *, caller: Caller) -> list[PixelSource]:
        """The pixel data sources of a study or series (:func:`pacs.frames.instances_of`)."""
        from .frames import instances_of

        require(caller, "read", study)
        return instances_of(self, study, series)

    # -- events -------------------------------------------------------------------
    def changes(self, since: int, limit: int) -> list[ChangeEvent]:
        return read_changes(self.db, since, limit)

    def sweep_stable(self, now: float | None = None) -> int:
        return sweep_stable(self.db, self.settings.stable_seconds, now)

    # -- access -------------------------------------------------------------------
    @cached_property
    def policy(self) -> AEPolicy:
        """What each remote AE may do (:class:`pacs.dimse.policy.AEPolicy`)."""
        from .dimse.policy import AEPolicy

        return AEPolicy(self.db, open_mode=self.settings.open_mode, check_address=self.settings.check_ae_address)

    @cached_property
    def audit(self) -> AuditTrail:
        """The PHI access audit trail every door records to (:mod:`pacs.audit`)."""
        from .audit import AuditTrail
        from .audit_syslog import SyslogExporter

        settings = self.settings
        exporter = SyslogExporter(settings.audit_syslog, settings.ae_title) if settings.audit_syslog else None
        return AuditTrail(self.db, enabled=settings.audit_enabled, capacity=settings.audit_queue_size,
                          exporter=exporter)

    # -- housekeeping ---------------------------------------------------------------
    def sweep_orphans(self, grace_seconds: float | None = None) -> int:
        grace = self.settings.orphan_grace_seconds if grace_seconds is None else grace_seconds
        removed = sweep_orphans(self, grace)
        if removed:
            log.info("removed %d orphan objects", removed)
        return removed

    def health(self) -> dict[str, str]:
        """Reachability of the index and the blob store."""
        status = {}
        for name, check in (("database", self.db.check), ("storage", self.store.check)):
            try:
                check()
                status[name] = "ok"
            except (StorageUnavailable, OSError) as exc:
                status[name] = f"unavailable: {exc}"[:200]
        return status

    def close(self) -> None:
        if "deferred_sync" in self.__dict__:  # flush the staged objects' files first
            self.deferred_sync.close()
        if "audit" in self.__dict__:  # write the queued audit events first
            self.audit.close()
        self.db.dispose()
