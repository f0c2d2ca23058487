"""Run the real server for tests: in a thread (same process) or as a `pacs serve` subprocess.

Readiness is polled (the start coroutine finishing, or /healthz answering), never slept on.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from aiohttp import web

from pacs.archive import Archive
from pacs.server import DIMSE, build_application
from pacs.settings import Settings


class ThreadedServer:
    """The full application (HTTP + DIMSE) on ephemeral ports, in a background thread."""

    def __init__(self, settings: Settings, archive: Archive | None = None) -> None:
        self.settings = settings
        self.archive = archive
        self.http_port = 0
        self.dimse_port = 0
        #: The DICOM TLS port (ephemeral) when the settings turn one on (``dimse_tls_port``).
        self.dimse_tls_port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # surface start-up failures to the test
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        archive = self.archive or Archive(self.settings)
        self.archive = archive
        app = build_application(archive, dimse_port=0, dimse_tls_port=0 if self.settings.dimse_tls_port else None)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.settings.shutdown_timeout)
        await self._runner.setup()
        from pacs.tls import http_context  # HTTPS when the settings ask for it

        site = web.TCPSite(self._runner, self.settings.host, self.settings.http_port,  # 0: any free port
                           ssl_context=http_context(self.settings))
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.dimse_port = app[DIMSE].port
        self.dimse_tls_port = app[DIMSE].tls_port

    def start(self) -> "ThreadedServer":
        self._thread.start()
        self._ready.wait(60)
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(60)
            except TimeoutError:  # say where every thread and task is, for the failure report
                faulthandler.dump_traceback(all_threads=True)
                for task in asyncio.all_tasks(self._loop):
                    task.print_stack(file=sys.stderr)
                raise
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    @property
    def base_url(self) -> str:
        return f"{'https' if self.settings.https else 'http'}://{self.settings.host}:{self.http_port}"


def echo(port: int, ae_title: str = "PACS", calling_ae: str = "PROBE") -> bool:
    """One C-ECHO to 127.0.0.1:``port``; True when it succeeds (readiness probe)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().get("Status") == 0
    assoc.release()
    return ok


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "condition",
               every: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; that value, or AssertionError
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)  # polling interval
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessServer:
    """``pacs serve`` in a subprocess (for crash and signal tests)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.http_port = free_port()
        self.dimse_port = free_port()
        repo = str(Path(__file__).resolve().parent.parent)
        pythonpath = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
        # One process unless the test asks for workers: the suite's timings stay those of
        # a single process whatever the machine's cores.
        self.env = {**os.environ, "PACS_WORKERS": "1", **env, "PYTHONPATH": pythonpath, "PACS_HTTP_PORT": str(self.http_port),
                    "PACS_DIMSE_PORT": str(self.dimse_port), "PACS_HOST": "127.0.0.1"}
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.log_path = cwd / f"server-{self.http_port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> "ProcessServer":
        return self.launch().wait_ready(timeout)

    def launch(self) -> "ProcessServer":
        """Start the process without waiting (several servers can then start together)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pacs.cli", "serve"], env=self.env, cwd=self.cwd,
                stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 60) -> "ProcessServer":
        """Poll until /healthz answers 200 and a C-ECHO succeeds."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as r:
                    if r.status == 200 and self._dimse_ready():
                        return self
            except OSError:
                pass
            time.sleep(0.05)  # polling interval while waiting for readiness
        raise TimeoutError(f"server did not become ready: {self.log_path.read_text()[-2000:]}")

    def _dimse_ready(self) -> bool:
        """A C-ECHO succeeds (a bare TCP probe would leave an acceptor waiting)."""
        return echo(self.dimse_port)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL (by its PID) if it lingers; nothing if it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
