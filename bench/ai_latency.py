"""AI hooks latency against `pacs serve` (see bench/README.md "AI hooks latency").

Starts `pacs serve` as its own process with a short quiet period
(``PACS_STABLE_SECONDS``, default 2 s here) and a 0.1 s stability check, subscribes a
webhook receiver running in this process, then for each of N studies:

1. sends a CT series of M slices by C-STORE (pynetdicom, one association) and notes the
   moment the last C-STORE response arrived;
2. notes when the signed notification reaches the webhook (signature verified):
   **store → webhook**, to compare with the target quiet period + 1 s at p95;
3. posts a critical finding to ``results_url`` with the notification's token and polls
   ``GET /api/reading-worklist/{study}`` until it shows STAT: **findings → worklist**
   (target ≤ 1 s).

Studies are sent one after the other, so each figure is the latency of an otherwise
quiet server. Prints p50 / p95 / max and appends a JSON line to ``--results``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.server
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402

from sample_data import generate_ct_series  # noqa: E402
from bench.ingest_servers import postgres_schema  # noqa: E402
from tests.servers import ProcessServer  # noqa: E402

SECRET = "bench-secret-0123456789abcdef"


class Hook(http.server.BaseHTTPRequestHandler):
    """Webhook receiver: verifies the signature, records (arrival time, notification)."""

    arrivals: list[tuple[float, dict[str, Any]]] = []
    arrived = threading.Condition()

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        now = time.monotonic()
        stamp = self.headers.get("X-PACS-Timestamp", "")
        expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(expected, self.headers.get("X-PACS-Signature", ""))
        self.send_response(200 if ok else 401)
        self.end_headers()
        if ok:
            with Hook.arrived:
                Hook.arrivals.append((now, json.loads(body)))
                Hook.arrived.notify_all()

    def log_message(self, *args: Any) -> None:
        return None


def call(method: str, url: str, body: Any = None, token: str = "") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def store_study(port: int, seed: int, slices: int, size: int) -> tuple[str, float]:
    """C-STORE one CT series; its study UID and when the last response came."""
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    study = ""
    for ds in generate_ct_series(slices, seed=seed, rows=size, columns=size):
        assert assoc.send_c_store(ds).Status == 0
        study = str(ds.StudyInstanceUID)
    done = time.monotonic()
    assoc.release()
    return study, done


def wait_notification(study: str, timeout: float) -> tuple[float, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    with Hook.arrived:
        while True:
            found = [a for a in Hook.arrivals if a[1]["study_uid"] == study]
            if found:
                return found[0]
            if not Hook.arrived.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no notification for {study}")


def triage(base: str, note: dict[str, Any]) -> float:
    """Post a critical finding, poll the worklist until STAT; seconds taken."""
    body = {"study_uid": note["study_uid"], "model": {"name": "bench", "version": "1"},
            "findings": [{"code": {"system": "http://snomed.info/sct", "code": "27925004", "display": "Nodule"},
                          "label": "Nodule", "probability": 0.99, "critical": True}]}
    started = time.monotonic()
    status, _ = call("POST", note["results_url"], body, note["access_token"])
    assert status == 201, status
    while True:
        status, item = call("GET", f"{base}/api/reading-worklist/{note['study_uid']}")
        if status == 200 and item["priority"] == 1:
            return time.monotonic() - started
        time.sleep(0.01)  # polling interval


@contextlib.contextmanager
def scratch_schema(url: str) -> Iterator[str]:
    """A PostgreSQL URL gets a schema of its own for the run, dropped afterwards."""
    if not url.startswith("postgresql"):
        yield url
        return
    with postgres_schema(url) as scoped:
        yield scoped


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--size", type=int, default=256, help="rows and columns of each slice")
    parser.add_argument("--quiet", type=float, default=2.0, help="PACS_STABLE_SECONDS")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--results", default="bench/results/ai_latency.jsonl")
    args = parser.parse_args()
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp, scratch_schema(args.database_url) as database_url:
        env = {"PACS_RATE_LIMIT_PER_SECOND": "0", "PACS_DATA_DIR": str(Path(tmp) / "data"), "PACS_DATABASE_URL": database_url,
               "PACS_STABLE_SECONDS": str(args.quiet), "PACS_STABILITY_CHECK_INTERVAL": "0.1"}
        server = ProcessServer(env, Path(tmp)).start()
        base = f"http://127.0.0.1:{server.http_port}"
        try:
            status, _ = call("POST", f"{base}/api/ai/subscriptions", {
                "name": "bench", "filter": {"modalities": ["CT"]},
                "delivery": {"type": "webhook", "url": f"http://127.0.0.1:{hook.server_port}/", "secret": SECRET}})
            assert status == 201, status
            to_hook, to_stat = [], []
            for i in range(args.studies):
                study, stored = store_study(server.dimse_port, 100 + i, args.slices, args.size)
                arrived, note = wait_notification(study, args.quiet + 30)
                to_hook.append(arrived - stored)
                to_stat.append(triage(base, note))
        finally:
            server.terminate()
            hook.shutdown()
    result = {"studies": args.studies, "slices": args.slices, "quiet_seconds": args.quiet,
              "store_to_webhook": summary(to_hook), "findings_to_worklist": summary(to_stat)}
    for name in ("store_to_webhook", "findings_to_worklist"):
        s = result[name]
        print(f"{name:22s} p50 {s['p50']:.3f} s  p95 {s['p95']:.3f} s  max {s['max']:.3f} s")
    print(f"target: store_to_webhook p95 <= {args.quiet + 1:.1f} s, findings_to_worklist <= 1 s")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as out:
        out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
