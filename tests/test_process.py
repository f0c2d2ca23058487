"""`pacs serve` as a real process: kill -9 during ingest, graceful SIGTERM."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import func, select

from pacs.archive import Archive
from pacs.index.models import Instance, PendingWrite
from pacs.settings import load_settings

from .factory import make_ct, short_uid
from .servers import ProcessServer

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    return {"PACS_DATA_DIR": str(tmp_path / "data"), "PACS_DATABASE_URL": database_url,
            "PACS_SHUTDOWN_TIMEOUT": "20", **extra}


class Sender(threading.Thread):
    """One association storing instances until the server goes away."""

    def __init__(self, port: int, acked: list[str], stop: threading.Event, index: int) -> None:
        super().__init__(daemon=True)
        self.port, self.acked, self.stop, self.index = port, acked, stop, index

    def run(self) -> None:
        ae = AE(ae_title=f"MOD{self.index}")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        # Generous: on this shared VM an fsync can stall for seconds under the suite's disk
        # load, and an answer the client gave up on would count as stored but not acked.
        ae.dimse_timeout = ae.network_timeout = 60
        assoc = ae.associate("127.0.0.1", self.port)
        if not assoc.is_established:
            return
        study, i = short_uid(), 0
        while not self.stop.is_set() and assoc.is_established:
            ds = make_ct(study=study, series=f"{study}.1", seed=self.index * 10000 + i, rows=128, columns=128)
            i += 1
            try:
                rsp = assoc.send_c_store(ds)
            except Exception:
                return
            if rsp is not None and rsp.get("Status") == 0x0000:
                self.acked.append(ds.SOPInstanceUID)
        if assoc.is_established:
            assoc.abort()


def _until(condition, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` until true or ``timeout`` s passed (the caller's asserts decide)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        threading.Event().wait(0.05)


def _listening(server: ProcessServer) -> int:
    """How many server processes logged that they serve DIMSE."""
    return server.log_path.read_text().count("DIMSE PACS listening")


def _objects(data_dir: Path) -> set[str]:
    root = data_dir / "objects"
    return {str(p.relative_to(root)) for p in root.rglob("*.dcm") if ".tmp" not in p.parts}


def test_kill_9_during_ingest_loses_nothing(tmp_path: Path, database_url: str) -> None:
    server = ProcessServer(_env(tmp_path, database_url), tmp_path).start()
    acked: list[str] = []
    stop = threading.Event()
    senders = [Sender(server.dimse_port, acked, stop, i) for i in range(4)]
    for s in senders:
        s.start()
    enough = threading.Event()

    def watch() -> None:
        while len(acked) < 80 and any(s.is_alive() for s in senders):
            stop.wait(0.01)
        enough.set()

    threading.Thread(target=watch, daemon=True).start()
    assert enough.wait(120)
    server.kill()  # SIGKILL in the middle of four busy associations
    stop.set()
    for s in senders:
        s.join(30)
    assert len(acked) >= 80

    # Restart: orphans of the killed process are swept at start (grace 0 here).
    restarted = ProcessServer(_env(tmp_path, database_url, PACS_ORPHAN_GRACE_SECONDS="0"), tmp_path).start()
    restarted.terminate()

    settings = load_settings(env={}, data_dir=tmp_path / "data", database_url=database_url)
    archive = Archive(settings, migrate=False)
    with archive.db.read() as conn:
        rows = {r.sop_instance_uid: r for r in conn.execute(select(Instance)).all()}
        pending = conn.execute(select(func.count(PendingWrite.id))).scalar()
    missing = [sop for sop in acked if sop not in rows]
    assert not missing, f"{len(missing)} acknowledged instances lost"
    for row in rows.values():  # no index row without its object, and the object is whole
        with archive.store.open(row.blob_key) as fp:
            assert hashlib.sha256(fp.read()).hexdigest() == row.sha256
    assert pending == 0
    assert _objects(tmp_path / "data") == {r.blob_key for r in rows.values()}
    archive.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_lets_open_association_finish(tmp_path: Path, database_url: str, workers: str) -> None:
    server = ProcessServer(_env(tmp_path, database_url, PACS_WORKERS=workers), tmp_path).start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dimse_port)
    assert assoc.is_established
    assert server.proc is not None
    server.proc.send_signal(__import__("signal").SIGTERM)
    # The association opened before SIGTERM keeps working until released.
    sops = []
    for i in range(3):
        ds = make_ct(seed=i)
        assert assoc.send_c_store(ds).Status == 0x0000
        sops.append(ds.SOPInstanceUID)
    assoc.release()
    assert server.proc.wait(60) == 0
    settings = load_settings(env={}, data_dir=tmp_path / "data", database_url=database_url)
    archive = Archive(settings, migrate=False)
    with archive.db.read() as conn:
        stored = set(conn.execute(select(Instance.sop_instance_uid)).scalars())
    assert set(sops) <= stored
    archive.close()


def test_two_workers_share_the_ports(tmp_path: Path, database_url: str) -> None:
    import urllib.request

    server = ProcessServer(_env(tmp_path, database_url, PACS_WORKERS="2"), tmp_path).start()
    # /healthz answers once the first worker is up: wait for both to listen on DIMSE.
    _until(lambda: _listening(server) >= 2)
    acked: list[str] = []
    stop = threading.Event()
    senders = [Sender(server.dimse_port, acked, stop, i) for i in range(4)]
    for s in senders:
        s.start()
    while len(acked) < 40 and any(s.is_alive() for s in senders):
        stop.wait(0.01)
    stop.set()
    for s in senders:
        s.join(90)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    stored = sum(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith('pacs_instances_stored_total{source="dimse"}'))
    assert stored == len(acked)  # the sum over both workers
    assert server.terminate() == 0
    settings = load_settings(env={}, data_dir=tmp_path / "data", database_url=database_url)
    archive = Archive(settings, migrate=False)
    with archive.db.read() as conn:
        rows = set(conn.execute(select(Instance.sop_instance_uid)).scalars())
    assert set(acked) <= rows and len(rows) == len(acked)
    log = server.log_path.read_text()
    assert log.count("DIMSE PACS listening") == 2
    archive.close()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_shut_down_when_the_supervisor_is_killed(tmp_path: Path, database_url: str) -> None:
    server = ProcessServer(_env(tmp_path, database_url, PACS_WORKERS="2"), tmp_path).start()
    assert server.proc is not None
    _until(lambda: _listening(server) >= 2)
    workers = _children(server.proc.pid)
    assert len(workers) >= 2
    server.proc.kill()
    server.proc.wait(10)
    _until(lambda: not any(_alive(pid) for pid in workers))
    assert not any(_alive(pid) for pid in workers)
    assert "the supervisor is gone; this worker shuts down" in server.log_path.read_text()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_each_worker_keeps_to_its_own_core(tmp_path: Path, database_url: str) -> None:
    """PACS_PIN_WORKERS (default on): worker N and every thread it starts stay on the Nth
    core; with it off, placement is the kernel's."""
    cores = sorted(os.sched_getaffinity(0))
    for pin, expected in (("true", [{cores[0]}, {cores[1]}]), ("false", [set(cores), set(cores)])):
        (tmp_path / pin).mkdir()
        server = ProcessServer(_env(tmp_path / pin, database_url, PACS_WORKERS="2", PACS_PIN_WORKERS=pin),
                               tmp_path / pin).start()
        assert server.proc is not None
        _until(lambda: _listening(server) >= 2)
        workers = [pid for pid in _children(server.proc.pid)  # not multiprocessing's resource tracker
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        placed = []
        for pid in workers:
            threads = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
            assert len(threads) > 1
            affinities = {frozenset(os.sched_getaffinity(t)) for t in threads}
            assert len(affinities) == 1, affinities  # every thread of a worker alike
            placed.append(set(affinities.pop()))
        assert sorted(placed, key=sorted) == expected
        assert server.terminate() == 0


def test_a_killed_worker_is_replaced_and_connections_go_on(tmp_path: Path, database_url: str) -> None:
    import os
    import signal

    server = ProcessServer(_env(tmp_path, database_url, PACS_WORKERS="2"), tmp_path).start()
    assert server.proc is not None
    _until(lambda: _listening(server) >= 2)
    victim = next(pid for pid in _children(server.proc.pid)
                  if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(victim, signal.SIGKILL)
    _until(lambda: _listening(server) >= 3)
    assert "restarting" in server.log_path.read_text()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 30
    assocs = [ae.associate("127.0.0.1", server.dimse_port) for _ in range(4)]
    try:
        assert all(a.is_established for a in assocs)
        assert [a.send_c_echo().Status for a in assocs] == [0, 0, 0, 0]
    finally:
        for a in assocs:
            if a.is_established:
                a.release()
    assert server.terminate() == 0
