"""Tools of the fault tests (tests/test_faults.py) and of their longer scripted versions
(bench/faults.py): a TCP proxy that takes a service down or slows it, a throw-away
PostgreSQL cluster, DIMSE and STOW-RS senders that record what was sent and acknowledged,
and small readers of what the archive holds. No pytest here: bench scripts import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from pacs.archive import Archive
from pacs.index.models import Instance

from .factory import make_ct, short_uid, to_bytes
from .servers import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


# -- tools ------------------------------------------------------------------------------
class FaultProxy:
    """A TCP proxy (in a thread of its own) in front of a service, which can be switched
    between ``up`` (forward), ``down`` (every connection, open or new, reset at once) and
    ``hang`` (connections accepted, requests read, never answered), and can delay every
    chunk it forwards by ``delay`` seconds."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "up"
        self.delay = 0.0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._open: set[asyncio.StreamWriter] = set()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    def start(self) -> "FaultProxy":
        self._thread.start()
        assert self._started.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str | None = None, delay: float | None = None) -> None:
        """Switch mode and/or delay; returns once the proxy's loop applied it."""
        done = threading.Event()

        def apply() -> None:
            if mode is not None:
                self.mode = mode
            if delay is not None:
                self.delay = delay
            if self.mode != "up":
                for writer in list(self._open):
                    writer.transport.abort()
            done.set()

        self._loop.call_soon_threadsafe(apply)
        assert done.wait(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.transport.abort()
            return
        if self.mode == "hang":
            self._open.add(writer)
            try:
                while await reader.read(65536):
                    pass
            except OSError:
                pass
            self._open.discard(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    if self.mode != "up":
                        break
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
        self._open.discard(writer)
        self._open.discard(up_writer)

    def stop(self) -> None:
        def close() -> None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(10)


def http_call(url: str, *, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
              timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request; error statuses are answers too."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


STOW_BOUNDARY = "fault-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'


def stow_body(objects: list[bytes]) -> bytes:
    return b"".join(f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                    for data in objects) + f"--{STOW_BOUNDARY}--\r\n".encode()


def stow(base_url: str, objects: list[bytes], timeout: float = 60) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, body = http_call(base_url + "/dicom-web/studies", method="POST", body=stow_body(objects),
                                      headers={"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
                                      timeout=timeout)
    return status, headers, json.loads(body) if body else {}


def failure_reasons(module: dict[str, Any]) -> dict[str, int]:
    """SOP Instance UID -> Failure Reason of a STOW-RS answer's Failed SOP Sequence."""
    return {item["00081155"]["Value"][0]: item["00081197"]["Value"][0]
            for item in module.get("00081198", {}).get("Value", [])}


def store_ae(timeout: float = 60) -> AE:
    """A Storage SCU; its associations are guarded (tests/pynetdicom_guard.py, conftest)."""
    ae = AE(ae_title="FAULTS")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def indexed(archive: Archive) -> dict[str, Any]:
    with archive.db.read() as conn:
        return {r.sop_instance_uid: r for r in conn.execute(select(Instance)).all()}


def stored_bytes(archive: Archive, key: str) -> bytes:
    with archive.store.open(key) as fp:
        return fp.read()


@dataclass
class Load:
    """What the senders sent and what the server acknowledged (success status / 200)."""

    sent: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> Part 10 bytes
    door: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> "dimse" or "stow"
    acked: set[str] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)  # answer -> how many
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    associations: list[Any] = field(default_factory=list)

    def count(self, answer: str) -> None:
        with self.lock:
            self.statuses[answer] = self.statuses.get(answer, 0) + 1


def dimse_sender(port: int, load: Load, index: int, reconnect: bool = False, timeout: float = 5) -> None:
    """C-STOREs new instances on one association until ``load.stop`` (or the server goes).
    An answer not received in ``timeout`` s counts as not acknowledged ("none"; pynetdicom
    may wait that long on a connection a killed server left)."""
    ae = store_ae(timeout)
    study, n = short_uid(), 0
    while not load.stop.is_set():
        assoc = ae.associate("127.0.0.1", port)
        if not assoc.is_established:
            load.count("association refused")
            if not reconnect:
                return
            load.stop.wait(0.05)  # the server is restarting: try again shortly
            continue
        load.associations.append(assoc)
        while not load.stop.is_set() and assoc.is_established:
            ds = make_ct(study=study, series=f"{study}.1", seed=index * 100000 + n, rows=64, columns=64)
            n += 1
            with load.lock:
                load.sent[ds.SOPInstanceUID], load.door[ds.SOPInstanceUID] = to_bytes(ds), "dimse"
            try:
                rsp = assoc.send_c_store(ds)
            except Exception:
                break
            status = rsp.get("Status") if rsp else None
            bare = status not in (None, 0x0000) and not rsp.get("ErrorComment")  # a failure must say why
            load.count("none" if status is None else f"0x{status:04X}" + (" without Error Comment" if bare else ""))
            if status == 0x0000:
                with load.lock:
                    load.acked.add(ds.SOPInstanceUID)
        if assoc.is_established:
            assoc.release()
        if not reconnect:
            return


def stow_sender(base_url: str, load: Load, index: int) -> None:
    """STOW-RS of one new instance per request until ``load.stop`` or the server goes."""
    study, n = short_uid(), 0
    while not load.stop.is_set():
        ds = make_ct(study=study, series=f"{study}.1", seed=index * 100000 + n, rows=64, columns=64)
        n += 1
        data = to_bytes(ds)
        with load.lock:
            load.sent[ds.SOPInstanceUID], load.door[ds.SOPInstanceUID] = data, "stow"
        try:
            status, _, _ = stow(base_url, [data], timeout=60)
        except OSError:
            return
        load.count(f"HTTP {status}")
        if status == 200:
            with load.lock:
                load.acked.add(ds.SOPInstanceUID)


class PrivatePostgres:
    """A throw-away PostgreSQL 15 cluster of our own (never the shared one), run as the
    ``postgres`` OS user on a free port with its socket in its own folder."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pacs-faults-pg-"))
        shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self.options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and (PG_BIN / "initdb").exists() and shutil.which("runuser") is not None

    def _ctl(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def init(self) -> "PrivatePostgres":
        self._ctl(str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        return self

    def start(self) -> None:
        self._ctl(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-o", self.options,
                  "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def http_poller(url: str, seen: dict[Any, int], stop: threading.Event, lock: threading.Lock) -> None:
    """GET ``url`` again and again; counts (status, has Retry-After) answers."""
    while not stop.is_set():
        try:
            status, headers, _ = http_call(url, timeout=30)
            key: Any = (status, "Retry-After" in headers)
        except OSError as exc:
            key = type(exc).__name__
        with lock:
            seen[key] = seen.get(key, 0) + 1
        stop.wait(0.02)  # polling interval of the client
