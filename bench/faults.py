"""Faults, the long and invasive way (issue 8 point 4; docs/reliability.md).

Checks (``--checks``, default all):

* ``kill9``  ``pacs serve`` killed with SIGKILL ``--rounds`` times while 4 DIMSE and 2
  STOW-RS clients store; restarted on the same data each time. Every acknowledged
  instance present with the bytes sent, no index row without its object, no object
  without its row, the spool empty after each restart, then everything re-sent.
* ``s3``     ``pacs serve`` on S3 (moto) through a proxy, with the *default* boto3
  timeouts and retries: time to the 0xA700 answer when S3 resets connections and when
  it accepts them but never answers; STOW-RS 503 + Retry-After; recovery without restart.
* ``pg``     ``pacs serve`` on a private PostgreSQL 15 cluster (initdb in a temp folder,
  run as the ``postgres`` user: never the shared server) restarted twice under load
  (a fast restart, then ``--pg-down`` seconds down): only success/0xA700 and 200/503
  answers, every acknowledged instance present, recovery without restarting the PACS.
* ``outbox`` The real outbox sender against real HTTP endpoints (EMR channel, unordered;
  an AI webhook channel, ordered), on a simulated clock with the *default* back-off:
  one event every ``--event-every`` s for an hour while both endpoints answer 503, then
  they come back; every message delivered exactly once (the AI ones in order), none dead.

Prints one PASS/FAIL line per check with its numbers, and exits 1 on any FAIL.

    python bench/faults.py
    python bench/faults.py --checks kill9 --database-url postgresql://127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydicom import dcmread  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.ingest_servers import postgres_schema  # noqa: E402
from pacs.archive import Archive  # noqa: E402
from pacs.index.models import OutboxMessage  # noqa: E402
from pacs.settings import load_settings  # noqa: E402
from tests.factory import dataset_part, make_ct, to_bytes  # noqa: E402
from tests.servers import ProcessServer  # noqa: E402
from tests.pynetdicom_guard import install as guard_pynetdicom_associations  # noqa: E402
from tests.fault_tools import (  # noqa: E402
    FaultProxy, Load, PrivatePostgres, dimse_sender, http_poller, indexed, stored_bytes, stow, stow_sender, store_ae,
)
from tests.servers import wait_until as until  # noqa: E402

RESULTS: list[tuple[str, bool, str]] = []


def report(name: str, ok: bool, numbers: str) -> None:
    RESULTS.append((name, ok, numbers))
    print(f"{'PASS' if ok else 'FAIL'} {name}: {numbers}", flush=True)


def _env(data: Path, database_url: str, **extra: str) -> dict[str, str]:
    return {"PACS_DATA_DIR": str(data), "PACS_DATABASE_URL": database_url, "PACS_SHUTDOWN_TIMEOUT": "10",
            "PACS_LOG_LEVEL": "WARNING", **extra}


def _objects(data: Path) -> set[str]:
    root = data / "objects"
    return {str(p.relative_to(root)) for p in root.rglob("*.dcm") if ".tmp" not in p.relative_to(root).parts}


# -- kill -9 ------------------------------------------------------------------------------
def check_kill9(database_url: str, rounds: int, label: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="faults-kill9-"))
    data = work / "data"
    settings = load_settings(env={}, data_dir=data, database_url=database_url)
    total = Load()
    problems: list[str] = []
    spool_left = 0
    started = time.monotonic()
    for n in range(rounds):
        server = ProcessServer(_env(data, database_url, PACS_ORPHAN_GRACE_SECONDS="0"), work).start()
        if list((data / "objects" / ".tmp").glob("*.dcm")):
            problems.append(f"round {n}: spool not empty after restart")
        load = Load()
        threads = [threading.Thread(target=dimse_sender, args=(server.dimse_port, load, 10 * n + i), daemon=True)
                   for i in range(4)]
        threads += [threading.Thread(target=stow_sender, args=(f"http://127.0.0.1:{server.http_port}", load, 10 * n + 8 + i),
                                     daemon=True) for i in range(2)]
        target = 100 + 50 * n
        try:
            for t in threads:
                t.start()
            until(lambda: len(load.acked) >= target, timeout=120, what=f"{target} acks")
        finally:
            server.kill()  # also when the wait failed: no server left behind
        load.stop.set()
        for assoc in list(load.associations):
            assoc.abort()
        for t in threads:
            t.join(30)
        spool_left += len(list((data / "objects" / ".tmp").glob("*.dcm")))
        total.sent.update(load.sent)
        total.door.update(load.door)
        total.acked |= load.acked
    server = ProcessServer(_env(data, database_url, PACS_ORPHAN_GRACE_SECONDS="0"), work).start()
    archive = Archive(settings, migrate=False)
    rows = indexed(archive)
    lost = total.acked - set(rows)
    wrong = [s for s in total.acked
             if s in rows and dataset_part(stored_bytes(archive, rows[s].blob_key)) != dataset_part(total.sent[s])]
    broken = [r for r in rows.values() if hashlib.sha256(stored_bytes(archive, r.blob_key)).hexdigest() != r.sha256]
    strays = _objects(data) - {r.blob_key for r in rows.values()}
    spool_after = len(list((data / "objects" / ".tmp").glob("*.dcm")))
    # re-send everything by the door it came
    assoc = store_ae().associate("127.0.0.1", server.dimse_port)
    dimse = [d for s, d in total.sent.items() if total.door[s] == "dimse"]
    resend_bad = sum(assoc.send_c_store(dcmread(BytesIO(d))).Status != 0 for d in dimse)
    assoc.release()
    stowed = [d for s, d in total.sent.items() if total.door[s] == "stow"]
    for i in range(0, len(stowed), 50):
        if stow(f"http://127.0.0.1:{server.http_port}", stowed[i:i + 50])[0] != 200:
            resend_bad += 1
    after = set(indexed(archive))
    archive.close()
    server.terminate()
    ok = not (lost or wrong or broken or strays or spool_after or problems or resend_bad) and after == set(total.sent)
    report(f"kill9 [{label}]", ok,
           f"{rounds} kills, {len(total.sent)} sent, {len(total.acked)} acknowledged, {len(lost)} lost, "
           f"{len(wrong)} differing, {len(broken)} rows without a whole object, {len(strays)} objects without a row, "
           f"{spool_left} spool files left by the kills, {spool_after} after restart, {len(rows)} indexed, "
           f"re-send of all {len(total.sent)}: {resend_bad} failures, {len(after)} indexed after; "
           f"{time.monotonic() - started:.0f} s")


# -- S3 -------------------------------------------------------------------------------------
def check_s3(database_url: str) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket="faults")
    proxy = FaultProxy(host, port).start()
    work = Path(tempfile.mkdtemp(prefix="faults-s3-"))
    server = ProcessServer(_env(work / "data", database_url, PACS_STORAGE_URL="s3://faults/p",
                                PACS_S3_ENDPOINT_URL=proxy.url, PACS_DIMSE_TIMEOUT="600"), work).start()
    base = f"http://127.0.0.1:{server.http_port}"
    numbers, ok = [], True
    try:
        assoc = store_ae(600).associate("127.0.0.1", server.dimse_port)
        ok &= assoc.send_c_store(make_ct(seed=1)).Status == 0
        for mode in ("down", "hang"):
            proxy.set(mode=mode)
            t0 = time.monotonic()
            rsp = assoc.send_c_store(make_ct(seed=2))
            took = time.monotonic() - t0
            ok &= rsp.Status == 0xA700
            numbers.append(f"S3 {mode}: C-STORE 0x{rsp.Status:04X} after {took:.1f} s ({rsp.ErrorComment})")
            if mode == "down":
                status, headers, _ = stow(base, [to_bytes(make_ct(seed=3))])
                ok &= status == 503 and "Retry-After" in headers
                numbers.append(f"STOW-RS {status} Retry-After {headers.get('Retry-After')}")
            proxy.set(mode="up")
            rsp = assoc.send_c_store(make_ct(seed=2))
            ok &= rsp.Status == 0
            numbers.append(f"back up: 0x{rsp.Status:04X}")
        assoc.release()
    finally:
        server.terminate()
        proxy.stop()
        moto.stop()
    report("s3 outage (default timeouts)", ok, "; ".join(numbers))


# -- PostgreSQL restart -----------------------------------------------------------------
def check_pg(down_seconds: float) -> None:
    if not PrivatePostgres.available():
        report("pg restart", False, "needs root, runuser and /usr/lib/postgresql/15/bin/initdb")
        return
    pg = PrivatePostgres().init()
    try:
        pg.start()
        _check_pg_on(pg, down_seconds)
    finally:
        pg.remove()  # the private cluster goes whatever happened


def _check_pg_on(pg: PrivatePostgres, down_seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="faults-pg-"))
    server = ProcessServer(_env(work / "data", pg.url), work).start()
    base = f"http://127.0.0.1:{server.http_port}"
    load = Load()
    qido: dict[Any, int] = {}
    health: dict[Any, int] = {}

    threads = [threading.Thread(target=dimse_sender, args=(server.dimse_port, load, i, True, 60), daemon=True)
               for i in range(4)]
    threads += [threading.Thread(target=http_poller, args=(base + p, seen, load.stop, load.lock), daemon=True)
                for p, seen in (("/dicom-web/studies?limit=10", qido), ("/healthz", health))]
    timeline = []
    try:
        for t in threads:
            t.start()
        until(lambda: len(load.acked) >= 100, timeout=60, what="100 stores")
        for label, pause in (("fast restart", 0.0), (f"{down_seconds:.0f} s down", down_seconds)):
            t0 = time.monotonic()
            pg.stop()
            if pause:
                time.sleep(pause)  # the outage itself, measured, not a wait for a result
            pg.start()
            up_at, resumed = time.monotonic(), len(load.acked)
            until(lambda: len(load.acked) > resumed, timeout=120, what="a store to succeed again")
            now = time.monotonic()
            timeline.append(f"{label}: the first store acknowledged {now - up_at:.2f} s after PostgreSQL was "
                            f"back ({now - t0:.1f} s after the stop)")
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)
        server.terminate()
    settings = load_settings(env={}, data_dir=work / "data", database_url=pg.url)
    archive = Archive(settings, migrate=False)
    stored = set(indexed(archive))
    archive.close()
    lost = load.acked - stored
    clean = set(load.statuses) <= {"0x0000", "0xA700", "association refused"}
    http_clean = set(qido) <= {(200, False), (503, True)} and set(health) <= {(200, False), (503, True)}
    ok = clean and http_clean and not lost and qido.get((503, True), 0) > 0
    report("pg restart under load", ok,
           f"C-STORE answers {load.statuses}; QIDO {qido}; /healthz {health} (status, Retry-After); "
           f"{len(load.acked)} acknowledged, {len(lost)} lost, {len(stored)} indexed; " + "; ".join(timeline))


# -- the outbox through an hour down ------------------------------------------------------
class Clock:
    """Stands in for the ``time`` module of pacs.outbox and pacs.outbox_worker."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now


def check_outbox(database_url: str, every: float, down: float) -> None:
    from aiohttp import ClientSession, web

    import pacs.outbox as outbox_mod
    import pacs.outbox_worker as worker_mod
    from pacs import outbox
    from pacs.outbox_worker import OutboxSender

    work = Path(tempfile.mkdtemp(prefix="faults-outbox-"))
    settings = load_settings(env={}, data_dir=work / "data", database_url=database_url)  # default back-off
    archive = Archive(settings)
    clock = Clock(1_000_000.0)
    start = clock.now
    accepted: dict[str, list[tuple[str, float]]] = {"emr": [], "ai": []}
    refused = {"emr": 0, "ai": 0}

    async def run() -> dict[str, Any]:
        async def handle(request: web.Request) -> web.Response:
            which = request.match_info["which"]
            await request.read()
            if clock.now - start < down:
                refused[which] += 1
                return web.Response(status=503)
            accepted[which].append((request.headers["Idempotency-Key"], clock.now))
            return web.Response(status=200)

        app = web.Application()
        app.router.add_route("*", "/{which}/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        events = [start + i * every for i in range(int(down // every))]
        sender = OutboxSender(archive, ordered=("ai:",))
        claims = 0
        async with ClientSession() as session:
            while True:
                while events and events[0] <= clock.now:
                    at = events.pop(0)
                    n = round((at - start) / every)
                    with archive.db.write() as conn:
                        for channel, which in (("fhir", "emr"), ("ai:1", "ai")):
                            outbox.enqueue(conn, channel=channel, target_url=f"http://127.0.0.1:{port}/{which}/x",
                                           body=json.dumps({"event": n, "at": at}), content_type="application/json",
                                           idempotency_key=f"{which}:{n}", now=clock.now)
                claimed = await sender.send_due(session)
                claims += claimed
                if outbox.next_due(archive.db) is None and not events:
                    break
                if claimed:
                    continue  # more may be due at this instant
                # Nothing claimable now (an ordered channel's later messages wait behind its
                # head): on to the next scheduled attempt or event.
                with archive.db.read() as conn:
                    due = conn.execute(select(func.min(OutboxMessage.next_attempt_at)).where(
                        OutboxMessage.status == "pending", OutboxMessage.next_attempt_at > clock.now)).scalar()
                candidates = [t for t in (due, events[0] if events else None) if t is not None]
                clock.now = min(candidates)
        await runner.cleanup()
        return {"claims": claims}

    real = (outbox_mod.time, worker_mod.time)
    outbox_mod.time, worker_mod.time = clock, clock  # type: ignore[assignment]
    t0 = time.monotonic()
    try:
        result = asyncio.run(run())
    finally:
        outbox_mod.time, worker_mod.time = real
    messages = outbox.list_messages(archive.db, limit=100000)
    archive.close()
    n = int(down // every)
    dead = sum(m["status"] == "dead" for m in messages)
    keys = {w: [k for k, _ in accepted[w]] for w in accepted}
    once = all(len(keys[w]) == n and len(set(keys[w])) == n for w in keys)
    in_order = [int(k.split(":")[1]) for k in keys["ai"]] == sorted(int(k.split(":")[1]) for k in keys["ai"])
    last = max(t for w in accepted for _, t in accepted[w]) - start - down if any(accepted.values()) else -1
    ok = once and in_order and dead == 0
    report("outbox: EMR and AI endpoints down an hour", ok,
           f"{n} events per endpoint over {down:.0f} s down (default back-off {settings.outbox_retry_seconds} s, "
           f"{settings.outbox_max_attempts} attempts): {len(keys['emr'])} EMR + {len(keys['ai'])} AI delivered, "
           f"each once: {once}, AI in order: {in_order}, dead {dead}, most attempts of a message "
           f"{max(m['attempts'] for m in messages)}, 503s answered {refused}, {result['claims']} claims; "
           f"all delivered {last:.0f} s (simulated) after the endpoints came back; {time.monotonic() - t0:.0f} s real")


def main() -> int:
    guard_pynetdicom_associations()  # the clients' own race, not the server's (tests/pynetdicom_guard.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", default="kill9,s3,pg,outbox")
    parser.add_argument("--database-url", default="", help="PostgreSQL base URL for kill9/s3/outbox (a scratch "
                        "schema is made); default SQLite in a temp folder")
    parser.add_argument("--rounds", type=int, default=3, help="kills in the kill9 check")
    parser.add_argument("--pg-down", type=float, default=10.0, help="seconds PostgreSQL stays down in the 2nd restart")
    parser.add_argument("--event-every", type=float, default=5.0, help="simulated seconds between events (outbox)")
    parser.add_argument("--down", type=float, default=3600.0, help="simulated seconds the endpoints are down")
    args = parser.parse_args()
    checks = args.checks.split(",")
    with ExitStack() as stack:
        def url(tag: str) -> str:
            if args.database_url:
                return stack.enter_context(postgres_schema(args.database_url))
            return f"sqlite:///{tempfile.mkdtemp(prefix=f'faults-{tag}-')}/index.sqlite"

        label = "postgresql" if args.database_url else "sqlite"
        runs: dict[str, Callable[[], None]] = {
            "kill9": lambda: check_kill9(url("kill9"), args.rounds, label),
            "s3": lambda: check_s3(url("s3")),
            "pg": lambda: check_pg(args.pg_down),
            "outbox": lambda: check_outbox(url("outbox"), args.event_every, args.down),
        }
        for name in checks:
            try:
                runs[name]()
            except Exception as exc:  # a check that breaks is a FAIL with its reason
                report(name, False, f"{type(exc).__name__}: {exc}")
    print("\nSUMMARY")
    for name, ok, _ in RESULTS:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return 0 if RESULTS and all(ok for _, ok, _ in RESULTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
