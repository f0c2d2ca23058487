"""DICOMweb latency and throughput against `pacs serve` (see bench/README.md).

Fills a fresh archive with N one-instance studies (the C-FIND benchmark's spread of
names, dates, modalities) plus one CT series of M 512x512 slices, starts `pacs serve` as a
separate process on free ports, and times, over one kept-alive HTTP/1.1 connection
(``http.client``, so the client adds little of its own):

* QIDO-RS ``/studies`` searches (the OHIF study list's first page, PatientID,
  PatientName prefix, a 31-day StudyDate range, AccessionNumber): p50 / p95 / max;
* ``/studies/{s}/series/{se}/metadata`` of the CT series and ``.../instances`` (QIDO of
  the series' instances): p50 / p95;
* ``/studies/{s}/series/{se}/instances/{i}/frames/1`` (when the server has the route);
* series retrieve (``transfer-syntax=*``, as stored) from a warm page cache, read by
  ``curl``: MB/s of the whole multipart body.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.query import MODALITIES, SURNAMES, fill, quiet_collector  # noqa: E402
from pacs.archive import Archive  # noqa: E402
from pacs.settings import load_settings  # noqa: E402
from sample_data import generate_ct_series  # noqa: E402
from tests.factory import to_bytes  # noqa: E402
from tests.servers import ProcessServer  # noqa: E402

STUDY_LIST = "/dicom-web/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
DICOM_JSON = "application/dicom+json"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def fill_series(archive: Archive, count: int, seed: int) -> tuple[str, str, list[str]]:
    """One CT series of ``count`` slices; returns its study, series and SOP UIDs."""
    sops: list[str] = []
    study = series = ""
    for ds in generate_ct_series(count, seed=seed):
        archive.ingest_bytes(to_bytes(ds), source="bench")
        study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
        sops.append(ds.SOPInstanceUID)
    return study, series, sops


class Client:
    """One kept-alive connection; every answer is read whole and its status checked."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path: str, accept: str) -> tuple[int, int]:
        self.conn.request("GET", path, headers={"Accept": accept})
        resp = self.conn.getresponse()
        size = 0
        while chunk := resp.read(1 << 20):
            size += len(chunk)
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status}")
        return resp.status, size


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    fn()  # warm-up: first-use costs (imports, statement caches) are not what is measured
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(len(times) * 0.95) - 1],
            "max_ms": times[-1], "n": len(times)}


def qido_cases(rng: random.Random, studies: int, n: int) -> dict[str, list[str]]:
    def date_range() -> str:
        start = 20240101 + rng.randrange(11) * 100 + rng.randrange(1, 28)
        return f"{start}-{start + 100}"  # about a month: same day of the next month

    return {
        "study list (OHIF)": [STUDY_LIST] * n,
        "PatientID": [f"/dicom-web/studies?PatientID=PID{rng.randrange(studies // 2 or 1):06d}" for _ in range(n)],
        "PatientName prefix": ["/dicom-web/studies?PatientName=" + quote(rng.choice(SURNAMES)[:3] + "*") for _ in range(n)],
        "StudyDate ~1 month": [f"/dicom-web/studies?StudyDate={date_range()}" for _ in range(n)],
        "AccessionNumber": [f"/dicom-web/studies?AccessionNumber=ACC{rng.randrange(studies):07d}" for _ in range(n)],
        "ModalitiesInStudy": [f"/dicom-web/studies?ModalitiesInStudy={rng.choice(MODALITIES)}" for _ in range(n)],
    }


def time_cases(client: Client, cases: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    results = {}
    for name, paths in cases.items():
        it = iter(paths * 2)
        results[name] = timed(lambda: client.get(next(it), DICOM_JSON), len(paths))
    return results


def has_frames(client: Client, path: str) -> bool:
    client.conn.request("GET", path, headers={"Accept": FRAMES})
    resp = client.conn.getresponse()
    resp.read()
    return resp.status == 200


def retrieve_rate(port: int, path: str, repeat: int) -> dict[str, Any]:
    """Series retrieve as stored, read by curl (a C client, so the figure is the server's,
    not Python's reading speed): the first run warms the page cache; MB/s over the rest."""
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}\n",
               "-H", f"Accept: {AS_STORED}", f"http://127.0.0.1:{port}{path}"]
    subprocess.run(command, check=True, capture_output=True)
    sizes, seconds = [], 0.0
    for _ in range(repeat):
        status, size, took = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
        if status != "200":
            raise RuntimeError(f"GET {path}: {status}")
        sizes.append(int(size))
        seconds += float(took)
    return {"MB_per_s": sum(sizes) / seconds / 1e6, "bytes": sizes[-1], "n": repeat, "client": "curl"}


def measure(port: int, args: argparse.Namespace, study: str, series: str, sops: list[str]) -> dict[str, Any]:
    client = Client(port)
    qido = qido_cases(random.Random(args.seed), args.studies, args.repeat)
    quiet_collector()
    results: dict[str, Any] = {"qido": time_cases(client, qido)}
    series_path = f"/dicom-web/studies/{study}/series/{series}"
    results["series metadata"] = timed(lambda: client.get(series_path + "/metadata", DICOM_JSON), args.repeat)
    results["series instances (QIDO)"] = timed(lambda: client.get(series_path + "/instances", DICOM_JSON),
                                               args.repeat)
    frame = f"{series_path}/instances/{sops[len(sops) // 2]}/frames/1"
    if has_frames(client, frame):
        paths = iter([f"{series_path}/instances/{sop}/frames/1" for sop in sops] * (args.repeat // len(sops) + 2))
        results["frames/1"] = timed(lambda: client.get(next(paths), FRAMES), args.repeat)
    results["series retrieve"] = retrieve_rate(port, series_path, args.retrieves)
    return results


def report(results: dict[str, Any]) -> None:
    print(f"{'request':28s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}")
    rows = {**{f"QIDO {k}": v for k, v in results["qido"].items()},
            **{k: v for k, v in results.items() if k not in ("qido", "series retrieve")}}
    for name, r in rows.items():
        print(f"{name:28s} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['max_ms']:8.2f}")
    r = results["series retrieve"]
    print(f"series retrieve (warm, as stored): {r['MB_per_s']:.0f} MB/s ({r['bytes'] / 1e6:.1f} MB x {r['n']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--series-instances", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=200, help="requests per latency case")
    parser.add_argument("--retrieves", type=int, default=5, help="timed series retrieves")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp folder")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "dicomweb.jsonl"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(env={}, data_dir=Path(tmp) / "data", database_url=args.database_url)
        archive = Archive(settings)
        started = time.perf_counter()
        fill(archive, args.studies, args.seed)
        study, series, sops = fill_series(archive, args.series_instances, args.seed)
        archive.close()
        print(f"filled {args.studies} studies + a {args.series_instances}-slice CT series "
              f"in {time.perf_counter() - started:.1f} s")
        env = {"PACS_RATE_LIMIT_PER_SECOND": "0", "PACS_DATA_DIR": str(Path(tmp) / "data"), "PACS_DATABASE_URL": args.database_url}
        server = ProcessServer(env, Path(tmp)).start()  # the server in its own process, as deployed
        try:
            results = measure(server.http_port, args, study, series, sops)
        finally:
            server.terminate()
    report(results)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as out:
        out.write(json.dumps({"studies": args.studies, "series_instances": args.series_instances,
                              "database": "postgresql" if args.database_url else "sqlite",
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "results": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
