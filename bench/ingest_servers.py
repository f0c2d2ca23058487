"""Servers under test for ``bench/ingest.py`` and ``bench/stow.py``: ``pacs serve``, the bare
pynetdicom baseline, or Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb`` packages), the
peer the issues' targets were measured on; running it side by side on the same machine, in
the same state, is the fair comparison on a machine whose disk and memory vary by run.

Each run starts its own server subprocess on free loopback ports, waits for readiness by
polling (``/healthz`` for pacs, the TCP port for the baseline; never a fixed sleep),
reads its peak RSS and CPU time from ``/proc``, and stops it with SIGTERM. Only the
process started here is ever signalled, by its pid.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
POLL_INTERVAL = 0.05  # seconds between readiness probes
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PG_BASE_URL = "postgresql://127.0.0.1:5432/test"
ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def http_get_json(url: str, timeout: float = 30) -> tuple[int, dict]:
    """GET ``url``; return (status, parsed JSON body or {})."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()  # skip "pid (comm) "; fields[0] is field 3
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` value such as ``VmHWM`` (peak RSS) from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (``pacs serve --workers N`` runs N children)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return pids


def tree_sum(pid: int, read) -> float:  # type: ignore[no-untyped-def]
    """Sum of ``read(p)`` over the process tree of ``pid``, skipping processes that exited."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += read(p)
        except (OSError, KeyError, ValueError):
            continue
    return total


@dataclass
class ServerProcess:
    """A server subprocess under test (``kind``: ``pacs``, ``baseline`` or ``orthanc``)."""

    kind: str
    run_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    ae_title: str = "PACS"
    dimse_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self.run_dir / "server.log"

    @property
    def out_dir(self) -> Path:
        """The server's data folder (pacs) or output folder (baseline)."""
        return self.run_dir / "data"

    def _command_and_env(self) -> tuple[list[str], dict[str, str]]:
        """The command line and the environment of the server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        if self.kind == "baseline":
            cmd = [sys.executable, str(BENCH_DIR / "baseline_scp.py"), "--port", str(self.dimse_port),
                   "--out", str(self.out_dir), "--ae-title", self.ae_title]
            return cmd, {**env, **self.env_extra}
        if self.kind == "orthanc":
            # dcmtk, Orthanc's DICOM layer, sets TCP_NODELAY on its sockets only when this
            # variable says so; without it each C-STORE round trip stalls ~40 ms.
            return [ORTHANC, str(self._orthanc_config())], {**env, "TCP_NODELAY": "1"}
        env.update({"PACS_RATE_LIMIT_PER_SECOND": "0", "PACS_DATA_DIR": str(self.out_dir), "PACS_HOST": "127.0.0.1",
                    "PACS_DIMSE_PORT": str(self.dimse_port), "PACS_HTTP_PORT": str(self.http_port),
                    "PACS_AE_TITLE": self.ae_title})
        env.update(self.env_extra)
        return [sys.executable, "-m", "pacs.cli", "serve"], env

    def _orthanc_config(self) -> Path:
        """Orthanc's configuration: its defaults (so SyncStorageArea, the fsync of every
        stored file, stays on) plus ports, AE title, folders and the DICOMweb plugin."""
        config = {
            "Name": "bench", "DicomAet": self.ae_title, "DicomPort": self.dimse_port,
            "HttpPort": self.http_port, "StorageDirectory": str(self.out_dir / "storage"),
            "IndexDirectory": str(self.out_dir / "index"), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "Plugins": [ORTHANC_DICOMWEB] if Path(ORTHANC_DICOMWEB).exists() else [],
        }
        config.update({k: json.loads(v) for k, v in self.env_extra.items()})
        path = self.run_dir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, warm: Sequence[Path] = (), timeout: float = 120.0) -> "ServerProcess":
        """Settle the file system, read the files ``warm`` into the page cache, start the
        server and return once it is ready; raise with the log tail otherwise."""
        settle_filesystem()
        warm_up(warm)
        self.dimse_port, self.http_port = free_port(), free_port()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cmd, env = self._command_and_env()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(POLL_INTERVAL)
        raise TimeoutError(f"{self.kind} server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        """One readiness probe: /healthz answering 200 (pacs), the DIMSE port accepting (baseline).

        pacs starts its DIMSE listener before HTTP serves, so /healthz 200 implies DIMSE is
        up; its port is not probed, as a bare connect would leave a half-open association.
        """
        if self.kind in ("pacs", "orthanc"):
            path = "/healthz" if self.kind == "pacs" else "/system"
            try:
                status, _ = http_get_json(f"http://127.0.0.1:{self.http_port}{path}", timeout=2)
            except OSError:
                return False
            return status == 200
        return port_open(self.dimse_port)

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """CPU seconds the server (all its processes) has used so far."""
        return tree_sum(self.pid, proc_cpu_seconds)

    def peak_rss_mb(self) -> float:
        """Peak resident set size (VmHWM) so far, in MB (10^6 bytes), summed over the
        server's processes (an upper bound of the peak of the whole)."""
        return tree_sum(self.pid, lambda p: proc_status_kb(p, "VmHWM")) * 1024 / 1e6

    def stop(self, timeout: float = 90.0) -> int | None:
        """SIGTERM the server and wait; SIGKILL it (by pid) only if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.kind} server ignored SIGTERM for {timeout:.0f} s; killing pid {self.pid}",
                  file=sys.stderr)
            self.proc.kill()
            return self.proc.wait(30)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def stored_count(self) -> int:
        """How many instances the server stored during this run."""
        if self.kind == "baseline":
            return sum(1 for p in self.out_dir.iterdir() if p.suffix == ".dcm")
        if self.kind == "orthanc":
            return int(http_get_json(f"http://127.0.0.1:{self.http_port}/statistics")[1]["CountInstances"])
        return count_instance_stored(self.http_port)


def count_instance_stored(http_port: int, page: int = 1000) -> int:
    """Count ``InstanceStored`` events in the pacs change feed, paging via ``last``/``done``."""
    since, total = 0, 0
    while True:
        url = f"http://127.0.0.1:{http_port}/api/changes?since={since}&limit={page}"
        status, body = http_get_json(url)
        if status != 200:
            raise RuntimeError(f"GET {url} answered {status}")
        total += sum(1 for e in body["changes"] if e.get("type") == "InstanceStored")
        if body.get("done") or not body["changes"]:
            return total
        since = body["last"]


@contextlib.contextmanager
def postgres_schema(base_url: str = PG_BASE_URL) -> Iterator[str]:
    """A fresh PostgreSQL schema for one run; yield the database URL using it, then drop it."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base_url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def index_env(server: str, database: str, base_url: str = PG_BASE_URL) -> Iterator[dict[str, str]]:
    """The pacs server's environment for its index: nothing (SQLite, its default) or a
    fresh PostgreSQL schema dropped afterwards. Other servers get nothing."""
    if server != "pacs" or database == "sqlite":
        yield {}
        return
    with postgres_schema(base_url) as url:
        yield {"PACS_DATABASE_URL": url}


def find_dcmtk_storescu() -> str:
    """The path of dcmtk's ``storescu``.

    pynetdicom installs a Python ``storescu`` console script that may come first on PATH
    (pyenv shims); it takes different options, so dcmtk's binary is looked for
    explicitly and recognised by its ``--version`` banner.
    """
    candidates = [os.environ.get("DCMTK_STORESCU", ""), "/usr/bin/storescu", "/usr/local/bin/storescu"]
    candidates += [str(Path(d) / "storescu") for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    for path in filter(None, candidates):
        if not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    raise FileNotFoundError("dcmtk storescu not found (apt-get install dcmtk, or set DCMTK_STORESCU)")


#: Run folders of this invocation, removed when it exits (see :func:`finish_run`).
_FINISHED: list[Path] = []
#: Touched after run folders are removed; :func:`settle_filesystem` reads its time.
REMOVAL_STAMP = BENCH_DIR / "work" / ".last-removal"
#: A file creation costs at most this (seconds) once the file system has settled.
SETTLED_CREATE_SECONDS = 60e-6
#: How long ext4 without a journal may keep freed inodes "recently deleted" (60 s, or
#: 300 s more while their inode table block is dirty: fs/ext4/ialloc.c), plus a margin.
SETTLE_LIMIT_SECONDS = 400.0
PROBE_INTERVAL = 10.0  # seconds between probes while waiting
PROBE_FILES = 200
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def finish_run(server: "ServerProcess", run_dir: Path, error: str | None, keep: bool) -> None:
    """After a benchmark run: on failure print the error and the server's log tail; keep
    the run folder when asked or when the run failed, else remove it when the benchmark
    exits (not now: see :func:`settle_filesystem`)."""
    if error is not None:
        print(f"run failed: {error}\nserver log tail ({server.log_path}):\n{server.log_tail()}", file=sys.stderr)
    if keep or error is not None:
        print(f"kept {run_dir}", file=sys.stderr)
        return
    _remove_at_exit(run_dir)


def _remove_at_exit(path: Path) -> None:
    if not _FINISHED:
        atexit.register(remove_finished_runs)
    _FINISHED.append(path)


def remove_finished_runs() -> None:
    """Remove the run folders of this invocation and note when (REMOVAL_STAMP)."""
    if not _FINISHED:
        return
    for run_dir in _FINISHED:
        shutil.rmtree(run_dir, ignore_errors=True)
    _FINISHED.clear()
    REMOVAL_STAMP.parent.mkdir(parents=True, exist_ok=True)
    REMOVAL_STAMP.touch()


def _creation_cost() -> float:
    """Seconds per empty-file creation now, in a fresh folder of the work area (removed
    with the run folders when the benchmark exits)."""
    probe = BENCH_DIR / "work" / f"probe-{time.time_ns()}"
    probe.mkdir(parents=True)
    _remove_at_exit(probe)
    started = time.perf_counter()
    for i in range(PROBE_FILES):
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return (time.perf_counter() - started) / PROBE_FILES


def warm_up(files: Sequence[Path]) -> None:
    """Read every file once (page cache) and flush dirty pages, so runs start alike."""
    for path in files:
        with open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    os.sync()


def drop_clean_caches() -> bool:
    """``sync`` and drop the kernel's clean caches (page cache, dentries, inodes) when this
    process may (root on Linux); False when it may not."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def settle_filesystem() -> None:
    """Make sure files removed earlier no longer slow file creation.

    On ext4 without a journal (this project's development VM) the inode allocator skips
    inodes freed recently, checking each one (fs/ext4/ialloc.c ``recently_deleted``):
    after benchmark folders were removed, creating a file cost 0.2-0.7 ms of kernel time
    instead of ~20 us, and a server creating one file per instance pays that per
    instance. The check only looks at inode table blocks still in the buffer cache, so
    when the probe finds creation slow and this process may, it drops the clean caches
    (session 9: the server's kernel time per tiny instance fell from 1.6 to 0.65 ms).
    Otherwise (not root) a run that starts within SETTLE_LIMIT_SECONDS of a removal polls
    what a creation costs until it is back to normal (docs/performance.md, "Benchmark hygiene").
    The runs of one invocation keep their folders until it exits.
    """
    if _creation_cost() > SETTLED_CREATE_SECONDS and drop_clean_caches():
        # Nothing more to wait for: what is left (~90 us on the session-9 VM, right after
        # the drop too) is not the freed inodes' check, which dropping the caches ends.
        print(f"file creation was slow; dropped the kernel's clean caches, now "
              f"{_creation_cost() * 1e6:.0f} us", file=sys.stderr)
        return
    try:
        age = time.time() - REMOVAL_STAMP.stat().st_mtime
    except FileNotFoundError:
        return
    deadline = time.monotonic() + SETTLE_LIMIT_SECONDS - age
    while time.monotonic() < deadline:
        cost = _creation_cost()
        if cost <= SETTLED_CREATE_SECONDS:
            return
        print(f"file creation costs {cost * 1e6:.0f} us after the last benchmark's removal; "
              f"waiting for it to settle", file=sys.stderr)
        time.sleep(PROBE_INTERVAL)
