"""``pacs serve --workers N``: a light supervisor of N server processes.

The supervisor imports none of the DICOM, database or HTTP stacks (each worker costs
about 120 MB; the supervisor should not add another). It migrates the index once in a
child process, then starts the workers, which share the DIMSE and HTTP ports through
SO_REUSEPORT (the kernel spreads connections over them); it forwards SIGTERM/SIGINT and
restarts a worker that dies unexpectedly.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import threading
from multiprocessing.process import BaseProcess

from .settings import Settings

log = logging.getLogger(__name__)


def _migrate(settings: Settings) -> None:
    from .archive import Archive

    Archive(settings).close()


def _worker(settings: Settings) -> None:
    from .server import worker_main

    worker_main(settings)


class Supervisor:
    """Starts, watches and stops the worker processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[BaseProcess] = []
        self.stopping = threading.Event()

    def _start(self, target, *, daemon: bool = False) -> BaseProcess:  # type: ignore[no-untyped-def]
        proc = self.context.Process(target=target, args=(self.settings,), daemon=daemon)
        proc.start()
        return proc

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping.set()
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
        self.workers = [self._start(_worker) for _ in range(self.settings.workers)]
        log.info("started %d worker processes", len(self.workers))
        while not self.stopping.is_set():
            multiprocessing.connection.wait([p.sentinel for p in self.workers], timeout=1.0)
            for i, proc in enumerate(self.workers):
                if not proc.is_alive() and not self.stopping.is_set():
                    log.warning("worker %s exited with %s; restarting", proc.pid, proc.exitcode)
                    self.workers[i] = self._start(_worker)
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
