"""``pacs serve --workers N``: a light supervisor of N server processes.

The supervisor imports none of the DICOM, database or HTTP stacks (each worker costs
about 120 MB; the supervisor should not add another). It migrates the index once in a
child process, binds the ports (DIMSE, DICOM TLS, HTTP) and starts the workers
(:mod:`pacs.worker`). Connections are accepted here and handed to the worker holding
the fewest (:mod:`pacs.balancer`). It forwards SIGTERM/SIGINT and restarts a worker that
dies unexpectedly.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import threading
from dataclasses import replace
from multiprocessing.process import BaseProcess

from .balancer import HTTP, PLAIN, TLS, Balancer, bind_listener
from .settings import Settings

log = logging.getLogger(__name__)


def _migrate(settings: Settings) -> None:
    from .archive import Archive

    archive = Archive(settings)
    try:
        archive.restore_staged()  # before any worker ingests (pacs/staging.py)
    finally:
        archive.close()


def _worker(settings: Settings, channel: socket.socket, cpu: int | None) -> None:
    if cpu is not None:  # before any thread starts: the threads inherit it
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:  # e.g. the core left this process's cpuset meanwhile
            log.warning("worker not kept to core %d: %s", cpu, exc.strerror or exc)
    from .worker import worker_main

    worker_main(settings, channel)


class Supervisor:
    """Starts, watches and stops the worker processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[BaseProcess] = []
        self.stopping = threading.Event()
        self.balancer: Balancer | None = None

    def _start(self, target, *args, daemon: bool = False) -> BaseProcess:  # type: ignore[no-untyped-def]
        proc = self.context.Process(target=target, args=(self.settings, *args), daemon=daemon)
        proc.start()
        return proc

    def _bind(self) -> Balancer:
        """Listen on the DIMSE port, the DICOM TLS port when configured and the HTTP port;
        the settings the workers get name the ports bound (0 picks a free one)."""
        settings = self.settings
        listeners = {PLAIN: bind_listener(settings.host, settings.dimse_port),
                     HTTP: bind_listener(settings.host, settings.http_port)}
        tls_port = settings.dimse_tls_port
        if tls_port:
            listeners[TLS] = bind_listener(settings.host, tls_port)
            tls_port = listeners[TLS].getsockname()[1]
        self.settings = replace(settings, dimse_port=listeners[PLAIN].getsockname()[1],
                                http_port=listeners[HTTP].getsockname()[1], dimse_tls_port=tls_port)
        return Balancer(listeners, expected=settings.process_count)

    def _start_worker(self, slot: int) -> BaseProcess:
        assert self.balancer is not None
        channel = self.balancer.attach(slot)
        try:
            return self._start(_worker, channel, self.settings.worker_cpus()[slot])
        finally:
            channel.close()  # the worker holds its own copy now

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping.set()
        if self.balancer is not None:  # no new connections; open ones finish
            self.balancer.stop()
        for proc in self.workers:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)

    def run(self) -> int:
        migration = self._start(_migrate)
        migration.join()
        if migration.exitcode != 0:
            log.error("index migration failed; not starting workers")
            return 1
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.balancer = self._bind()
        self.workers = [self._start_worker(slot) for slot in range(self.settings.process_count)]
        self.balancer.start()
        log.info("started %d worker processes", len(self.workers))
        while not self.stopping.is_set():
            multiprocessing.connection.wait([p.sentinel for p in self.workers], timeout=1.0)
            for i, proc in enumerate(self.workers):
                if not proc.is_alive() and not self.stopping.is_set():
                    log.warning("worker %s exited with %s; restarting", proc.pid, proc.exitcode)
                    self.workers[i] = self._start_worker(i)
        self.balancer.stop()
        for proc in self.workers:
            proc.join(self.settings.shutdown_timeout + 10)
        return 0


def supervise(settings: Settings) -> int:
    """Run the workers until SIGTERM/SIGINT; metrics are summed over them."""
    metrics_dir = settings.data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    return Supervisor(settings).run()
