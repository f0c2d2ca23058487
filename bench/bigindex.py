"""Big index: C-FIND and QIDO-RS latency with 1,000,000 instances (see bench/README.md).

``load`` fills an index (PostgreSQL or SQLite) with synthetic rows exactly as ingest
writes them (bench/bigindex_data.py: 100,000 studies of 10 instances in 2-4 series,
30,000 patients, ten years of dates, CT/MR/CR/US/DX) by bulk inserts
(bench/bigindex_load.py); no objects are stored. ``measure`` starts ``pacs serve`` on that
index and times, per case, C-FIND over one kept Study Root association (the lean SCU of
bench/query.py) and QIDO-RS over one kept-alive connection (bench/dicomweb.py's client),
as OHIF sends it. ``explain`` prints the plan of each case's SQL (bench/bigindex_cases.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402

from bench.bigindex_cases import Search, cases, explain, sql_of  # noqa: E402
from bench.bigindex_data import INSTANCES_PER_STUDY  # noqa: E402
from bench.bigindex_load import LoadPlan, database_size, load, reset  # noqa: E402
from bench.dicomweb import DICOM_JSON, Client  # noqa: E402
from bench.ingest_report import append_jsonl, git_commit, machine_info  # noqa: E402
from bench.query import connect, quiet_collector  # noqa: E402
from tests.servers import ProcessServer  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/bigindex"
SQLITE_DEFAULT = HERE / "work" / "bigindex" / "index.sqlite"


def database_url(args: argparse.Namespace) -> str:
    """The SQLAlchemy URL of ``--database`` (``--database-url`` overrides it)."""
    if args.database_url:
        url = args.database_url
    elif args.database == "postgresql":
        url = PG_DEFAULT
    else:
        url = f"sqlite:///{SQLITE_DEFAULT}"
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def summary(times: list[float], matches: list[int]) -> dict[str, float]:
    times = sorted(times)
    return {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(times[int(len(times) * 0.95) - 1], 2),
            "max_ms": round(times[-1], 2), "mean_matches": round(statistics.mean(matches), 1), "n": len(times)}


def _timed(run: Callable[[Any], int], requests: list[Any]) -> dict[str, float]:
    """``run`` each request (built beforehand: only the exchange is timed)."""
    run(requests[-1])  # warm-up: first-use costs are not what is measured
    times, matches = [], []
    for request in requests:
        started = time.perf_counter()
        matches.append(run(request))
        times.append((time.perf_counter() - started) * 1000)
    return summary(times, matches)


def time_cfind(port: int, all_cases: dict[str, list[Search]]) -> dict[str, dict[str, float]]:
    """Each case over one kept association; matches = pending responses."""
    assoc = connect(port, "lean", True)

    def run(identifier: Any) -> int:
        return sum(1 for status, _ in assoc.send_c_find(identifier, FIND) if status.Status == 0xFF00)

    try:
        return {name: _timed(run, [s.identifier() for s in searches]) for name, searches in all_cases.items()}
    finally:
        assoc.release()


def time_qido(port: int, all_cases: dict[str, list[Search]]) -> dict[str, dict[str, float]]:
    """Each case over one kept-alive HTTP/1.1 connection; matches = objects returned."""
    client = Client(port)

    def run(path: str) -> int:
        client.conn.request("GET", path, headers={"Accept": DICOM_JSON})
        resp = client.conn.getresponse()
        body = resp.read()
        if resp.status not in (200, 204):
            raise RuntimeError(f"GET {path}: {resp.status}")
        return len(json.loads(body)) if body else 0

    return {name: _timed(run, [s.qido_path() for s in searches]) for name, searches in all_cases.items()}


def append_result(name: str, record: dict[str, Any]) -> None:
    """One JSON line in ``bench/results/<name>`` with the commit, date and machine (the
    fields of every benchmark's results, bench/ingest_report.py) and the load average."""
    machine = {**machine_info(), "load_avg": os.getloadavg()}
    append_jsonl({**record, "commit": git_commit(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "machine": machine}, RESULTS / name)


def print_table(runs: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"{'door':6s} {'query':32s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'matches':>8s}")
    for door, results in runs.items():
        for name, r in results.items():
            print(f"{door:6s} {name:32s} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['max_ms']:8.2f} "
                  f"{r['mean_matches']:8.1f}")


def index_size(url: str) -> tuple[int, int]:
    """(studies, patients) the index holds."""
    engine = create_engine(url)
    with engine.connect() as conn:
        studies = conn.exec_driver_sql("SELECT count(*) FROM study").scalar() or 0
        patients = conn.exec_driver_sql("SELECT count(*) FROM patient").scalar() or 0
    engine.dispose()
    return int(studies), int(patients)


def cmd_load(args: argparse.Namespace) -> int:
    url = database_url(args)
    if args.reset:
        reset(url)
    studies = args.instances // INSTANCES_PER_STUDY
    plan = LoadPlan(url, studies, args.patients or max(1, studies * 3 // 10), args.seed, args.batch)
    times = load(plan, resume=args.resume)
    size = database_size(url)
    print(f"loaded {studies} studies, {args.instances} instances: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
          + f"; database {size / 1e6:.0f} MB")
    append_result("bigindex-load.jsonl", {"database": args.database, "studies": studies, "instances": args.instances,
                                          "patients": plan.patients, "resumed": args.resume, "times": times,
                                          "database_bytes": size})
    return 0


def _server_env(url: str, data_dir: Path) -> dict[str, str]:
    # Like bench/query.py and bench/dicomweb.py: no rate limit, loopback clients, default auth.
    return {"PACS_RATE_LIMIT_PER_SECOND": "0", "PACS_DATA_DIR": str(data_dir), "PACS_DATABASE_URL": url}


def cmd_measure(args: argparse.Namespace) -> int:
    url = database_url(args)
    studies, patients = index_size(url)
    if not studies:
        raise SystemExit("the index is empty: run `load` first")
    doors = ("cfind", "qido") if args.door == "both" else (args.door,)
    with tempfile.TemporaryDirectory() as tmp:
        server = ProcessServer(_server_env(url, Path(tmp) / "data"), Path(tmp)).start()
        try:
            runs = {}
            for door in doors:
                all_cases = cases(random.Random(args.seed), studies, patients, args.repeat, door)
                quiet_collector()  # QIDO max 60-100 ms every ~0.3 s before: the client's collector
                timer = time_cfind if door == "cfind" else time_qido
                runs[door] = timer(server.dimse_port if door == "cfind" else server.http_port, all_cases)
        finally:
            server.terminate()
    print(f"{args.database}: {studies} studies, {studies * INSTANCES_PER_STUDY} instances")
    print_table(runs)
    append_result("bigindex.jsonl", {"database": args.database, "studies": studies,
                                     "instances": studies * INSTANCES_PER_STUDY, "repeat": args.repeat,
                                     "results": runs})
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """The plan of one search of each case and door, with the statement's own time."""
    url = database_url(args)
    studies, patients = index_size(url)
    engine = create_engine(url)
    out = []
    for door in ("cfind", "qido"):
        for name, searches in cases(random.Random(args.seed), studies, patients, 3, door).items():
            search = searches[0]
            query, tags = search.cfind_request() if door == "cfind" else search.qido_request()
            sql = sql_of(query, tags, engine.dialect)
            explain(engine, sql)  # warm the cache: the plan of a warm index is what is read
            plan, took = explain(engine, sql, analyze=not args.no_analyze)
            out.append(f"## {door}: {name} ({search.keys or 'no keys'}) {took:.2f} ms\n\n{sql}\n\n{plan}\n")
            print(f"{door:6s} {name:32s} {took:8.2f} ms")
    engine.dispose()
    target = Path(args.output or RESULTS / f"bigindex-explain-{args.database}.txt")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(out))
    print(f"plans written to {target}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("load", "measure", "explain"))
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--database-url", default="",
                        help=f"default: {PG_DEFAULT} or SQLite {SQLITE_DEFAULT.relative_to(HERE.parent)}")
    parser.add_argument("--instances", type=int, default=1_000_000, help="load: instances (10 per study)")
    parser.add_argument("--patients", type=int, default=0, help="load: patients (default: 0.3 per study)")
    parser.add_argument("--batch", type=int, default=2000, help="load: studies per transaction")
    parser.add_argument("--reset", action="store_true", help="load: empty the index first")
    parser.add_argument("--resume", action="store_true", help="load: continue an interrupted load")
    parser.add_argument("--door", choices=("cfind", "qido", "both"), default="both", help="measure: which door")
    parser.add_argument("--repeat", type=int, default=100, help="measure: requests per case")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-analyze", action="store_true", help="explain: plans without running them")
    parser.add_argument("--output", default="", help="explain: where the plans go")
    args = parser.parse_args()
    return {"load": cmd_load, "measure": cmd_measure, "explain": cmd_explain}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
