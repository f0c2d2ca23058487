"""C-FIND latency on an index of N studies, over one kept association (see bench/README.md).

Fills a fresh archive with N studies (one small instance each, realistic attribute
spread), starts `pacs serve` as a separate process on free ports, and times C-FIND queries sent
by a pynetdicom SCU over one association: PatientID, PatientName prefix wildcard, a
31-day StudyDate range, AccessionNumber, ModalitiesInStudy. Reports p50/p95/max in ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import socket
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filebase import DicomBytesIO  # noqa: E402
from pydicom.filewriter import write_dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # noqa: E402

from pacs.dimse import command  # noqa: E402
from pacs.dimse.command import Command, encode_command  # noqa: E402
from pacs.dimse.scu import StoreAssociation  # noqa: E402
from pacs.settings import load_settings  # noqa: E402
from tests.factory import make_ct, to_bytes  # noqa: E402
from pacs.archive import Archive  # noqa: E402
from tests.servers import ProcessServer  # noqa: E402

SURNAMES = ["SMITH", "JONES", "MÜLLER", "GARCIA", "NGUYEN", "KOWALSKI", "ROSSI", "TANAKA", "OKAFOR", "DUBOIS"]
MODALITIES = ["CT", "MR", "CR", "US", "PT", "DX"]


def fill(archive: Archive, studies: int, seed: int) -> None:
    rng = random.Random(seed)
    start = date(2024, 1, 1)
    for i in range(studies):
        ds = make_ct(patient_id=f"PID{i % (studies // 2 or 1):06d}", patient_name=f"{rng.choice(SURNAMES)}^P{i}",
                     study=f"1.2.826.0.1.3680043.10.1234.{seed}.{i + 1}", rows=8, columns=8, seed=i)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.StudyDate = (start + timedelta(days=rng.randrange(730))).strftime("%Y%m%d")
        ds.AccessionNumber = f"ACC{i:07d}"
        ds.Modality = rng.choice(MODALITIES)
        archive.ingest_bytes(to_bytes(ds), source="bench")


def queries(rng: random.Random, studies: int) -> dict[str, list[dict[str, str]]]:
    def date_range() -> str:
        first = date(2024, 1, 1) + timedelta(days=rng.randrange(700))
        return f"{first:%Y%m%d}-{first + timedelta(days=30):%Y%m%d}"

    n = 100
    return {
        "PatientID": [{"PatientID": f"PID{rng.randrange(studies // 2 or 1):06d}"} for _ in range(n)],
        "PatientName prefix": [{"PatientName": rng.choice(SURNAMES)[:3] + "*"} for _ in range(n)],
        "StudyDate 31 days": [{"StudyDate": date_range()} for _ in range(n)],
        "AccessionNumber": [{"AccessionNumber": f"ACC{rng.randrange(studies):07d}"} for _ in range(n)],
        "ModalitiesInStudy": [{"ModalitiesInStudy": rng.choice(MODALITIES)} for _ in range(n)],
    }


class LeanFindClient(StoreAssociation):
    """A C-FIND SCU that only counts the responses (no decoding): the server's own
    response time, without pynetdicom's per-response cost on the client side."""

    def find(self, identifier: Dataset) -> Iterator[tuple[Any, None]]:
        buffer = DicomBytesIO()
        buffer.is_implicit_VR, buffer.is_little_endian = False, True
        write_dataset(buffer, identifier)
        context = self.accepted[0]
        request = encode_command({command.AFFECTED_SOP_CLASS: str(FIND), command.COMMAND_FIELD: command.C_FIND_RQ,
                                  command.MESSAGE_ID: 1, command.PRIORITY: 0, command.DATASET_TYPE: 0})
        self._send_pdvs(context.context_id, request, 0x03)
        self._send_pdvs(context.context_id, buffer.getvalue(), 0x02)
        for status in self._statuses():
            yield SimpleNamespace(Status=status), None
            if status not in (0xFF00, 0xFF01):
                return

    def _statuses(self) -> Iterator[int]:
        """Status of each response, parsing PDUs out of large reads (few syscalls)."""
        assert self._sock is not None
        data, pos, pending = bytearray(), 0, bytearray()
        while True:
            while len(data) - pos < 6 or len(data) - pos < 6 + int.from_bytes(data[pos + 2:pos + 6], "big"):
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("server closed the association")
                data = data[pos:] + chunk
                pos = 0
            end = pos + 6 + int.from_bytes(data[pos + 2:pos + 6], "big")
            item = pos + 6
            while item + 6 <= end:
                length, flags = int.from_bytes(data[item:item + 4], "big"), data[item + 5]
                if flags & 1:
                    pending += data[item + 6:item + 4 + length]
                    if flags & 2:
                        yield Command.decode(pending).us(command.STATUS) or 0
                        pending = bytearray()
                item += 4 + length
            pos = end

    def send_c_find(self, identifier: Dataset, model: Any) -> Iterator[tuple[Any, None]]:
        return self.find(identifier)


def connect(port: int, client: str, nodelay: bool) -> Any:
    if client == "lean":
        assoc = LeanFindClient("BENCH", "PACS", [(str(FIND), [ExplicitVRLittleEndian])], max_pdu=1 << 20,
                               connect_timeout=10, dimse_timeout=60, implementation_uid="1.2.3.4")
        assoc.connect("127.0.0.1", port)
        return assoc
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    # Like a modality with TCP_NODELAY=1: without it, Nagle + delayed ACK add ~40 ms per request.
    if nodelay:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def quiet_collector() -> None:
    """Freeze what the measuring process holds so far, as ``pacs serve`` freezes its own:
    otherwise the client's cyclic collector, passing over this process's modules, filled
    index and cases, stalls it for 60-100 ms every few hundred answers parsed, and that
    stall is timed as the server's latency. Call once the cases are made."""
    gc.collect()
    gc.freeze()


def time_queries(port: int, cases: dict[str, list[dict[str, str]]], nodelay: bool = True,
                 client: str = "pynetdicom") -> dict[str, dict[str, float]]:
    assoc = connect(port, client, nodelay)
    quiet_collector()
    results = {}
    for name, keysets in cases.items():
        timings, matches = [], []
        for keys in keysets:
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            for key in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
                        "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
                setattr(identifier, key, "")
            for key, value in keys.items():
                setattr(identifier, key, value)
            started = time.perf_counter()
            count = sum(1 for status, _ in assoc.send_c_find(identifier, FIND) if status.Status == 0xFF00)
            timings.append((time.perf_counter() - started) * 1000)
            matches.append(count)
        timings.sort()
        results[name] = {
            "p50_ms": round(statistics.median(timings), 2),
            "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2),
            "max_ms": round(timings[-1], 2),
            "mean_matches": round(statistics.mean(matches), 1),
        }
    assoc.release()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp folder")
    parser.add_argument("--no-nodelay", action="store_true", help="client without TCP_NODELAY (Nagle on)")
    parser.add_argument("--client", choices=("pynetdicom", "lean", "both"), default="both",
                        help="pynetdicom SCU (decodes every response), a lean SCU that only counts them, or both")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "query.jsonl"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(env={}, data_dir=Path(tmp) / "data", database_url=args.database_url)
        archive = Archive(settings)
        started = time.perf_counter()
        fill(archive, args.studies, args.seed)
        archive.close()
        print(f"filled {args.studies} studies in {time.perf_counter() - started:.1f} s")
        env = {"PACS_RATE_LIMIT_PER_SECOND": "0", "PACS_DATA_DIR": str(Path(tmp) / "data"), "PACS_DATABASE_URL": args.database_url}
        server = ProcessServer(env, Path(tmp)).start()  # the server in its own process, as deployed
        try:
            clients = ["pynetdicom", "lean"] if args.client == "both" else [args.client]
            runs = {client: time_queries(server.dimse_port, queries(random.Random(args.seed), args.studies),
                                         not args.no_nodelay, client) for client in clients}
        finally:
            server.terminate()
    for client, results in runs.items():
        print(f"client: {client}")
        print(f"{'query':22s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'matches':>8s}")
        for name, r in results.items():
            print(f"{name:22s} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['max_ms']:8.2f} {r['mean_matches']:8.1f}")
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as out:
            out.write(json.dumps({"studies": args.studies, "client": client,
                                  "database": "postgresql" if args.database_url else "sqlite",
                                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "results": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
