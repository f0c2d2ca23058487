"""WADO-RS ``/frames/1`` latency from the folder store and from S3 (see bench/README.md).

Fills a fresh archive with one CT series of ``--instances`` 512x512 slices twice: once
with the folder store, once with S3 behind moto's HTTP server
(``moto.server.ThreadedMotoServer``, in this process). For each, starts ``pacs serve`` as
a separate process and times ``GET .../instances/{i}/frames/1`` over one kept-alive
HTTP/1.1 connection, cycling over the series' instances, with OHIF's Accept header
(``multipart/related; type=application/octet-stream; transfer-syntax=*``) and with the
default (uncompressed) one. Each frame is one index lookup plus one ranged read of the
stored object (``pacs.frames``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dicomweb import Client, fill_series, timed  # noqa: E402
from pacs.archive import Archive  # noqa: E402
from pacs.settings import load_settings  # noqa: E402
from tests.servers import ProcessServer  # noqa: E402

OHIF = "multipart/related; type=application/octet-stream; transfer-syntax=*"
DEFAULT = 'multipart/related; type="application/octet-stream"'
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def run_store(name: str, tmp: Path, args: argparse.Namespace, extra_env: dict[str, str]) -> dict[str, Any]:
    """Fill an archive with the given store settings, serve it, time frames/1."""
    data = tmp / name
    storage = {"storage_url": extra_env.get("PACS_STORAGE_URL", ""),
               "s3_endpoint_url": extra_env.get("PACS_S3_ENDPOINT_URL", "")}
    settings = load_settings(env={}, data_dir=data, database_url=args.database_url, **storage)
    archive = Archive(settings)
    study, series, sops = fill_series(archive, args.instances, args.seed)
    archive.close()
    env = {"PACS_RATE_LIMIT_PER_SECOND": "0", "PACS_DATA_DIR": str(data), "PACS_DATABASE_URL": args.database_url, **extra_env}
    server = ProcessServer(env, tmp).start()
    try:
        client = Client(server.http_port)
        base = f"/dicom-web/studies/{study}/series/{series}/instances"
        results = {}
        for label, accept in (("OHIF transfer-syntax=*", OHIF), ("default (native)", DEFAULT)):
            paths = iter([f"{base}/{sop}/frames/1" for sop in sops] * (args.repeat // len(sops) + 2))
            results[label] = timed(lambda: client.get(next(paths), accept), args.repeat)
    finally:
        server.terminate()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=50, help="CT slices (512x512) in the series")
    parser.add_argument("--repeat", type=int, default=300, help="timed requests per case")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp folder")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "frames.jsonl"))
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer
    import boto3

    os.environ.update(AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = {
                "folder": run_store("folder", Path(tmp), args, {}),
                "s3 (moto server)": run_store("s3", Path(tmp), args, {
                    "PACS_STORAGE_URL": "s3://bench/pacs", "PACS_S3_ENDPOINT_URL": endpoint, **AWS_ENV}),
            }
    finally:
        moto.stop()
    print(f"{'store':18s} {'Accept':24s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}")
    for store, cases in results.items():
        for label, r in cases.items():
            print(f"{store:18s} {label:24s} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['max_ms']:8.2f}")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as out:
        out.write(json.dumps({"instances": args.instances, "database": "postgresql" if args.database_url else "sqlite",
                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "results": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
