"""STOW-RS benchmark: how fast ``pacs serve`` stores instances POSTed to /dicom-web/studies.

For each (batch size, client count), a fresh ``pacs serve`` subprocess (fresh data folder
under ``bench/work/run-*``, free loopback ports) receives the cached data set from N
concurrent aiohttp clients in this process. Each client owns an equal, contiguous share
of the files and POSTs them ``--batch`` instances per request as ``multipart/related;
type="application/dicom"`` (the body is built from the files just before its request),
one request after the other on one kept-alive connection. Every answer must be 200 with
one Referenced SOP Sequence item per instance sent, and afterwards the server must hold
every instance (``InstanceStored`` events). See bench/README.md "STOW-RS".

    python bench/stow.py --dataset tiny --batch 20,1 --clients 1,4
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from ingest_data import WORK_DIR, DataSet, ensure_dataset, split_evenly  # noqa: E402
from ingest_report import BENCH_DIR, append_jsonl, git_commit, machine_info  # noqa: E402
from ingest_servers import ServerProcess, finish_run, index_env  # noqa: E402

RESULTS_FILE = BENCH_DIR / "results" / "stow.jsonl"
#: Targets (instances/s) of the STOW-RS issue, by client count.
RATE_TARGETS = {1: 255.0, 4: 454.0}
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=600)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="STOW-RS throughput benchmark (see bench/README.md)")
    parser.add_argument("--dataset", choices=("tiny", "ct"), default="tiny")
    parser.add_argument("--count", type=int, default=2000, help="instances (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="sample data seed (default 1)")
    parser.add_argument("--batch", default="20,1", help="comma list of instances per request (default 20,1)")
    parser.add_argument("--clients", default="1,4", help="comma list of concurrent clients (default 1,4)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--server", choices=("pacs", "orthanc"), default="pacs",
                        help="pacs serve, or Orthanc with its DICOMweb plugin (Debian packages) for comparison")
    parser.add_argument("--keep", action="store_true", help="keep bench/work/run-* folders")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="JSONL file to append to")
    args = parser.parse_args(argv)
    try:
        args.batch = [int(b) for b in args.batch.split(",") if b.strip()]
        args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error("--batch and --clients are comma lists of integers")
    if min(args.batch + args.clients) < 1 or args.count < max(args.clients):
        parser.error("--batch and --clients values must be >= 1 and at most --count clients")
    return args


def multipart_body(files: list[Path], boundary: str) -> bytes:
    """The request body: one ``application/dicom`` part per file (RFC 2387)."""
    out = bytearray()
    for path in files:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += path.read_bytes()
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


async def client(url: str, files: list[Path], batch: int) -> tuple[int, list[str]]:
    """POST ``files`` ``batch`` at a time; returns (instances acknowledged, problems)."""
    boundary = uuid.uuid4().hex
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    stored, problems = 0, []
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
        for start in range(0, len(files), batch):
            chunk = files[start:start + batch]
            async with http.post(url, data=multipart_body(chunk, boundary), headers=headers) as resp:
                answer = await resp.json(content_type=None)
                refs = answer.get("00081199", {}).get("Value", []) if isinstance(answer, dict) else []
                if resp.status != 200 or len(refs) != len(chunk):
                    problems.append(f"{resp.status}: {json.dumps(answer)[:300]}")
                stored += len(refs)
    return stored, problems


async def run_clients(url: str, data: DataSet, clients: int, batch: int) -> tuple[float, int, list[str]]:
    """All clients at once; returns (wall seconds, instances acknowledged, problems)."""
    started = time.perf_counter()
    results = await asyncio.gather(*(client(url, share, batch) for share in split_evenly(data.files, clients)))
    seconds = time.perf_counter() - started
    return seconds, sum(r[0] for r in results), [p for r in results for p in r[1]]


def measure(server: ServerProcess, data: DataSet, clients: int, batch: int) -> dict[str, Any]:
    """Send the data set; the server must be running and ready."""
    url = f"http://127.0.0.1:{server.http_port}/dicom-web/studies"
    cpu_before, client_before = server.cpu_seconds(), time.process_time()
    seconds, acknowledged, problems = asyncio.run(run_clients(url, data, clients, batch))
    server_cpu = server.cpu_seconds() - cpu_before
    client_cpu = time.process_time() - client_before  # the clients run in this process
    stored = server.stored_count()
    if stored != data.count or acknowledged != data.count:
        problems.append(f"acknowledged {acknowledged}, server stored {stored} of {data.count}")
    target = RATE_TARGETS.get(clients)
    rate = data.count / seconds
    return {
        "seconds": round(seconds, 3), "rate": round(rate, 1),
        "mb_per_s": round(data.total_bytes / seconds / 1e6, 1),
        "cpu_ms_per_instance": round(server_cpu * 1000 / data.count, 3),
        "client_cpu_ms_per_instance": round(client_cpu * 1000 / data.count, 3),
        "peak_rss_mb": round(server.peak_rss_mb(), 1), "stored": stored,
        "target": target, "meets_target": None if target is None else rate >= target,
        "ok": not problems, "error": "; ".join(problems[:5]) or None,
    }


def run_once(args: argparse.Namespace, data: DataSet, clients: int, batch: int) -> dict[str, Any]:
    """One measured run against a fresh server."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = WORK_DIR / f"run-{stamp}-stow-{data.name}-c{clients}-b{batch}-{os.getpid()}"
    record: dict[str, Any] = {"ok": False, "error": None}
    with index_env(args.server, args.database) as env:
        server = ServerProcess(args.server, run_dir, env)
        try:
            server.start(warm=data.files)  # page cache warm for every run alike
            record = measure(server, data, clients, batch)
        except Exception as exc:  # reported as a failed result line, with the log tail
            record["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            server.stop()
    finish_run(server, run_dir, None if record["ok"] else record["error"], args.keep)
    return record



def table(records: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = ["| server | dataset | clients | inst/request | seconds | inst/s | MB/s | srv cpu ms/inst | cli cpu ms/inst "
             "| peak RSS MB | target |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        verdict = "-" if r.get("target") is None else (
            f"≥{r['target']:.0f}: {'met' if r.get('meets_target') else 'MISSED'}")
        lines.append(f"| {r.get('server', 'pacs')} | {r['dataset']} | {r['clients']} | {r['batch']} | {r.get('seconds', '-')} | "
                     f"{r.get('rate', '-')} | {r.get('mb_per_s', '-')} | {r.get('cpu_ms_per_instance', '-')} | "
                     f"{r.get('client_cpu_ms_per_instance', '-')} | "
                     f"{r.get('peak_rss_mb', '-')} | {verdict if r['ok'] else 'ERROR'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = ensure_dataset(args.dataset, args.count, seed=args.seed)
    print(f"{data.count} '{data.name}' instances, {data.total_bytes / 1e6:.0f} MB", file=sys.stderr)
    records = []
    for batch in args.batch:
        for clients in args.clients:
            record = {"server": args.server, "dataset": data.name, "count": data.count, "seed": args.seed, "clients": clients,
                      "batch": batch, "database": args.database, "dataset_bytes": data.total_bytes,
                      "commit": git_commit(), "machine": machine_info(),
                      "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      **run_once(args, data, clients, batch)}
            append_jsonl(record, args.results)
            records.append(record)
            print(f"  c={clients} b={batch}: {record.get('rate', '-')} inst/s", file=sys.stderr)
    m = records[0]["machine"]
    print(f"machine: {m['nproc']} cpus, {m['cpu_model']}; clients and server on the same machine")
    print(table(records))
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
