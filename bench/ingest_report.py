"""Results of ``bench/ingest.py``: machine facts, targets, the stdout table and the JSONL log."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_FILE = BENCH_DIR / "results" / "ingest.jsonl"

# Targets from the ingest-performance issue: instances/s by (dataset, associations).
RATE_TARGETS = {("ct", 1): 222.0, ("ct", 4): 395.0, ("tiny", 1): 408.0, ("tiny", 4): 703.0}
PEAK_RSS_TARGET_MB = 500.0


def machine_info() -> dict[str, Any]:
    """nproc, CPU model and memory of this machine (client and server share it)."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_total_mb": mem_mb}


def _commit_from_git_dir(git_dir: Path) -> str | None:
    """Resolve HEAD by reading ``.git`` directly (loose ref or packed-refs)."""
    head = (git_dir / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head[:7]
    ref = head[5:]
    loose = git_dir / ref
    if loose.is_file():
        return loose.read_text().strip()[:7]
    packed = git_dir / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0][:7]
    return None


def git_commit() -> str:
    """The short commit of the work tree (what ``git rev-parse --short HEAD`` prints)."""
    try:
        commit = _commit_from_git_dir(REPO_ROOT / ".git")
        if commit:
            return commit
    except OSError:
        pass
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def target_verdict(record: dict[str, Any]) -> str:
    """'pass', 'FAIL' or '-' against the issue's targets (only for the pacs server)."""
    if record.get("server") != "pacs" or not record.get("ok"):
        return "-"
    rate_target = RATE_TARGETS.get((record["dataset"], record["associations"]))
    checks = [record["peak_rss_mb"] < PEAK_RSS_TARGET_MB]
    if rate_target is not None:
        checks.append(record["rate"] >= rate_target)
    return "pass" if all(checks) else "FAIL"


def append_jsonl(record: dict[str, Any], path: Path = RESULTS_FILE) -> None:
    """Append ``record`` as one JSON line to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


COLUMNS = [
    ("server", "{:<8}"), ("dataset", "{:<7}"), ("count", "{:>6}"), ("assoc", "{:>5}"),
    ("db", "{:<10}"), ("seconds", "{:>8}"), ("inst/s", "{:>8}"), ("target", "{:>7}"),
    ("MB/s", "{:>7}"), ("peakRSS MB", "{:>10}"), ("srv cpu ms/inst", "{:>15}"),
    ("cli cpu s", "{:>9}"), ("verdict", "{:>7}"),
]


def _row(record: dict[str, Any]) -> list[str]:
    """The table cells of one run."""
    ok = record.get("ok")

    def num(key: str, fmt: str) -> str:
        value = record.get(key)
        return fmt.format(value) if ok and value is not None else "-"

    target = RATE_TARGETS.get((record["dataset"], record["associations"]))
    return [record["server"], record["dataset"], str(record["count"]), str(record["associations"]),
            record["database"], num("seconds", "{:.2f}"), num("rate", "{:.1f}"),
            f"{target:.0f}" if target and record["server"] == "pacs" else "-",
            num("mb_per_s", "{:.1f}"), num("peak_rss_mb", "{:.1f}"),
            num("cpu_ms_per_instance", "{:.2f}"), num("client_cpu_s", "{:.1f}"),
            target_verdict(record) if ok else "ERROR"]


def format_table(records: list[dict[str, Any]]) -> str:
    """A fixed-width table of the runs, one line each."""
    header = " ".join(fmt.format(name) for name, fmt in COLUMNS)
    lines = [header, "-" * len(header)]
    for record in records:
        cells = _row(record)
        lines.append(" ".join(fmt.format(cell) for (_, fmt), cell in zip(COLUMNS, cells)))
    return "\n".join(lines)
