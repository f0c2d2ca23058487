"""Ingest benchmark: how fast ``pacs serve`` takes C-STOREs from dcmtk ``storescu``.

For each association count, a fresh server (``pacs serve`` or the bare pynetdicom
baseline, ``--server``) is started on free loopback ports with a fresh data folder under
``bench/work/run-*``; once it is ready, the cached data set is split into N equal groups
and N ``storescu`` processes (one association each) send them in parallel. The wall time
from launching the clients to the last one exiting gives instances/s. Afterwards the
server must hold every instance (pacs: ``InstanceStored`` events in ``/api/changes``;
baseline: files written), every storescu must have exited 0, and the server's peak RSS
(``VmHWM``) and CPU time are read from ``/proc``. See ``bench/README.md``.

    python bench/ingest.py --dataset ct --associations 1,4
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from ingest_data import DATASETS, WORK_DIR, DataSet, ensure_dataset, link_groups  # noqa: E402
from ingest_report import (  # noqa: E402
    RESULTS_FILE,
    append_jsonl,
    format_table,
    git_commit,
    machine_info,
)
from ingest_servers import ServerProcess, find_dcmtk_storescu, finish_run, index_env  # noqa: E402

CALLING_AE = "BENCH"
CLIENT_TIMEOUT = 1800.0  # seconds; a bound, not an expectation


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="DIMSE C-STORE ingest benchmark (see bench/README.md)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ct",
                        help="ct: 512x512 16-bit CT slices (~514 kB); tiny: ~10 kB instances")
    parser.add_argument("--count", type=int, default=2000, help="instances to send (default 2000)")
    parser.add_argument("--associations", default="1,4",
                        help="comma list of parallel association counts, one run each (default 1,4)")
    parser.add_argument("--server", choices=("pacs", "baseline", "orthanc"), default="pacs",
                        help="pacs serve, or for comparison bench/baseline_scp.py or Orthanc "
                             "(Debian package; --extra-env then sets its JSON options)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="index database of pacs serve (postgresql: fresh schema in db 'test')")
    parser.add_argument("--extra-env", action="append", default=[], metavar="KEY=VAL",
                        help="extra environment for the server, e.g. PACS_MAX_PDU_SIZE=1048576")
    parser.add_argument("--storescu-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every storescu (repeatable), e.g. --storescu-arg=-R")
    parser.add_argument("--repeat", type=int, default=1, help="runs per association count (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep bench/work/run-* folders afterwards")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="JSONL file to append to")
    args = parser.parse_args(argv)
    try:
        args.associations = [int(a) for a in args.associations.split(",") if a.strip()]
    except ValueError:
        parser.error("--associations must be a comma list of integers")
    if not args.associations or min(args.associations) < 1 or args.count < 1:
        parser.error("--associations values and --count must be >= 1")
    if max(args.associations) > args.count:
        parser.error("more associations than instances")
    args.extra_env = _parse_env(parser, args.extra_env)
    return args


def _parse_env(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``KEY=VAL`` strings to a dict."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--extra-env wants KEY=VAL, got {item!r}")
        env[key] = value
    return env



def run_clients(storescu: str, port: int, ae_title: str, folders: list[Path], log_dir: Path,
                extra_args: list[str]) -> tuple[float, list[int], float]:
    """Run one storescu per folder in parallel; return (wall seconds, exit codes, client CPU s)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = []
    started = time.perf_counter()
    for i, folder in enumerate(folders):
        cmd = [storescu, *extra_args, "-aec", ae_title, "-aet", CALLING_AE, "127.0.0.1", str(port),
               "+sd", str(folder)]
        with open(log_dir / f"storescu-{i}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
    deadline = started + CLIENT_TIMEOUT
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.0, deadline - time.perf_counter())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, codes, client_cpu


def client_errors(log_dir: Path) -> list[str]:
    """Error lines ("E: ...", "F: ...") that the storescu processes logged."""
    lines = []
    for log in sorted(log_dir.glob("storescu-*.log")):
        lines += [f"{log.name}: {ln}" for ln in log.read_text(errors="replace").splitlines()
                  if ln.startswith(("E:", "F:"))]
    return lines


def measure(server: ServerProcess, data: DataSet, folders: list[Path], storescu: str,
            extra_args: list[str]) -> dict[str, Any]:
    """Send the data set and measure; the server must be running and ready."""
    cpu_before = server.cpu_seconds()
    seconds, codes, client_cpu = run_clients(storescu, server.dimse_port, server.ae_title, folders,
                                             server.run_dir, extra_args)
    server_cpu = server.cpu_seconds() - cpu_before
    stored = server.stored_count()
    peak = server.peak_rss_mb()  # VmHWM, read just before the server is stopped
    errors = client_errors(server.run_dir)
    problems = []
    if any(codes):
        problems.append(f"storescu exit codes {codes}")
    if stored != data.count:
        problems.append(f"server stored {stored} of {data.count} instances")
    return {
        "seconds": round(seconds, 3), "rate": round(data.count / seconds, 1),
        "mb_per_s": round(data.total_bytes / seconds / 1e6, 1), "peak_rss_mb": round(peak, 1),
        "cpu_ms_per_instance": round(server_cpu * 1000 / data.count, 3),
        "server_cpu_s": round(server_cpu, 2), "client_cpu_s": round(client_cpu, 2),
        "stored": stored, "storescu_exit_codes": codes, "client_error_lines": errors[:20],
        "ok": not problems, "error": "; ".join(problems) or None,
    }


def run_once(args: argparse.Namespace, data: DataSet, associations: int, storescu: str) -> dict[str, Any]:
    """One measured run against a fresh server; returns the result record."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = WORK_DIR / f"run-{stamp}-{args.server}-{data.name}-a{associations}-{os.getpid()}"
    folders = link_groups(data.files, associations, run_dir / "groups")
    record: dict[str, Any] = {"ok": False, "error": None}
    with index_env(args.server, args.database) as db_env:
        server = ServerProcess(args.server, run_dir, {**db_env, **args.extra_env})
        try:
            server.start(warm=data.files)
            record = measure(server, data, folders, storescu, args.storescu_arg)
        except Exception as exc:  # report the failure as a result line, with the log tail
            record["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            stop_started = time.monotonic()
            exit_code = server.stop()
            stop_seconds = time.monotonic() - stop_started
    record.update(server_exit_code=exit_code, server_stop_s=round(stop_seconds, 2))
    finish_run(server, run_dir, None if record["ok"] else record["error"], args.keep)
    return record


def describe(args: argparse.Namespace, data: DataSet, associations: int) -> dict[str, Any]:
    """The fixed fields of a result record."""
    return {
        "server": args.server, "dataset": data.name, "count": data.count,
        "associations": associations, "dataset_bytes": data.total_bytes,
        "database": args.database if args.server == "pacs" else "none",
        "extra_env": args.extra_env, "storescu_args": args.storescu_arg,
        "commit": git_commit(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every requested configuration; print the table; 1 if any run failed."""
    args = parse_args(argv)
    storescu = find_dcmtk_storescu()
    data = ensure_dataset(args.dataset, args.count)
    print(f"{data.count} '{data.name}' instances, {data.total_bytes / 1e6:.0f} MB; storescu: {storescu}",
          file=sys.stderr)
    records = []
    for associations in args.associations:
        for _ in range(args.repeat):
            record = {**describe(args, data, associations), **run_once(args, data, associations, storescu)}
            append_jsonl(record, args.results)
            records.append(record)
            print(f"  {args.server} a={associations}: {record.get('rate', '-')} inst/s"
                  f"{'' if record['ok'] else '  ERROR ' + str(record['error'])}", file=sys.stderr)
    m = records[0]["machine"]
    print(f"machine: {m['nproc']} cpus, {m['cpu_model']}; commit {records[0]['commit']}; "
          f"client and server on the same machine")
    print(format_table(records))
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
