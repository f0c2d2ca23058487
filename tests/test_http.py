"""/healthz, /metrics and the change feed, over HTTP against the running server."""

from __future__ import annotations

import aiohttp
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from pydicom.uid import ExplicitVRLittleEndian

from .factory import make_ct
from .servers import ThreadedServer


def _store(server: ThreadedServer, count: int) -> list[str]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dimse_port)
    sops = []
    for i in range(count):
        ds = make_ct(seed=i)
        assert assoc.send_c_store(ds).Status == 0
        sops.append(ds.SOPInstanceUID)
    assoc.release()
    return sops


async def test_healthz_ok(server: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok", "database": "ok", "storage": "ok"}


async def test_healthz_reports_broken_storage(server: ThreadedServer, tmp_path) -> None:
    from pacs.storage import FolderStore

    broken = tmp_path / "gone"
    broken.mkdir()
    store = FolderStore(broken)
    original = server.archive.store
    server.archive.store = store
    import shutil

    shutil.rmtree(broken)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.base_url}/healthz") as resp:
                body = await resp.json()
                assert resp.status == 503
                assert body["database"] == "ok"
                assert body["storage"].startswith("unavailable")
    finally:
        server.archive.store = original


async def test_metrics_count_stored_instances(server: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/metrics") as resp:
            before = _metric(await resp.text(), 'pacs_instances_stored_total{source="dimse"}')
        await _to_thread(_store, server, 3)
        async with http.get(f"{server.base_url}/metrics") as resp:
            text = await resp.text()
    assert _metric(text, 'pacs_instances_stored_total{source="dimse"}') == before + 3
    assert "pacs_ingest_seconds_bucket" in text
    assert "pacs_associations_total" in text


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def _to_thread(fn, *args):
    import asyncio

    return await asyncio.to_thread(fn, *args)


async def test_change_feed_pages(server: ThreadedServer) -> None:
    sops = await _to_thread(_store, server, 5)
    seen, since = [], 0
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{server.base_url}/api/changes", params={"since": since, "limit": 2}) as resp:
                assert resp.status == 200
                page = await resp.json()
            seen += page["changes"]
            since = page["last"]
            if page["done"]:
                break
    assert [c["sop_instance_uid"] for c in seen] == sops
    assert [c["id"] for c in seen] == sorted(c["id"] for c in seen)
    assert {c["type"] for c in seen} == {"InstanceStored"}


@pytest.mark.parametrize("query", ["since=-1", "since=abc", "limit=0", "limit=100000", "limit=1.5"])
async def test_change_feed_rejects_bad_parameters(server: ThreadedServer, query: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.base_url}/api/changes?{query}") as resp:
            assert resp.status == 400
            assert "must be" in await resp.text()
