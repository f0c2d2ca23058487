"""One worker process of ``pacs serve`` when it runs several (:mod:`pacs.supervisor`).

The worker binds no port: the supervisor accepts every DIMSE, DICOM TLS and HTTP
connection and hands it over (:mod:`pacs.balancer`). A router thread takes each one:
an association goes to :meth:`pacs.dimse.server.DimseServer.admit` (a thread of its
own, as in a single process), an HTTP connection to the worker's aiohttp server through
``loop.connect_accepted_socket``. HTTP connections that closed are reported back so the
supervisor's counts stay exact.

SIGTERM (forwarded by the supervisor) or the supervisor's death (its channel closes)
stops the worker as ``web.run_app`` would: in-flight HTTP requests and open
associations finish within ``PACS_SHUTDOWN_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import threading

from aiohttp import web

from .balancer import HTTP, TLS, Feed
from .dimse.server import DimseServer
from .server import DIMSE, prepare_process
from .settings import Settings

log = logging.getLogger(__name__)


def worker_main(settings: Settings, channel: socket.socket) -> None:
    """Entry point of one worker process; ``channel`` is its end of the supervisor's pair."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    asyncio.run(serve_handed(settings, Feed(channel)))


async def serve_handed(settings: Settings, feed: Feed) -> None:
    """Serve the connections handed over ``feed`` until SIGTERM/SIGINT or the supervisor goes."""
    from .tls import http_context

    app = prepare_process(settings, migrate=False, feed=feed)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()  # the lifecycle: orphan sweep, DIMSE (fed), background loops
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    assert runner.server is not None
    router = Router(feed, app[DIMSE], loop, runner.server, http_context(settings), stop)
    router.start()
    feed.ready()
    log.info("HTTP%s listening on %s:%d", "S" if settings.https else "", settings.host, settings.http_port)
    try:
        await stop.wait()
    finally:
        router.stop()
        await runner.cleanup()  # in-flight requests finish; then DIMSE stops (lifecycle)


class Router(threading.Thread):
    """Takes the connections handed over and starts serving each (see module doc)."""

    def __init__(self, feed: Feed, dimse: DimseServer, loop: asyncio.AbstractEventLoop,
                 http: web.Server, http_tls: ssl.SSLContext | None, stop: asyncio.Event) -> None:
        super().__init__(name="worker-router", daemon=True)
        self.feed, self.dimse, self.loop, self.http, self.http_tls = feed, dimse, loop, http, http_tls
        self._stop_worker = stop
        self._stopping = threading.Event()
        self._http_open: list[socket.socket] = []

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                handed = self.feed.receive()
            except (EOFError, OSError):
                if not self._stopping.is_set():
                    # Nobody hands us connections or restarts us now: stop as on SIGTERM.
                    log.warning("the supervisor is gone; this worker shuts down")
                    self.loop.call_soon_threadsafe(self._stop_worker.set)
                return
            self._report_closed_http()
            if handed is None:
                continue
            sock, kind = handed
            if kind == HTTP:
                self._http_open.append(sock)
                asyncio.run_coroutine_threadsafe(self._serve_http(sock), self.loop)
            else:
                self.dimse.admit(sock, kind == TLS)

    async def _serve_http(self, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.http, sock, ssl=self.http_tls)
        except (OSError, ssl.SSLError) as exc:  # gone before it was served, failed TLS handshake
            log.info("HTTP connection not served: %s", type(exc).__name__)
            sock.close()

    def _report_closed_http(self) -> None:
        """The transport closes its socket when the connection ends (fileno() is then -1)."""
        still_open = []
        for sock in self._http_open:
            if sock.fileno() == -1:
                self.feed.ended()
            else:
                still_open.append(sock)
        self._http_open = still_open
