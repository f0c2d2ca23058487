"""Storing side of ``bench/load.py``: N threads, each keeping one DIMSE association open and
sending C-STOREs of new tiny instances (fresh UIDs each) until a deadline.

The instances are one ~10 kB template (``sample_data.generator.generate_tiny_series``)
encoded once in Explicit VR Little Endian; each C-STORE patches its Study, Series and SOP
Instance UIDs and Patient ID in the encoded bytes (placeholders of the same length, so no
element length changes), which costs microseconds: the client's CPU stays small beside the
server's on a 2-core machine. The association is the project's lean Storage SCU
(``pacs.dimse.scu.StoreAssociation``); pynetdicom would cost ~1 ms of client CPU per store.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian

from pacs.dimse.scu import AcceptedContext, StoreAssociation

UID_ROOT = "1.2.826.0.1.3680043.10.7777."
CALLING_AE = "LOADBENCH"
DIMSE_TIMEOUT = 120.0  # seconds: a bound on one C-STORE round trip, not an expectation
MAX_ERRORS_KEPT = 50


@dataclass(frozen=True)
class Template:
    """One encoded instance and the placeholders to replace in it."""

    sop_class: str
    body: bytes
    run: int

    def uid(self, kind: int, client: int, number: int) -> str:
        """A fixed-length UID: kind 1 study, 2 series, 3 instance (no zero-led components)."""
        return f"{UID_ROOT}{self.run}.{kind}.{client + 10}.{number + 10**9}"

    def patient(self, client: int, study: int) -> str:
        """A fixed-length Patient ID (12 characters): one patient per study."""
        return f"LD{client + 10}{study + 10**7}"

    def instance(self, client: int, study: int, series: int, number: int) -> tuple[str, bytes]:
        """(SOP Instance UID, encoded dataset) of a new instance."""
        sop = self.uid(3, client, number)
        body = (self.body.replace(self.uid(1, 89, 0).encode(), self.uid(1, client, study).encode())
                .replace(self.uid(2, 89, 0).encode(), self.uid(2, client, study * 10 + series).encode())
                .replace(self.uid(3, 89, 0).encode(), sop.encode())
                .replace(self.patient(89, 0).encode(), self.patient(client, study).encode()))
        return sop, body


def make_template(run: int | None = None) -> Template:
    """Encode one tiny CT-like instance with placeholder UIDs (client 89, number 0)."""
    from sample_data.generator import generate_tiny_series

    run = run if run is not None else random.randrange(10**8, 10**9)
    ds = next(iter(generate_tiny_series(1, seed=7)))
    probe = Template(str(ds.SOPClassUID), b"", run)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = probe.uid(1, 89, 0), probe.uid(2, 89, 0)
    ds.SOPInstanceUID, ds.PatientID = probe.uid(3, 89, 0), probe.patient(89, 0)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = False, True
    write_dataset(buffer, ds)
    body = buffer.getvalue()
    for placeholder in (probe.uid(1, 89, 0), probe.uid(2, 89, 0), probe.uid(3, 89, 0), probe.patient(89, 0)):
        if body.count(placeholder.encode()) != 1:
            raise RuntimeError(f"placeholder {placeholder} found {body.count(placeholder.encode())} times")
    return Template(probe.sop_class, body, run)


@dataclass
class StoreResult:
    """What one storing thread did: latencies (seconds since start, ms), acks, errors."""

    client: int
    times: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    acked: int = 0
    studies: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    reconnects: int = 0

    def error(self, text: str) -> None:
        """Count an error and keep the first few descriptions."""
        self.errors += 1
        if len(self.error_samples) < MAX_ERRORS_KEPT:
            self.error_samples.append(f"{time.strftime('%H:%M:%S')} client {self.client}: {text}")


def _connect(port: int, template: Template) -> tuple[StoreAssociation, AcceptedContext]:
    """A new association with one presentation context (the template's class, Explicit LE)."""
    assoc = StoreAssociation(CALLING_AE, "PACS", [(template.sop_class, [ExplicitVRLittleEndian])],
                             max_pdu=1 << 20, connect_timeout=30, dimse_timeout=DIMSE_TIMEOUT,
                             implementation_uid="1.2.826.0.1.3680043.10.7777.1")
    assoc.connect("127.0.0.1", port)
    if not assoc.accepted or assoc.accepted[0].transfer_syntax != ExplicitVRLittleEndian:
        assoc.abort()
        raise RuntimeError(f"presentation context not accepted: {assoc.accepted}")
    return assoc, assoc.accepted[0]


def _store_one(assoc: StoreAssociation, context: AcceptedContext, sop: str, body: bytes, msg_id: int,
               result: StoreResult, t0: float) -> bool:
    """One timed C-STORE; records latency or the error. False when the association broke."""
    started = time.monotonic()
    try:
        status, comment = assoc.store(context, sop, [body], msg_id=msg_id)
    except Exception as exc:  # the association is aborted by store(); reconnect
        result.error(f"C-STORE {sop}: {type(exc).__name__}: {exc}")
        return False
    elapsed = time.monotonic() - started
    result.times.append(started - t0)
    result.latencies_ms.append(elapsed * 1000)
    if status != 0x0000:
        result.error(f"C-STORE {sop}: status 0x{status:04X} {comment}")
    else:
        result.acked += 1
    return True


def store_loop(port: int, template: Template, client: int, deadline: float, per_study: int,
               per_series: int, result: StoreResult, on_study: Any = None, max_studies: int = 0) -> None:
    """Store new instances over one association until ``deadline`` (monotonic) or
    ``max_studies`` studies; reconnect after a broken association (counted as an error)."""
    t0, number, study, msg_id = time.monotonic(), 0, 0, 0
    assoc: StoreAssociation | None = None
    while time.monotonic() < deadline and not (max_studies and study >= max_studies):
        try:
            if assoc is None:
                assoc, context = _connect(port, template)
            for i in range(per_study):
                sop, body = template.instance(client, study, i // per_series, number)
                number, msg_id = number + 1, (msg_id + 1) % 65536
                if not _store_one(assoc, context, sop, body, msg_id, result, t0):
                    assoc, result.reconnects = None, result.reconnects + 1
                    break
                if i == 0 and on_study is not None:
                    on_study()
                if time.monotonic() >= deadline:
                    break
            study += 1
            result.studies = study
        except Exception as exc:  # connect failures: count, wait a little, retry
            result.error(f"association: {type(exc).__name__}: {exc}")
            assoc = None
            time.sleep(0.5)
    if assoc is not None:
        assoc.release()


def run_storers(port: int, template: Template, clients: range, seconds: float, per_study: int,
                per_series: int, on_study: Any = None, max_studies: int = 0) -> list[StoreResult]:
    """Run one storing thread per client index (all at once) and return their results."""
    deadline = time.monotonic() + seconds
    results = [StoreResult(c) for c in clients]
    threads = [threading.Thread(target=store_loop, name=f"store-{r.client}",
                                args=(port, template, r.client, deadline, per_study, per_series, r,
                                      on_study, max_studies)) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def storer_process(port: int, run: int, clients: int, per_study: int, per_series: int, seconds: float,
                   barrier: Any, studies_counter: Any, out: Any) -> None:
    """Entry point of the storing process: wait at ``barrier``, store for ``seconds``, put
    the list of :class:`StoreResult` (as dicts) and the process CPU time on ``out``."""
    import os

    try:
        template = make_template(run)
        barrier.wait(120)

        def counted() -> None:
            with studies_counter.get_lock():
                studies_counter.value += 1

        results = run_storers(port, template, range(clients), seconds, per_study, per_series, counted)
        times = os.times()
        out.put(("store", [r.__dict__ for r in results], times.user + times.system))
    except BaseException:
        out.put(("store-failed", traceback.format_exc(), 0.0))
        raise
