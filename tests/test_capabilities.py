"""Retrieve Capabilities (PS3.18 8.9, Annex H; ``dicomweb/capabilities.py``) against the
running server: WADL by default, JSON on request, generated from the route table."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Iterator

import pytest
import requests
from aiohttp import web

from dicomweb import capabilities, routes
from pacs.settings import Settings

from .servers import ThreadedServer

NS = {"w": capabilities.WADL_NS}
Triple = tuple[str, str, str]  # (path, method, id)


def _serve(settings: Settings, **changes: Any) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(settings.replace(**changes)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def plain(server: ThreadedServer) -> ThreadedServer:
    return server


@pytest.fixture
def deleting(settings: Settings) -> Iterator[ThreadedServer]:
    yield from _serve(settings, allow_delete=True)


def options(server: ThreadedServer, path: str = "", **headers: str) -> requests.Response:
    return requests.options(f"{server.base_url}/dicom-web{path}", headers=headers, timeout=30)


def wadl_methods(text: bytes) -> tuple[str, set[Triple]]:
    """(resources base, every (full path, method, id)) of a WADL document."""
    root = ET.fromstring(text)
    assert root.tag == f"{{{capabilities.WADL_NS}}}application"
    [resources] = root.findall("w:resources", NS)
    found: set[Triple] = set()

    def walk(element: ET.Element, prefix: str) -> None:
        for resource in element.findall("w:resource", NS):
            path = f"{prefix}/{resource.get('path')}"
            for method in resource.findall("w:method", NS):
                found.add((path, method.get("name", ""), method.get("id", "")))
            walk(resource, path)

    walk(resources, "")
    return resources.get("base", ""), found


def json_methods(doc: dict[str, Any]) -> tuple[str, set[Triple]]:
    resources = doc["application"]["resources"]
    found: set[Triple] = set()

    def walk(nodes: list[dict[str, Any]], prefix: str) -> None:
        for node in nodes:
            path = f"{prefix}/{node['path']}"
            found.update((path, m["name"], m["id"]) for m in node["method"])
            walk(node["resource"], path)

    walk(resources["resource"], "")
    return resources["base"], found


def table(allow_delete: bool) -> set[tuple[str, str]]:
    return {(p, m) for m, p, _ in routes.route_table()
            if m != "OPTIONS" and (m != "DELETE" or allow_delete)}


def test_wadl_by_default_lists_every_route(plain: ThreadedServer) -> None:
    resp = options(plain)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/vnd.sun.wadl+xml"
    assert resp.content.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    base, found = wadl_methods(resp.content)
    assert base == f"{plain.base_url}/dicom-web/"
    assert {(p, m) for p, m, _ in found} == table(False)
    assert not any(m == "DELETE" for _, m, _ in found)  # allow_delete is off
    for expected in [("/studies", "GET", "SearchForStudies"),
                     ("/series", "GET", "SearchForSeries"),
                     ("/instances", "GET", "SearchForInstances"),
                     ("/studies/{study}/series", "GET", "SearchForStudySeries"),
                     ("/studies/{study}/instances", "GET", "SearchForStudyInstances"),
                     ("/studies/{study}/series/{series}/instances", "GET", "SearchForStudySeriesInstances"),
                     ("/studies/{study}", "GET", "RetrieveStudy"),
                     ("/studies/{study}/series/{series}", "GET", "RetrieveSeries"),
                     ("/studies/{study}/series/{series}/instances/{sop}", "GET", "RetrieveInstance"),
                     ("/studies/{study}/metadata", "GET", "RetrieveStudyMetadata"),
                     ("/studies/{study}/series/{series}/metadata", "GET", "RetrieveSeriesMetadata"),
                     ("/studies/{study}/series/{series}/instances/{sop}/metadata", "GET",
                      "RetrieveInstanceMetadata")]:
        assert expected in found
    assert all(i for _, _, i in found) and len({(p, i) for p, _, i in found}) == len(found)
    if ("/wado", "GET") in table(False):  # WADO-URI (PS3.18 9) under the root
        assert ("/wado", "GET", "RetrieveWADOURI") in found
    if ("/studies", "POST") in table(False):  # STOW-RS
        assert {("/studies", "POST", "StoreInstances"),
                ("/studies/{study}", "POST", "StoreStudyInstances")} <= found


def test_wadl_details_of_a_search_and_a_retrieve(plain: ThreadedServer) -> None:
    root = ET.fromstring(options(plain, Accept="application/vnd.sun.wadl+xml").content)
    [studies] = root.findall("w:resources/w:resource[@path='studies']", NS)
    [search] = studies.findall("w:method[@id='SearchForStudies']", NS)
    params = {p.get("name"): p.get("style") for p in search.findall("w:request/w:param", NS)}
    for name in ("includefield", "fuzzymatching", "limit", "offset", "PatientName", "StudyDate",
                 "ModalitiesInStudy"):
        assert params[name] == "query"
    assert "Modality" not in params  # a series attribute: not matchable in a study search
    assert params["Accept"] == "header"
    assert [r.get("mediaType") for r in search.findall("w:response/w:representation", NS)] == [
        "application/dicom+json"]
    [study] = studies.findall("w:resource[@path='{study}']", NS)
    [template] = study.findall("w:param", NS)
    assert (template.get("name"), template.get("style")) == ("study", "template")
    [retrieve] = study.findall("w:method[@id='RetrieveStudy']", NS)
    assert [r.get("mediaType") for r in retrieve.findall("w:response/w:representation", NS)] == [
        'multipart/related; type="application/dicom"']


def test_json_on_request_describes_the_same_tree(plain: ThreadedServer) -> None:
    wadl_base, wadl = wadl_methods(options(plain).content)
    for accept in ("application/json", "application/dicom+json, */*;q=0.1",
                   "text/html;q=0.2, application/json"):
        resp = options(plain, Accept=accept)
        assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
        assert json_methods(resp.json()) == (wadl_base, wadl)


def test_unacceptable_media_type_is_406(plain: ThreadedServer) -> None:
    resp = options(plain, Accept="text/html")
    assert resp.status_code == 406 and "application/vnd.sun.wadl+xml" in resp.json()["error"]


def test_trailing_slash_and_preflight_at_the_base(plain: ThreadedServer) -> None:
    assert wadl_methods(options(plain, "/").content) == wadl_methods(options(plain).content)
    resp = options(plain, Origin="http://viewer.example", **{"Access-Control-Request-Method": "GET"})
    assert resp.status_code == 204 and resp.content == b""  # a browser preflight, not the WADL
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    get = requests.get(f"{plain.base_url}/dicom-web", timeout=30)  # the transaction is OPTIONS only
    assert get.status_code == 405 and get.headers["Allow"] == "OPTIONS"


def test_delete_appears_when_enabled(deleting: ThreadedServer) -> None:
    _, found = wadl_methods(options(deleting).content)
    assert {(p, m) for p, m, _ in found} == table(True)
    deletes = {(p, i) for p, m, i in found if m == "DELETE"}
    assert deletes == {("/studies/{study}", "DeleteStudy"), ("/studies/{study}/series/{series}", "DeleteSeries"),
                       ("/studies/{study}/series/{series}/instances/{sop}", "DeleteInstance")}


async def _stub(request: web.Request) -> web.Response:
    return web.Response(status=501)


def test_routes_added_later_are_described(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated from the route table: another module's routes need no edit here."""
    original = routes.route_table
    extra = [("POST", "/studies", _stub), ("POST", "/studies/{study}", _stub),
             ("GET", "/studies/{study}/series/{series}/pixeldata", _stub),
             ("GET", "/studies/{study}/bulkdata", _stub), ("GET", "/studies/{study}/annotations", _stub)]
    held = {(m, p) for m, p, _ in original()}
    extra = [route for route in extra if route[:2] not in held]  # the real ones once they land
    monkeypatch.setattr(routes, "route_table", lambda: [*original(), *extra])
    _stub.wadl_media_types = ("image/gif",)  # type: ignore[attr-defined]
    try:
        for srv in _serve(settings):
            _, found = wadl_methods(options(srv).content)
            root = ET.fromstring(options(srv).content)
    finally:
        del _stub.wadl_media_types  # type: ignore[attr-defined]
    assert {("/studies", "POST", "StoreInstances"), ("/studies/{study}", "POST", "StoreStudyInstances"),
            ("/studies/{study}/series/{series}/pixeldata", "GET", "RetrieveSeriesPixelData"),
            ("/studies/{study}/bulkdata", "GET", "RetrieveStudyBulkdata")} <= found
    [store] = root.findall(".//w:method[@id='StoreInstances']", NS)
    assert [r.get("mediaType") for r in store.findall("w:request/w:representation", NS)] == [
        'multipart/related; type="application/dicom"']
    [own] = root.findall(".//w:method[@id='RetrieveAnnotations']", NS)  # the handler's own media types
    assert [r.get("mediaType") for r in own.findall("w:response/w:representation", NS)] == ["image/gif"]


def test_public_base_url_is_the_base(settings: Settings) -> None:
    for srv in _serve(settings, public_base_url="https://pacs.example.org/dicom-web/"):
        base, _ = wadl_methods(options(srv).content)
        assert base == "https://pacs.example.org/dicom-web/"
        assert options(srv, Accept="application/json").json()["application"]["resources"]["base"] == base
