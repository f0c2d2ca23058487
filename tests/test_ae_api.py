"""REST /api/aes against the running server: CRUD, 400/404/409, effect on the AE policy."""

from __future__ import annotations

import aiohttp
import pytest

from pacs import aes

from .servers import ThreadedServer

ALL = {"echo": True, "store": True, "find": True, "move": True, "get": True, "commitment": True,
       "mwl": True, "mpps": True}


async def test_crud(server: ThreadedServer) -> None:
    base = f"{server.base_url}/api/aes"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as resp:
            assert resp.status == 200
            assert await resp.json() == []
        body = {"ae_title": "CT1", "host": "10.0.0.5", "port": 104, "description": "CT room",
                "allow": {"store": False}}
        async with http.post(base, json=body) as resp:
            assert resp.status == 201
            assert resp.headers["Location"] == "/api/aes/CT1"
            created = await resp.json()
        assert created == {"ae_title": "CT1", "host": "10.0.0.5", "port": 104, "description": "CT room",
                           "allow": {**ALL, "store": False}}
        async with http.get(f"{base}/CT1") as resp:
            assert resp.status == 200
            assert await resp.json() == created
        async with http.post(base, json={"ae_title": "WS1", "host": "ws.local", "port": 11112}) as resp:
            assert resp.status == 201
        async with http.get(base) as resp:
            assert [e["ae_title"] for e in await resp.json()] == ["CT1", "WS1"]

        put = {"host": "10.0.0.6", "port": 4242, "allow": {"find": False, "move": False}}
        async with http.put(f"{base}/CT1", json=put) as resp:
            assert resp.status == 200
            assert await resp.json() == {"ae_title": "CT1", "host": "10.0.0.6", "port": 4242, "description": "",
                                         "allow": {**ALL, "find": False, "move": False}}
        entry = aes.get_ae(server.archive.db, "CT1")
        assert entry is not None and (entry.host, entry.port, entry.denied) == ("10.0.0.6", 4242, {"find", "move"})
        # The DIMSE policy sees the change at once.
        assert server.archive.policy.is_allowed("CT1", "10.0.0.6", "store")
        assert not server.archive.policy.is_allowed("CT1", "10.0.0.6", "find")

        async with http.delete(f"{base}/CT1") as resp:
            assert resp.status == 204
        async with http.get(f"{base}/CT1") as resp:
            assert resp.status == 404
            assert "not registered" in (await resp.json())["error"]
    assert aes.get_ae(server.archive.db, "CT1") is None


async def test_duplicate_is_409(server: ThreadedServer) -> None:
    base = f"{server.base_url}/api/aes"
    body = {"ae_title": "CT1", "host": "10.0.0.5", "port": 104}
    async with aiohttp.ClientSession() as http:
        async with http.post(base, json=body) as resp:
            assert resp.status == 201
        async with http.post(base, json={**body, "host": "10.0.0.9"}) as resp:
            assert resp.status == 409
            assert "already registered" in (await resp.json())["error"]
    entry = aes.get_ae(server.archive.db, "CT1")
    assert entry is not None and entry.host == "10.0.0.5"


async def test_unknown_ae_is_404(server: ThreadedServer) -> None:
    base = f"{server.base_url}/api/aes"
    async with aiohttp.ClientSession() as http:
        for method, kwargs in (("GET", {}), ("DELETE", {}),
                               ("PUT", {"json": {"host": "h", "port": 104}})):
            async with http.request(method, f"{base}/NOBODY", **kwargs) as resp:
                assert resp.status == 404, method
                assert "NOBODY is not registered" in (await resp.json())["error"]


@pytest.mark.parametrize(("body", "reason"), [
    ({"host": "h", "port": 104}, "ae_title is required"),
    ({"ae_title": "", "host": "h", "port": 104}, "AE title"),
    ({"ae_title": "X" * 17, "host": "h", "port": 104}, "AE title"),
    ({"ae_title": "A\\B", "host": "h", "port": 104}, "AE title"),
    ({"ae_title": "CT1", "port": 104}, "host is required"),
    ({"ae_title": "CT1", "host": "a b", "port": 104}, "host must be"),
    ({"ae_title": "CT1", "host": "h"}, "port is required"),
    ({"ae_title": "CT1", "host": "h", "port": "104"}, "port is required"),
    ({"ae_title": "CT1", "host": "h", "port": True}, "port is required"),
    ({"ae_title": "CT1", "host": "h", "port": 70000}, "port must be between"),
    ({"ae_title": "CT1", "host": "h", "port": 104, "allow": {"delete": False}}, "unknown operation"),
    ({"ae_title": "CT1", "host": "h", "port": 104, "allow": {"store": "no"}}, "allow.store must be"),
    ({"ae_title": "CT1", "host": "h", "port": 104, "allow": ["store"]}, "allow must be an object"),
    ({"ae_title": "CT1", "host": "h", "port": 104, "colour": "red"}, "unknown field(s): colour"),
    ([1, 2], "JSON object"),
])
async def test_bad_input_is_400(server: ThreadedServer, body: object, reason: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/api/aes", json=body) as resp:
            assert resp.status == 400
            assert reason in (await resp.json())["error"]
    assert aes.list_aes(server.archive.db) == []


async def test_malformed_json_and_put_mismatch_are_400(server: ThreadedServer) -> None:
    base = f"{server.base_url}/api/aes"
    async with aiohttp.ClientSession() as http:
        async with http.post(base, data=b"{not json", headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400
            assert "JSON object" in (await resp.json())["error"]
        async with http.post(base, json={"ae_title": "CT1", "host": "h", "port": 104}) as resp:
            assert resp.status == 201
        async with http.put(f"{base}/CT1", json={"ae_title": "CT2", "host": "h", "port": 104}) as resp:
            assert resp.status == 400
            assert "differs" in (await resp.json())["error"]
        async with http.put(f"{base}/CT1", json={"host": "h", "port": 0}) as resp:
            assert resp.status == 400
    entry = aes.get_ae(server.archive.db, "CT1")
    assert entry is not None and entry.port == 104
