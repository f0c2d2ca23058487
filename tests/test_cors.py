"""CORS on /dicom-web (``dicomweb/cors.py``) against the running server, with aiohttp's
client: allowed and disallowed origins, preflights answering the methods each path
serves (from the route table), the ``cors_allowed_origins`` and ``allow_delete`` settings."""

from __future__ import annotations

from typing import Any, Iterator

import aiohttp
import pytest

from dicomweb import routes
from pacs.settings import Settings, load_settings

from .factory import make_ct, to_bytes
from .servers import ThreadedServer

VIEWER = "http://viewer.example"
OTHER = "https://other.example:8443"
EVIL = "http://evil.example"


def _start(settings: Settings, **changes: Any) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(settings.replace(**changes)).start()
    srv.archive.ingest_bytes(to_bytes(make_ct(patient_id="CORS1")), source="test")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def listed(settings: Settings) -> Iterator[ThreadedServer]:
    yield from _start(settings, cors_allowed_origins=(VIEWER, OTHER))


@pytest.fixture
def anyone(settings: Settings) -> Iterator[ThreadedServer]:
    yield from _start(settings, allow_delete=True)


@pytest.fixture
def limited(settings: Settings) -> Iterator[ThreadedServer]:
    """One request, then 429 for the next 100 s."""
    yield from _start(settings, cors_allowed_origins=(VIEWER,), rate_limit_per_second=0.01, rate_limit_burst=1)


def expected_methods(path: str, allow_delete: bool) -> str:
    """What a preflight of ``path`` must list: its routes' methods (HEAD with GET),
    DELETE only when enabled, OPTIONS; in the order GET, HEAD, POST, DELETE, OPTIONS."""
    methods = {m for m, p, _ in routes.route_table() if p == path}
    if not allow_delete:
        methods.discard("DELETE")
    methods |= {"HEAD", "OPTIONS"} if "GET" in methods else {"OPTIONS"}
    return ", ".join(m for m in ("GET", "HEAD", "POST", "DELETE", "OPTIONS") if m in methods)


async def test_allowed_origin_is_echoed_with_vary(listed: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as session:
        for origin in (VIEWER, OTHER):
            async with session.get(f"{listed.base_url}/dicom-web/studies", params={"limit": "0"},
                                   headers={"Origin": origin}) as resp:
                assert resp.status == 200 and await resp.json() == []
                assert resp.headers["Access-Control-Allow-Origin"] == origin
                assert "Origin" in resp.headers["Vary"]
                exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
                assert {"Warning", "ETag", "Content-Type", "Content-Length", "Content-Range",
                        "Accept-Ranges", "Retry-After"} <= exposed
                assert resp.headers["Warning"].startswith("299 ")  # limit=0 cut the one match
        async with session.get(f"{listed.base_url}/dicom-web/studies", params={"Nonsense": "1"},
                               headers={"Origin": VIEWER}) as resp:  # errors too
            assert resp.status == 400 and resp.headers["Access-Control-Allow-Origin"] == VIEWER


async def test_disallowed_origin_gets_no_cors_headers(listed: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as session:
        for headers in ({"Origin": EVIL}, {"Origin": VIEWER + ".evil.example"}, {}):
            async with session.get(f"{listed.base_url}/dicom-web/studies", headers=headers) as resp:
                assert resp.status == 200 and len(await resp.json()) == 1  # answered; the browser hides it
                assert "Access-Control-Allow-Origin" not in resp.headers
                assert "Access-Control-Expose-Headers" not in resp.headers
                assert resp.headers["Vary"] == "Origin"
        async with session.options(f"{listed.base_url}/dicom-web/studies", headers={
                "Origin": EVIL, "Access-Control-Request-Method": "POST"}) as resp:
            assert resp.status == 204
            assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_preflight_of_post_studies(listed: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.options(f"{listed.base_url}/dicom-web/studies", headers={
                "Origin": VIEWER, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization"}) as resp:
            assert resp.status == 204 and await resp.read() == b""
            assert resp.headers["Access-Control-Allow-Origin"] == VIEWER
            assert resp.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, OPTIONS"
            assert resp.headers["Access-Control-Allow-Methods"] == expected_methods("/studies", False)
            assert resp.headers["Access-Control-Allow-Headers"] == "content-type, authorization"
            assert resp.headers["Access-Control-Max-Age"] == "86400"
            assert resp.headers["Allow"] == "GET, HEAD, POST, OPTIONS"


async def test_preflight_methods_follow_the_route_table(anyone: ThreadedServer) -> None:
    base = f"{anyone.base_url}/dicom-web"
    cases = {  # path: (route, whether it is deletable)
        "/studies/1.2.3": ("/studies/{study}", True),
        "/studies/1.2.3/metadata": ("/studies/{study}/metadata", False),
        "/studies/1.2.3/series/1.2.4/instances/1.2.5": ("/studies/{study}/series/{series}/instances/{sop}", True),
        "/series": ("/series", False),
    }
    async with aiohttp.ClientSession() as session:
        for path, (template, deletable) in cases.items():
            async with session.options(base + path, headers={
                    "Origin": EVIL, "Access-Control-Request-Method": "GET"}) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "*"  # default: any origin
                assert "Vary" not in resp.headers
                assert resp.headers["Access-Control-Allow-Methods"] == expected_methods(template, True)
                assert ("DELETE" in resp.headers["Access-Control-Allow-Methods"]) == deletable
                assert resp.headers["Access-Control-Allow-Headers"] == (
                    "Accept, Authorization, Content-Type, If-None-Match, Range")


async def test_plain_options_is_not_a_preflight(anyone: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.options(f"{anyone.base_url}/dicom-web/studies/1.2.3/series") as resp:
            assert resp.status == 204
            assert resp.headers["Allow"] == "GET, HEAD, OPTIONS"
            assert "Access-Control-Allow-Methods" not in resp.headers
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        async with session.get(f"{anyone.base_url}/healthz", headers={"Origin": VIEWER}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers  # only /dicom-web


async def test_method_not_allowed_names_the_allowed_methods(anyone: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{anyone.base_url}/dicom-web/studies/1.2.3/metadata", data=b"x") as resp:
            assert resp.status == 405
            assert set(resp.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "HEAD"}
            assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_retry_after_of_a_429_is_readable_by_the_browser(limited: ThreadedServer) -> None:
    """A rate-limited answer carries the CORS headers, and ``Retry-After`` is exposed."""
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(2):
            async with session.get(f"{limited.base_url}/dicom-web/studies", headers={"Origin": VIEWER}) as resp:
                statuses.append(resp.status)
        assert statuses == [200, 429]
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.headers["Access-Control-Allow-Origin"] == VIEWER
        exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert "Retry-After" in exposed


def test_setting_from_environment_and_file(tmp_path: Any) -> None:
    env = {"PACS_CORS_ALLOWED_ORIGINS": f" {VIEWER} ,{OTHER},"}
    assert load_settings(env=env).cors_allowed_origins == (VIEWER, OTHER)
    assert load_settings(env={}).cors_allowed_origins == ("*",)
    config = tmp_path / "pacs.toml"
    config.write_text(f'[pacs]\ncors_allowed_origins = ["{VIEWER}"]\n')
    assert load_settings(config, env={}).cors_allowed_origins == (VIEWER,)
