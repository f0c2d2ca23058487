"""Load benchmark: DIMSE storers and DICOMweb readers at once against one ``pacs serve``.

Issue "performance" point 5: "16 concurrent associations storing and 50 HTTP clients
querying and retrieving for 5 minutes against one node: zero errors, p95 latencies
reported, memory flat."

1. A fresh ``pacs serve`` starts as a subprocess on free loopback ports with a fresh data
   folder under ``bench/work/run-*`` (SQLite, or ``--database postgresql``: a fresh schema
   in ``--database-url``), rate limit off; ready when ``/healthz`` answers.
2. Preload: ``--preload-studies`` (200) studies of ``--preload-instances`` (5) tiny
   instances over DIMSE, so the readers have something to read from the first second.
3. For ``--seconds`` (300), all at once (a barrier): one process with ``--associations``
   (16) threads, each keeping one association and C-STOREing new ~10 kB instances
   (fresh UIDs, a new study every ``--per-study`` instances), and ``--http-processes`` (2)
   processes sharing ``--http-clients`` (50) aiohttp clients browsing like OHIF
   (``bench/load_http.py``). The server's RSS is sampled every 5 s.
4. Verification: no error anywhere, and the server holds every acknowledged instance
   (``InstanceStored`` events in ``/api/changes``).

Prints the per-request-kind table (rate, p50/p95/p99/max ms) and memory figures, and
appends one JSON line to ``bench/results/load.jsonl``. Exit status 1 on any error.

    python bench/load.py --seconds 30
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from ingest_data import WORK_DIR  # noqa: E402
from ingest_report import BENCH_DIR, append_jsonl, git_commit, machine_info  # noqa: E402
from ingest_servers import (  # noqa: E402
    ServerProcess, count_instance_stored, finish_run, index_env, proc_status_kb, tree_sum,
)
from load_http import reader_process  # noqa: E402
from load_store import make_template, run_storers, storer_process  # noqa: E402

RESULTS_FILE = BENCH_DIR / "results" / "load.jsonl"
SAMPLE_EVERY = 5.0  # seconds between RSS samples
PG_URL = "postgresql://postgres@127.0.0.1:5432/loadbench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="DIMSE + DICOMweb load benchmark (see bench/README.md)")
    p.add_argument("--seconds", type=float, default=300.0, help="measured duration (default 300)")
    p.add_argument("--associations", type=int, default=16, help="storing associations (default 16)")
    p.add_argument("--http-clients", type=int, default=50, help="DICOMweb clients (default 50)")
    p.add_argument("--http-processes", type=int, default=2, help="processes sharing the clients (default 2)")
    p.add_argument("--think", type=float, default=0.0,
                   help="mean pause (s) between a reader's sessions (default 0: closed loop, saturating)")
    p.add_argument("--per-study", type=int, default=20, help="instances per new study (default 20)")
    p.add_argument("--per-series", type=int, default=10, help="instances per series (default 10)")
    p.add_argument("--preload-studies", type=int, default=200, help="studies stored before (default 200)")
    p.add_argument("--preload-instances", type=int, default=5, help="instances per preloaded study (5)")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--database-url", default=PG_URL,
                   help=f"PostgreSQL database holding the run's fresh schema (default {PG_URL})")
    p.add_argument("--extra-env", action="append", default=[], metavar="KEY=VAL", help="more server settings")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep bench/work/run-* afterwards")
    p.add_argument("--results", type=Path, default=RESULTS_FILE, help="JSONL file to append to")
    args = p.parse_args(argv)
    if not 0 <= args.associations <= 70 or args.http_clients < 0 or args.seconds <= 0:
        p.error("--associations 0..70, --http-clients >= 0, --seconds > 0")
    if args.preload_studies % 10 or args.preload_studies < 10:
        p.error("--preload-studies must be a multiple of 10 (ten preloading associations)")
    args.extra_env = dict(item.split("=", 1) for item in args.extra_env)
    return args



class RssSampler(threading.Thread):
    """Samples the server's VmRSS (summed over its processes) every ``SAMPLE_EVERY`` s."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.t0 = pid, time.monotonic()
        self.samples: list[tuple[float, ...]] = []  # (seconds since t0, MB: rss, anon, file)
        self.stopped = threading.Event()

    def sample(self) -> None:
        """Take one sample now: (s, VmRSS, RssAnon, RssFile + RssShmem) in MB."""
        mb = {key: tree_sum(self.pid, lambda p: proc_status_kb(p, key)) * 1024 / 1e6  # noqa: B023
              for key in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}
        self.samples.append((round(time.monotonic() - self.t0, 1), round(mb["VmRSS"], 1),
                             round(mb["RssAnon"], 1), round(mb["RssFile"] + mb["RssShmem"], 1)))

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_EVERY):
            self.sample()


def preload(server: ServerProcess, args: argparse.Namespace, run: int) -> int:
    """Store the preloaded studies (10 associations); return the instances acknowledged."""
    template = make_template(run)
    per_thread = args.preload_studies // 10
    results = run_storers(server.dimse_port, template, range(80, 90), 3600.0, args.preload_instances,
                          args.preload_instances, max_studies=per_thread)
    errors = [e for r in results for e in r.error_samples]
    if errors:
        raise RuntimeError(f"preload failed: {errors[:5]}")
    return sum(r.acked for r in results)


def run_load(server: ServerProcess, args: argparse.Namespace, run: int) -> dict[str, Any]:
    """The measured phase: start the client processes together, sample RSS, collect results."""
    ctx = mp.get_context("spawn")
    shares = [args.http_clients // args.http_processes + (i < args.http_clients % args.http_processes)
              for i in range(args.http_processes)] if args.http_clients else []
    barrier, counter, out = ctx.Barrier(2 + len(shares)), ctx.Value("i", 0), ctx.Queue()
    procs = [ctx.Process(target=storer_process, name="storer",
                         args=(server.dimse_port, run, args.associations, args.per_study, args.per_series,
                               args.seconds, barrier, counter, out))]
    procs += [ctx.Process(target=reader_process, name=f"reader-{i}",
                          args=(server.http_port, n, args.seconds, args.seed + i, args.think, barrier, counter, out))
              for i, n in enumerate(shares)]
    for proc in procs:
        proc.start()
    barrier.wait(180)
    sampler = RssSampler(server.pid)
    cpu_before = server.cpu_seconds()
    sampler.sample()
    sampler.start()
    messages = [out.get(timeout=args.seconds + 600) for _ in procs]
    wall = time.monotonic() - sampler.t0
    server_cpu = server.cpu_seconds() - cpu_before
    sampler.stopped.set()
    sampler.sample()
    for proc in procs:
        proc.join(60)
    failed = [m[1] for m in messages if m[0].endswith("-failed")]
    if failed:
        raise RuntimeError("client process failed:\n" + "\n".join(failed))
    return {"messages": messages, "wall": wall, "server_cpu": server_cpu, "rss": sampler.samples,
            "studies_started": counter.value}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 100)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_row(times: list[float], ms: list[float], errors: int, seconds: float) -> dict[str, Any]:
    """Count, rate, percentiles, and p95 in the first and last thirds of the run (drift)."""
    values = sorted(ms)
    third = seconds / 3
    early = sorted(m for t, m in zip(times, ms) if t < third)
    late = sorted(m for t, m in zip(times, ms) if t >= seconds - third)
    return {"n": len(ms), "per_s": round(len(ms) / seconds, 1), "errors": errors,
            "p50_ms": round(percentile(values, 50), 2), "p95_ms": round(percentile(values, 95), 2),
            "p99_ms": round(percentile(values, 99), 2), "max_ms": round(values[-1], 2) if values else None,
            "p95_first_third_ms": round(percentile(early, 95), 2),
            "p95_last_third_ms": round(percentile(late, 95), 2)}


def summarize_store(messages: list[tuple], seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The C-STORE row and the storing side's totals."""
    (_, results, cpu), = [m for m in messages if m[0] == "store"]
    times = [t for r in results for t in r["times"]]
    ms = [m for r in results for m in r["latencies_ms"]]
    errors = sum(r["errors"] for r in results)
    totals = {"acked": sum(r["acked"] for r in results), "studies": sum(r["studies"] for r in results),
              "errors": errors, "reconnects": sum(r["reconnects"] for r in results),
              "error_samples": [e for r in results for e in r["error_samples"]][:50],
              "client_cpu_s": round(cpu, 1)}
    return latency_row(times, ms, errors, seconds), totals


def summarize_http(messages: list[tuple], seconds: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rows per HTTP request kind and the reading side's totals."""
    results = [(m[1], m[2]) for m in messages if m[0] == "http"]
    kinds = sorted({k for r, _ in results for k in (*r["latencies_ms"], *r["errors"])})
    rows = {}
    for kind in kinds:
        times = [t for r, _ in results for t in r["times"].get(kind, [])]
        ms = [m for r, _ in results for m in r["latencies_ms"].get(kind, [])]
        rows[kind] = latency_row(times, ms, sum(r["errors"].get(kind, 0) for r, _ in results), seconds)
    statuses: dict[str, int] = {}
    for r, _ in results:
        for key, n in r["statuses"].items():
            statuses[key] = statuses.get(key, 0) + n
    totals = {"requests": sum(row["n"] for row in rows.values()),
              "errors": sum(row["errors"] for row in rows.values()),
              "sessions": sum(r["sessions"] for r, _ in results), "statuses": statuses,
              "error_samples": [e for r, _ in results for e in r["error_samples"]][:50],
              "client_cpu_s": round(sum(cpu for _, cpu in results), 1)}
    return rows, totals


def memory_summary(samples: list[tuple[float, ...]], seconds: float, hwm_mb: float) -> dict[str, Any]:
    """Mean RSS (and its anonymous part) over the first and the last minute (a third of the
    run when shorter), min, max, VmHWM; and the whole timeline (s, rss, anon, file MB)."""
    window = min(60.0, seconds / 3)
    first = [s for s in samples if s[0] <= window]
    last = [s for s in samples if s[0] >= samples[-1][0] - window]

    def mean(rows: list[tuple[float, ...]], column: int) -> float | None:
        return round(sum(r[column] for r in rows) / len(rows), 1) if rows else None

    return {"first_window_mean_mb": mean(first, 1), "last_window_mean_mb": mean(last, 1),
            "first_window_anon_mb": mean(first, 2), "last_window_anon_mb": mean(last, 2),
            "first_window_file_mb": mean(first, 3), "last_window_file_mb": mean(last, 3), "window_s": window,
            "min_mb": min(s[1] for s in samples), "max_mb": max(s[1] for s in samples),
            "vm_hwm_mb": round(hwm_mb, 1), "timeline": samples}


def measure(server: ServerProcess, args: argparse.Namespace, run: int) -> dict[str, Any]:
    """Preload, run the load, verify; the result record (without the fixed fields)."""
    started = time.monotonic()
    preloaded = preload(server, args, run)
    print(f"preloaded {preloaded} instances in {time.monotonic() - started:.1f} s; "
          f"loading for {args.seconds:.0f} s ...", file=sys.stderr, flush=True)
    load = run_load(server, args, run)
    seconds = load["wall"]
    store_row, store = summarize_store(load["messages"], args.seconds)
    http_rows, http = summarize_http(load["messages"], args.seconds)
    stored = count_instance_stored(server.http_port)
    memory = memory_summary(load["rss"], seconds, server.peak_rss_mb())
    problems = []
    if store["errors"] or http["errors"]:
        problems.append(f"{store['errors']} store errors, {http['errors']} HTTP errors")
    if stored != preloaded + store["acked"]:
        problems.append(f"server holds {stored} instances, {preloaded + store['acked']} acknowledged")
    return {"seconds": round(seconds, 1), "preloaded": preloaded, "stored_on_server": stored,
            "stores_per_s": round(store["acked"] / args.seconds, 1),
            "http_per_s": round(http["requests"] / args.seconds, 1),
            "requests": {"C-STORE": store_row, **http_rows}, "store": store, "http": http,
            "memory": memory, "server_cpu_s": round(load["server_cpu"], 1),
            "server_cpu_share": round(load["server_cpu"] / seconds, 2),
            "ok": not problems, "error": "; ".join(problems) or None}


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One run against a fresh server; the result record."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = WORK_DIR / "load" / f"run-{stamp}-{args.database}-{os.getpid()}"
    run = int(time.time()) % (9 * 10**8) + 10**8  # 9 digits, distinct per run
    record: dict[str, Any] = {"ok": False, "error": None}
    with index_env("pacs", args.database, args.database_url) as db_env:
        server = ServerProcess("pacs", run_dir, {**db_env, **args.extra_env})
        try:
            server.start()
            record = measure(server, args, run)
        except Exception as exc:  # reported as a result line, with the server log tail
            record["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            record["server_exit_code"] = server.stop()
    finish_run(server, run_dir, None if record["ok"] else record["error"], args.keep)
    return record


def print_report(record: dict[str, Any]) -> None:
    """The table of request kinds, the totals and the memory figures on stdout."""
    print(f"{'request':20s} {'n':>8s} {'per s':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} "
          f"{'max ms':>8s} {'p95 1st/3':>9s} {'p95 3rd/3':>9s} {'errors':>6s}")
    for kind, r in record.get("requests", {}).items():
        print(f"{kind:20s} {r['n']:8d} {r['per_s']:7.1f} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} "
              f"{r['p99_ms']:8.2f} {r['max_ms'] or 0:8.2f} {r['p95_first_third_ms']:9.2f} "
              f"{r['p95_last_third_ms']:9.2f} {r['errors']:6d}")
    if "memory" in record:
        m = record["memory"]
        print(f"stores/s {record['stores_per_s']}, HTTP requests/s {record['http_per_s']}; "
              f"server holds {record['stored_on_server']} instances "
              f"({record['preloaded']} preloaded + {record['store']['acked']} acknowledged); "
              f"server CPU {record['server_cpu_share']} cores")
        print(f"server RSS: first {m['window_s']:.0f} s mean {m['first_window_mean_mb']} MB, last "
              f"{m['window_s']:.0f} s mean {m['last_window_mean_mb']} MB, min {m['min_mb']}, max {m['max_mb']}, "
              f"VmHWM {m['vm_hwm_mb']} MB; anonymous {m['first_window_anon_mb']} -> {m['last_window_anon_mb']} MB, "
              f"file-backed {m['first_window_file_mb']} -> {m['last_window_file_mb']} MB")
        for e in record["store"]["error_samples"][:10] + record["http"]["error_samples"][:10]:
            print("  error:", e)
    print("OK" if record["ok"] else f"FAILED: {record['error']}")


def main(argv: list[str] | None = None) -> int:
    """Run once, print the report, append the JSON line; 1 when anything failed."""
    args = parse_args(argv)
    fixed = {"benchmark": "load", "database": args.database, "associations": args.associations,
             "http_clients": args.http_clients, "http_processes": args.http_processes, "think_s": args.think,
             "requested_seconds": args.seconds, "per_study": args.per_study,
             "preload_studies": args.preload_studies, "extra_env": args.extra_env, "commit": git_commit(),
             "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info()}
    record = {**fixed, **run_once(args)}
    append_jsonl(record, args.results)
    print_report(record)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
