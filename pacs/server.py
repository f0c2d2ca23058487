"""``pacs serve``: the DIMSE and HTTP servers in one process, plus background sweeps.

Lifecycle (aiohttp cleanup context): sweep orphans, start DIMSE, start the sweeps;
on SIGTERM aiohttp stops accepting HTTP, lets in-flight requests finish, then the DIMSE
server stops accepting and waits for in-flight associations before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from importlib.metadata import entry_points
from typing import AsyncIterator

from aiohttp import web

from .archive import Archive
from .balancer import Feed
from .dimse.find import RESPONSES
from .dimse.server import DimseServer
from .consumers import Consumer, Progress, consume_all
from .errors import PacsError
from .outbox_worker import OutboxSender
from .query.run import SUBSETS
from .settings import Settings
from .viewer_web import setup_viewer
from .web import create_app

log = logging.getLogger(__name__)

#: Entry-point group of HTTP front doors: each is ``setup(app, archive)`` (e.g. ``dicomweb``).
HTTP_ENTRY_POINTS = "pacs.http"
DIMSE = web.AppKey("dimse", DimseServer)
OUTBOX = web.AppKey("outbox", OutboxSender)
#: Event consumers the HTTP doors register (``app[CONSUMERS].append(...)`` in their setup).
CONSUMERS = web.AppKey("consumers", list)
#: Outbox hooks the HTTP doors register in their setup (pacs/outbox_worker.py): channel
#: prefix -> signer, channel prefix -> transport, and channel prefixes delivered in order.
OUTBOX_SIGNERS = web.AppKey("outbox_signers", dict)
OUTBOX_TRANSPORTS = web.AppKey("outbox_transports", dict)
OUTBOX_ORDERED = web.AppKey("outbox_ordered", list)
#: Channel prefix -> (action, study UID) of a message: its deliveries go to the audit trail.
OUTBOX_AUDITED = web.AppKey("outbox_audited", dict)
CONSUME_EVERY = 0.5
ORPHAN_SWEEP_EVERY = 60.0


async def _stability_loop(archive: Archive) -> None:
    interval = archive.settings.stability_check_interval
    while True:
        try:
            await asyncio.to_thread(archive.sweep_stable)
        except Exception:
            log.exception("stability sweep failed; retrying")
        await asyncio.sleep(interval)


async def _consumer_loop(archive: Archive, consumers: list[Consumer], sender: OutboxSender | None = None) -> None:
    """Apply the event log to every registered consumer (pacs/consumers.py); wake the
    outbox sender when events were applied (their messages are due now)."""
    progress = Progress()
    while True:
        if await asyncio.to_thread(consume_all, archive.db, consumers, progress) and sender is not None:
            sender.wake()
        await asyncio.sleep(CONSUME_EVERY)


async def _orphan_loop(archive: Archive) -> None:
    while True:
        await asyncio.sleep(ORPHAN_SWEEP_EVERY)
        try:
            await asyncio.to_thread(archive.sweep_orphans)
        except Exception:
            log.exception("orphan sweep failed; retrying")


def add_http_doors(app: web.Application, archive: Archive) -> None:
    """Call every installed ``pacs.http`` entry point with ``(app, archive)``, by name, so
    that ``pacs/`` composes the protocol packages without importing them."""
    for entry in sorted(entry_points(group=HTTP_ENTRY_POINTS), key=lambda e: e.name):
        log.debug("adding HTTP routes of %s (%s)", entry.name, entry.value)
        entry.load()(app, archive)


def build_application(
    archive: Archive, *, dimse_port: int | None = None,
    dimse_tls_port: int | None = None, feed: Feed | None = None,
) -> web.Application:
    """The full application: archive routes, DICOMweb routes when present, DIMSE, sweeps.

    ``dimse_tls_port``: the DICOM TLS port to bind (0: a free one); None: from the settings.
    ``feed``: connections come from the supervisor (:mod:`pacs.worker`).
    """
    from .bind import check_bind  # refuses a non-loopback address without authentication

    check_bind(archive.settings)
    app = create_app(archive)
    app[CONSUMERS] = []
    app[OUTBOX_SIGNERS], app[OUTBOX_TRANSPORTS], app[OUTBOX_ORDERED], app[OUTBOX_AUDITED] = {}, {}, [], {}
    add_http_doors(app, archive)
    setup_viewer(app, archive.settings)  # /viewer: the OHIF viewer, once installed

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        try:
            if feed is None:  # a worker's supervisor did it before starting the workers
                await asyncio.to_thread(archive.restore_staged)
            await asyncio.to_thread(archive.sweep_orphans)
        except PacsError as exc:  # come up anyway: /healthz and 0xA700 tell the story
            log.warning("recovery at start (staged objects, orphans) failed: %s", exc.reason)
        dimse = DimseServer(archive, feed=feed)
        await asyncio.to_thread(dimse.start, None, dimse_port, dimse_tls_port)
        app[DIMSE] = dimse
        app[OUTBOX] = sender = OutboxSender(archive, signers=app[OUTBOX_SIGNERS],
                                            transports=app[OUTBOX_TRANSPORTS], ordered=tuple(app[OUTBOX_ORDERED]),
                                            audited=app[OUTBOX_AUDITED])
        tasks = [asyncio.create_task(_stability_loop(archive)), asyncio.create_task(_orphan_loop(archive)),
                 asyncio.create_task(sender.run())]
        if app[CONSUMERS]:
            tasks.append(asyncio.create_task(_consumer_loop(archive, app[CONSUMERS], sender)))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(dimse.stop, archive.settings.shutdown_timeout)
        await asyncio.to_thread(archive.close)  # writes the queued audit events: off the loop

    app.cleanup_ctx.append(lifecycle)
    return app


def size_query_caches(entries: int) -> None:
    """Bound this process's query caches (``PACS_QUERY_CACHE_ENTRIES``)."""
    SUBSETS.resize(entries)
    RESPONSES.resize(entries)


def prepare_process(settings: Settings, *, migrate: bool = True, feed: Feed | None = None) -> web.Application:
    """The application of one server process (a lone one, or a worker: ``feed``), with
    what every server process sets up once: its query caches, the collector, the warning
    about plain HTTP."""
    from .tls import warn_plaintext

    app = build_application(Archive(settings, migrate=migrate), feed=feed)
    size_query_caches(settings.query_cache_entries)
    # Everything loaded so far (modules, pydicom's dictionaries, SQLAlchemy's metadata)
    # lives as long as the process: keep it out of the cyclic garbage collector, whose
    # full passes over it stalled requests by ~100 ms (docs/performance.md).
    gc.freeze()
    warn_plaintext(settings)
    return app


def _serve_one(settings: Settings) -> None:
    """One server process until SIGTERM/SIGINT."""
    from .tls import http_context

    app = prepare_process(settings)
    log.info("HTTP%s listening on %s:%d", "S" if settings.https else "", settings.host, settings.http_port)
    web.run_app(
        app,
        host=settings.host,
        port=settings.http_port,
        shutdown_timeout=settings.shutdown_timeout,
        ssl_context=http_context(settings),
        print=None,
        access_log=None,
    )


def serve(settings: Settings) -> None:
    """Run the server until SIGTERM/SIGINT: in this process, or as supervised workers."""
    if settings.process_count == 1:
        _serve_one(settings)
        return
    from .supervisor import supervise

    supervise(settings)
