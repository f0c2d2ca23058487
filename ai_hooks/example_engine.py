"""A reference AI engine: ``python -m ai_hooks.example_engine --port 8765 --secret S``.

It demonstrates the whole contract of docs/ai.md and claims nothing clinical:

1. receives the webhook (``POST /notify``), verifies ``X-PACS-Signature`` (HMAC-SHA256 of
   ``<X-PACS-Timestamp>.<body>`` with the subscription's secret) and the timestamp's
   freshness (401 otherwise), drops repeats by ``Idempotency-Key`` and answers 202 at
   once (the work happens afterwards, so the PACS never waits on it);
2. fetches the study by WADO-RS (PS3.18 10.4.1.1.1, ``multipart/related;
   type="application/dicom"``) with the notification's study-scoped token;
3. for each CT slice computes, with numpy, the body outline (pixels above -500 HU), its
   area in mm² (Pixel Spacing), its bounding box and the HU mean, standard deviation,
   minimum and maximum inside it;
4. posts them back to ``results_url`` as findings (one per slice, with the bounding box
   as region), which the PACS stores as a TID 1500 SR in the study.

Only aiohttp, pydicom and numpy are used; a real engine replaces :func:`measure`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import io
import json
import logging
import time
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from pydicom import dcmread
from pydicom.dataset import Dataset

log = logging.getLogger("example_engine")
MODEL = {"name": "pacs-example-body-outline", "version": "1.0"}
BODY_HU = -500.0
MAX_SKEW = 300  # seconds a notification's timestamp may differ from our clock
SCT, DCM = "http://snomed.info/sct", "http://dicom.nema.org/resources/ontology/DCM"
ENTIRE_BODY = {"system": SCT, "code": "38266002", "display": "Entire body"}
AREA = {"system": SCT, "code": "42798000", "display": "Area"}
ATTENUATION = {"system": DCM, "code": "112031", "display": "Attenuation Coefficient"}
DERIVATIONS = {"mean": {"system": SCT, "code": "373098007", "display": "Mean"},
               "std": {"system": SCT, "code": "386136009", "display": "Standard deviation"},
               "min": {"system": SCT, "code": "255605001", "display": "Minimum"},
               "max": {"system": SCT, "code": "56851009", "display": "Maximum"}}
HU = "[hnsf'U]"
DICOM_STUDY = 'multipart/related; type="application/dicom"'


def verify(secret: str, timestamp: str, body: bytes, signature: str, now: float | None = None) -> bool:
    """The signature recipe of docs/ai.md: constant-time compare, fresh timestamp."""
    if not timestamp.isdigit() or abs((time.time() if now is None else now) - int(timestamp)) > MAX_SKEW:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", signature)


def measure(ds: Dataset) -> dict[str, Any] | None:
    """Body-outline area and HU statistics of one CT slice (None for non-CT objects)."""
    if ds.get("Modality") != "CT" or "PixelData" not in ds:
        return None
    hu = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    mask = hu > BODY_HU
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    spacing = [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])]
    inside = hu[mask]
    return {"sop_instance_uid": str(ds.SOPInstanceUID), "instance_number": int(ds.get("InstanceNumber") or 0),
            "area_mm2": float(mask.sum()) * spacing[0] * spacing[1],
            "box": [[int(cols.min()), int(rows.min())], [int(cols.max()), int(rows.min())],
                    [int(cols.max()), int(rows.max())], [int(cols.min()), int(rows.max())]],
            "mean": float(inside.mean()), "std": float(inside.std()),
            "min": float(inside.min()), "max": float(inside.max())}


def finding(m: dict[str, Any]) -> dict[str, Any]:
    """One slice's measurements as a finding of the results API."""
    stats = [{"code": ATTENUATION, "value": round(m[k], 3), "unit": HU, "derivation": DERIVATIONS[k]}
             for k in ("mean", "std", "min", "max")]
    return {"code": ENTIRE_BODY, "label": f"Body outline, slice {m['instance_number']}",
            "location": {"sop_instance_uid": m["sop_instance_uid"], "region": m["box"]},
            "measurements": [{"code": AREA, "value": round(m["area_mm2"], 3), "unit": "mm2"}, *stats]}


async def fetch_study(session: aiohttp.ClientSession, note: dict[str, Any]) -> list[Dataset]:
    """WADO-RS retrieve of the whole study with the study-scoped token."""
    headers = {"Authorization": f"Bearer {note['access_token']}", "Accept": DICOM_STUDY}
    async with session.get(note["dicomweb"]["study"], headers=headers) as resp:
        resp.raise_for_status()
        reader = aiohttp.MultipartReader.from_response(resp)
        datasets = []
        while (part := await reader.next()) is not None:
            datasets.append(dcmread(io.BytesIO(await part.read()), force=True))  # type: ignore[union-attr]
    return datasets


async def process(session: aiohttp.ClientSession, note: dict[str, Any]) -> None:
    """Fetch, measure, post back (see module doc)."""
    datasets = await fetch_study(session, note)
    measured = [m for m in (measure(ds) for ds in datasets) if m is not None]
    if not measured:
        log.info("study %s: no CT slices", note["study_uid"])
        return
    measured.sort(key=lambda m: m["instance_number"])
    body = {"study_uid": note["study_uid"], "model": MODEL, "event_id": note["event_id"],
            "findings": [finding(m) for m in measured]}
    headers = {"Authorization": f"Bearer {note['access_token']}"}
    async with session.post(note["results_url"], json=body, headers=headers) as resp:
        answer = await resp.text()
        if resp.status != 201:
            raise RuntimeError(f"results refused: HTTP {resp.status} {answer[:200]}")
    log.info("study %s: %d slices measured and posted", note["study_uid"], len(measured))


class Engine:
    """The webhook receiver and its background work."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.seen: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None

    async def notify(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(self.secret, request.headers.get("X-PACS-Timestamp", ""), body,
                      request.headers.get("X-PACS-Signature", "")):
            return web.json_response({"error": "bad signature or timestamp"}, status=401)
        key = request.headers.get("Idempotency-Key", "")
        if key in self.seen:
            return web.json_response({"status": "duplicate"}, status=200)
        self.seen.add(key)
        note = json.loads(body)
        # the token minted at sending is fresher than the body's (which dates from the event)
        note["access_token"] = request.headers.get("X-PACS-Access-Token") or note["access_token"]
        task = asyncio.create_task(self._run(note))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response({"status": "accepted"}, status=202)

    async def _run(self, note: dict[str, Any]) -> None:
        assert self.session is not None
        try:
            await process(self.session, note)
        except Exception:
            log.exception("study %s failed", note.get("study_uid"))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/notify", self.notify)
        app.router.add_get("/healthz", self.healthz)

        async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
            yield
            await self.session.close()

        app.cleanup_ctx.append(session_ctx)
        return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--secret", required=True, help="the subscription's webhook secret")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"example engine listening on http://{args.host}:{args.port}/notify", flush=True)
    web.run_app(Engine(args.secret).app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
