"""Retrieve benchmark: C-MOVE of a study to dcmtk ``storescp`` and C-GET with dcmtk ``getscu``.

The cached data set (``bench/ingest_data.py``, one series) is imported once into an
archive folder ``bench/work/retrieve-<dataset>-<count>/`` (SQLite index + objects; a
marker file is written after the last instance). Each run starts ``pacs serve`` on that
folder on free loopback ports, then for each operation:

* ``move``: starts ``storescp`` (dcmtk) on a free port writing into the run folder,
  registers it as move destination ``BENCHSCP``, polls it with C-ECHO until it answers,
  and times ``movescu -S -aem BENCHSCP -k QueryRetrieveLevel=STUDY -k StudyInstanceUID=..``
  from launch to exit;
* ``get``: times ``getscu -S -od <run folder> -k ...`` the same way.

Dirty pages are flushed (``sync``) before each operation. Verification: the client
exited 0 and the receiving side wrote exactly ``count`` files.
The server's CPU time over the operation and its peak RSS (``VmHWM``, whole life) and
current RSS (``VmRSS``) before and after are read from ``/proc``. See bench/README.md.

    python bench/retrieve.py --dataset ct --count 2000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from ingest_data import DATASETS, WORK_DIR, DataSet, ensure_dataset  # noqa: E402
from ingest_report import append_jsonl, git_commit, machine_info  # noqa: E402
from tests.servers import echo as echo_ok  # noqa: E402
from ingest_servers import POLL_INTERVAL, ServerProcess, finish_run, free_port, proc_status_kb  # noqa: E402

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "retrieve.jsonl"
CALLING_AE, DESTINATION_AE = "BENCH", "BENCHSCP"
#: instances/s on this machine (Orthanc's figures, the issue's targets).
TARGETS = {"move": 988.0, "get": 958.0}
CLIENT_TIMEOUT = 1800.0
IMPORT_MARKER = "imported.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="DIMSE C-MOVE / C-GET benchmark (see bench/README.md)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ct")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--ops", default="ceiling,move,get", help="comma list of move, get, ceiling (storescp fed by a bare loop, no server)")
    parser.add_argument("--pdu", type=int, default=16384,
                        help="max PDU the dcmtk receivers accept (-pdu; dcmtk default 16384, max 131072)")
    parser.add_argument("--receiver", choices=("write", "ignore"), default="write",
                        help="storescp/getscu write each object to disk (default) or receive and "
                             "discard it (dcmtk --ignore: the server's pace without the receiver's disk)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--extra-env", action="append", default=[], metavar="KEY=VAL")
    parser.add_argument("--keep", action="store_true", help="keep bench/work/run-* folders")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    args = parser.parse_args(argv)
    args.ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    if not args.ops or set(args.ops) - {*TARGETS, "ceiling"}:
        parser.error("--ops takes move, get and/or ceiling")
    args.extra_env = dict(item.split("=", 1) for item in args.extra_env)
    return args


def dcmtk(name: str) -> str:
    """dcmtk's binary ``name`` (pynetdicom installs Python apps with the same names)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.dcmtk import dcmtk_tool

    path = dcmtk_tool(name)
    if path is None:
        raise FileNotFoundError(f"dcmtk {name} not found (apt-get install dcmtk)")
    return path


def _settings(data_dir: Path):  # type: ignore[no-untyped-def]
    from pacs.settings import load_settings

    return load_settings(env={}, data_dir=data_dir)


def ensure_archive(data: DataSet) -> tuple[Path, str]:
    """The archive folder holding the data set, imported once; and the study UID."""
    from pydicom import dcmread

    from pacs.archive import Archive

    root = WORK_DIR / f"retrieve-{data.name}-{data.count}"
    study = str(dcmread(data.files[0], stop_before_pixels=True).StudyInstanceUID)
    if (root / IMPORT_MARKER).is_file() and (root / IMPORT_MARKER).read_text().strip() == study:
        return root, study
    shutil.rmtree(root, ignore_errors=True)
    print(f"importing {data.count} instances into {root} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    archive = Archive(_settings(root))
    try:
        for path in data.files:
            archive.ingest_file(path, source="bench")
    finally:
        archive.close()
    (root / IMPORT_MARKER).write_text(study)
    print(f"imported in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return root, study


def register_destination(archive_dir: Path, port: int) -> None:
    """Point the registry entry BENCHSCP at 127.0.0.1:``port`` (the server reads it per request)."""
    from pacs import aes
    from pacs.errors import NotFound
    from pacs.index.db import Database

    db = Database(_settings(archive_dir).resolved_database_url)
    try:
        try:
            aes.update_ae(db, DESTINATION_AE, "127.0.0.1", port, "bench storescp")
        except NotFound:
            aes.add_ae(db, DESTINATION_AE, "127.0.0.1", port, "bench storescp")
    finally:
        db.dispose()


def receiver_options(receiver: str) -> list[str]:
    """dcmtk options of the receiving side: ``--ignore`` receives every object whole and
    answers success without writing it; ``-v`` logs one line per C-STORE, counted then."""
    return ["-v", "--ignore"] if receiver == "ignore" else []


def received_count(out_dir: Path, log: Path, receiver: str) -> int:
    """Objects the receiver got: files written, or C-STORE requests logged (``--ignore``)."""
    if receiver == "ignore":
        return len(re.findall(rb"Received (?:C-)?Store Request", log.read_bytes(), re.IGNORECASE))
    return sum(1 for p in out_dir.iterdir() if p.is_file())


def start_storescp(out_dir: Path, pdu: int, log_dir: Path, receiver: str = "write") -> tuple[subprocess.Popen, int]:
    """dcmtk storescp on a free port, ready (answers C-ECHO) when this returns."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [dcmtk("storescp"), "-aet", DESTINATION_AE, "-pdu", str(pdu), *receiver_options(receiver),
           "-od", str(out_dir), str(port)]
    with open(log_dir / "storescp.log", "wb") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, "TCP_NODELAY": "1"}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited with {proc.returncode}")
        if echo_ok(port, DESTINATION_AE):
            return proc, port
        time.sleep(POLL_INTERVAL)
    proc.kill()
    raise TimeoutError("storescp did not answer C-ECHO")


def stop(proc: subprocess.Popen) -> None:
    """Terminate a process we started (by its pid), kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def client_command(op: str, server: ServerProcess, study: str, out_dir: Path, pdu: int,
                   receiver: str = "write") -> list[str]:
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    common = ["-S", "-aec", server.ae_title, "-aet", CALLING_AE, *keys]
    if op == "move":
        return [dcmtk("movescu"), *common, "-aem", DESTINATION_AE, "127.0.0.1", str(server.dimse_port)]
    out_dir.mkdir(parents=True, exist_ok=True)
    output = receiver_options(receiver) or ["-od", str(out_dir)]  # getscu refuses both at once
    return [dcmtk("getscu"), *common, "-pdu", str(pdu), *output, "127.0.0.1", str(server.dimse_port)]


def _dataset_chunks(path: str) -> Iterator[bytes]:
    """The data set bytes of a Part 10 file (after its File Meta Information)."""
    with open(path, "rb") as fp:
        fp.seek(128 + 4 + 8)
        meta_length = int.from_bytes(fp.read(4), "little")
        fp.seek(128 + 4 + 12 + meta_length)
        while chunk := fp.read(1 << 20):
            yield chunk


def run_ceiling(data: DataSet, run_dir: Path, pdu: int, receiver: str = "write") -> dict[str, Any]:
    """The receiver's ceiling: our Storage SCU sends the same files to storescp in a bare
    loop, no archive involved (what C-MOVE could reach if the server cost nothing)."""
    from pydicom import dcmread

    from pacs.dimse.scu import StoreAssociation

    out_dir = run_dir / "ceiling-received"
    storescp, port = start_storescp(out_dir, pdu, run_dir, receiver)
    head = dcmread(data.files[0], stop_before_pixels=True)
    contexts = [(str(head.SOPClassUID), [str(head.file_meta.TransferSyntaxUID)])]
    os.sync()
    started = time.perf_counter()
    assoc = StoreAssociation(CALLING_AE, DESTINATION_AE, contexts, max_pdu=1 << 20, connect_timeout=10,
                             dimse_timeout=60, implementation_uid="1.2.826.0.1.3680043.10.1")
    assoc.connect("127.0.0.1", port)
    failures = 0
    for number, path in enumerate(data.files, 1):
        sop = str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        status, _ = assoc.store(assoc.accepted[0], sop, _dataset_chunks(str(path)), msg_id=number & 0xFFFF)
        failures += status != 0
    assoc.release()
    seconds = time.perf_counter() - started
    stop(storescp)
    return {"op": "ceiling", "seconds": round(seconds, 3), "rate": round(data.count / seconds, 1),
            "target": TARGETS["move"], "server_cpu_ms_per_instance": 0.0, "rss_before_mb": 0.0,
            "rss_after_mb": 0.0, "peak_rss_mb": 0.0, "received": data.count - failures,
            "ok": failures == 0, "error": f"{failures} failed" if failures else None}


def run_op(op: str, server: ServerProcess, study: str, count: int, run_dir: Path, pdu: int,
           receiver: str = "write") -> dict[str, Any]:
    """One timed C-MOVE or C-GET of the whole study; the result record."""
    out_dir = run_dir / f"{op}-received"
    storescp = None
    if op == "move":
        storescp, port = start_storescp(out_dir, pdu, run_dir, receiver)
        register_destination(Path(server.env_extra["PACS_DATA_DIR"]), port)
    os.sync()  # earlier runs' dirty pages are not written back during this one
    rss_before = proc_status_kb(server.pid, "VmRSS") / 1000
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    with open(run_dir / f"{op}-client.log", "wb") as log:
        proc = subprocess.run(client_command(op, server, study, out_dir, pdu, receiver), stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "TCP_NODELAY": "1"}, timeout=CLIENT_TIMEOUT)
    seconds = time.perf_counter() - started
    cpu = server.cpu_seconds() - cpu_before
    rss_after = proc_status_kb(server.pid, "VmRSS") / 1000
    if storescp is not None:
        stop(storescp)
    receiver_log = run_dir / ("storescp.log" if op == "move" else f"{op}-client.log")
    received = received_count(out_dir, receiver_log, receiver)
    problems = [f"client exit code {proc.returncode}"] if proc.returncode else []
    if received != count:
        problems.append(f"received {received} of {count} files")
    return {"op": op, "seconds": round(seconds, 3), "rate": round(count / seconds, 1),
            "target": TARGETS[op], "server_cpu_ms_per_instance": round(cpu * 1000 / count, 3),
            "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1),
            "peak_rss_mb": round(server.peak_rss_mb(), 1), "received": received,
            "ok": not problems, "error": "; ".join(problems) or None}


def run_once(args: argparse.Namespace, data: DataSet, archive_dir: Path, study: str) -> list[dict[str, Any]]:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = WORK_DIR / f"run-{stamp}-retrieve-{data.name}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    server = ServerProcess("pacs", run_dir, {"PACS_DATA_DIR": str(archive_dir), **args.extra_env})
    records = []
    try:
        server.start()
        for op in args.ops:
            try:
                records.append(run_ceiling(data, run_dir, args.pdu, args.receiver) if op == "ceiling"
                               else run_op(op, server, study, data.count, run_dir, args.pdu, args.receiver))
            except Exception as exc:  # reported as a failed record, with the log tail
                records.append({"op": op, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            shutil.rmtree(run_dir / f"{op}-received", ignore_errors=True)
    finally:
        server.stop()
    failed = [f"{r['op']}: {r['error']}" for r in records if not r["ok"]]
    finish_run(server, run_dir, "; ".join(failed) or None, args.keep)
    return records


def format_table(records: list[dict[str, Any]]) -> str:
    header = f"{'op':<5} {'count':>6} {'pdu':>7} {'seconds':>8} {'inst/s':>8} {'target':>7} " \
             f"{'srv cpu ms/inst':>15} {'RSS before':>10} {'RSS after':>9} {'peak RSS':>8} verdict"
    lines = [header, "-" * len(header)]
    for r in records:
        if not r["ok"]:
            lines.append(f"{r['op']:<5} {r['count']:>6} {r['pdu']:>7} ERROR {r['error']}")
            continue
        verdict = "pass" if r["rate"] >= r["target"] else "below"
        lines.append(f"{r['op']:<5} {r['count']:>6} {r['pdu']:>7} {r['seconds']:>8.2f} {r['rate']:>8.1f} "
                     f"{r['target']:>7.0f} {r['server_cpu_ms_per_instance']:>15.2f} {r['rss_before_mb']:>10.1f} "
                     f"{r['rss_after_mb']:>9.1f} {r['peak_rss_mb']:>8.1f} {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = ensure_dataset(args.dataset, args.count)
    archive_dir, study = ensure_archive(data)
    print(f"{data.count} '{data.name}' instances, {data.total_bytes / 1e6:.0f} MB", file=sys.stderr)
    fixed = {"dataset": data.name, "count": data.count, "pdu": args.pdu, "database": "sqlite",
             "receiver": args.receiver,
             "extra_env": args.extra_env, "commit": git_commit(), "machine": machine_info(),
             "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    records = []
    for _ in range(args.repeat):
        for record in run_once(args, data, archive_dir, study):
            record = {**fixed, **record}
            append_jsonl(record, args.results)
            records.append(record)
            print(f"  {record['op']}: {record.get('rate', '-')} inst/s"
                  f"{'' if record['ok'] else '  ERROR ' + str(record['error'])}", file=sys.stderr)
    m = records[0]["machine"]
    print(f"machine: {m['nproc']} cpus, {m['cpu_model']}; commit {records[0]['commit']}; "
          f"clients, receivers and server on the same machine")
    print(format_table(records))
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
