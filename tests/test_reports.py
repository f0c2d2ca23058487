"""Reports end to end (worklist/reports.py, sr.py, emr.py) against a real server and a
local FHIR receiver that validates every resource with the FHIR R4B models and fails on
purpose: a signed report becomes a Basic Text SR in the study (retrievable by WADO-RS)
and a DiagnosticReport in the EMR; an amendment a new version of both; the stable study
an ImagingStudy; nothing is lost while the EMR fails."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any, Iterator

import aiohttp
import pytest
from aiohttp import web
from dicomweb_client.api import DICOMwebClient
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy

from pacs.settings import Settings

from .factory import make_ct, short_uid, to_bytes
from .servers import ThreadedServer

MODELS = {"DiagnosticReport": DiagnosticReport, "ImagingStudy": ImagingStudy}


class FhirReceiver:
    """PUT /fhir/{type}/{id}: validates the body with the R4B model of its type; answers
    503 to the first ``failures`` requests, then 201 (new id) or 200 (new version)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.resources: list[tuple[str, str, Any]] = []
        self.invalid: list[str] = []
        self.refused = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.failures > 0:
            self.failures -= 1
            self.refused += 1
            return web.Response(status=503)
        kind, rid = request.match_info["type"], request.match_info["id"]
        try:
            resource = MODELS[kind].model_validate_json(body)
        except Exception as exc:  # a resource the models reject fails the test below
            self.invalid.append(f"{kind}: {exc}")
            return web.Response(status=422)
        assert resource.id == rid and request.headers["Content-Type"] == "application/fhir+json"
        new = all(r[1] != rid for r in self.resources)
        self.resources.append((kind, rid, resource))
        return web.Response(status=201 if new else 200)

    def of(self, kind: str) -> list[Any]:
        return [r for k, _, r in self.resources if k == kind]


@pytest.fixture
def receiver_app() -> Iterator[tuple[FhirReceiver, str]]:
    receiver = FhirReceiver(failures=2)
    app = web.Application()
    app.router.add_put("/fhir/{type}/{id}", receiver.handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    import threading

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield receiver, f"http://127.0.0.1:{port}/fhir"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def emr_server(settings: Settings, receiver_app) -> Iterator[tuple[ThreadedServer, FhirReceiver]]:  # type: ignore[no-untyped-def]
    receiver, url = receiver_app
    fast = replace(settings, emr_fhir_url=url, outbox_retry_seconds=0.01, outbox_poll_seconds=0.02)
    server = ThreadedServer(fast).start()
    yield server, receiver
    server.stop()


def _wait(predicate, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)  # polling interval


def _content_texts(ds: Any) -> dict[str, str]:
    """Section name → first TEXT value under it, from an SR's content tree."""
    found = {}
    for section in ds.ContentSequence:
        if section.ValueType == "CONTAINER":
            for item in section.ContentSequence:
                if item.ValueType == "TEXT":
                    found.setdefault(section.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue)
    return found


async def _call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as resp:
        return resp.status, await resp.json()


async def test_sign_amend_and_deliver(emr_server) -> None:  # type: ignore[no-untyped-def]
    server, receiver = emr_server
    archive = server.archive
    study, series = short_uid(), short_uid()
    for i in range(3):
        archive.ingest_bytes(to_bytes(make_ct(study=study, series=series, patient_id="P7", patient_name="Roe^Richard",
                                              seed=i)), source="test")
    archive.sweep_stable(now=time.time() + 3600)
    base = server.base_url
    async with aiohttp.ClientSession() as session:
        for _ in range(400):  # the consumer puts the study on the list
            status, _ = await _call(session, "GET", f"{base}/api/reading-worklist/{study}")
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert (await _call(session, "PUT", f"{base}/api/reports/{study}/draft",
                            {"radiologist": "alice", "findings": "x", "impression": "y"}))[0] == 409
        assert (await _call(session, "POST", f"{base}/api/reading-worklist/{study}/claim", {"radiologist": "alice"}))[0] == 200
        code = {"system": "http://snomed.info/sct", "code": "17621005", "display": "Normal"}
        status, draft = await _call(session, "PUT", f"{base}/api/reports/{study}/draft", {
            "radiologist": "alice", "findings": "Lungs clear.", "impression": "Normal study.", "codes": [code]})
        assert status == 200 and (draft["version"], draft["status"]) == (1, "draft")
        status, item = await _call(session, "GET", f"{base}/api/reading-worklist/{study}")
        assert item["state"] == "preliminary"
        assert (await _call(session, "POST", f"{base}/api/reports/{study}/sign", {"radiologist": "bob"}))[0] == 409
        status, signed = await _call(session, "POST", f"{base}/api/reports/{study}/sign", {"radiologist": "alice"})
        assert status == 200 and (signed["status"], signed["version"]) == ("final", 1)
        first_sr = signed["sr_sop_uid"]
        # an amendment by another radiologist
        status, _ = await _call(session, "PUT", f"{base}/api/reports/{study}/draft", {
            "radiologist": "bob", "findings": "Lungs clear. Small nodule RUL.", "impression": "Follow-up CT."})
        assert status == 200
        status, amended = await _call(session, "POST", f"{base}/api/reports/{study}/sign", {"radiologist": "bob"})
        assert (status, amended["status"], amended["version"]) == (200, "amended", 2)
        status, item = await _call(session, "GET", f"{base}/api/reading-worklist/{study}")
        assert (item["state"], item["assigned_to"]) == ("amended", "bob")
        status, listed = await _call(session, "GET", f"{base}/api/reports/{study}")
        assert [(v["version"], v["status"], v["author"]) for v in listed["versions"]] == \
            [(1, "final", "alice"), (2, "amended", "bob")]

    # both SRs are in the study, readable by any DICOMweb client
    client = DICOMwebClient(url=f"{base}/dicom-web")
    found = {i["00080018"]["Value"][0]: i for i in client.search_for_instances(study_instance_uid=study)}
    assert first_sr in found and amended["sr_sop_uid"] in found
    sr_series = found[amended["sr_sop_uid"]]["0020000E"]["Value"][0]
    sr = client.retrieve_instance(study, sr_series, amended["sr_sop_uid"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"
    assert (sr.CompletionFlag, sr.VerificationFlag, str(sr.PatientID)) == ("COMPLETE", "VERIFIED", "P7")
    assert _content_texts(sr) == {"Findings": "Lungs clear. Small nodule RUL.", "Impressions": "Follow-up CT."}
    assert sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == first_sr

    # the EMR got both versions of one DiagnosticReport, despite failing twice first
    _wait(lambda: len(receiver.of("DiagnosticReport")) == 2)
    assert not receiver.invalid and receiver.refused == 2
    first, second = receiver.of("DiagnosticReport")
    assert first.id == second.id and (first.status, second.status) == ("final", "amended")
    assert first.subject.identifier.value == "P7" and first.conclusion == "Normal study."
    assert first.conclusionCode[0].coding[0].code == "17621005"
    assert first.imagingStudy[0].reference.startswith("ImagingStudy/pacs-study-")
    text = second.presentedForm[0].data.decode("utf-8")  # the model decodes base64Binary
    assert "Small nodule RUL." in text and "Follow-up CT." in text
    # and the stable study as an ImagingStudy
    _wait(lambda: len(receiver.of("ImagingStudy")) >= 1)
    imaging = receiver.of("ImagingStudy")[0]
    assert imaging.identifier[0].value == f"urn:oid:{study}" and imaging.numberOfInstances == 3
    assert [s.numberOfInstances for s in imaging.series] == [3]


async def test_bad_input(emr_server) -> None:  # type: ignore[no-untyped-def]
    server, _ = emr_server
    base = server.base_url
    async with aiohttp.ClientSession() as session:
        assert (await _call(session, "PUT", f"{base}/api/reports/1.2.3/draft",
                            {"radiologist": "alice", "findings": "x"}))[0] == 404
        status, body = await _call(session, "PUT", f"{base}/api/reports/1.2.3/draft",
                                   {"radiologist": "alice", "codes": [{"code": "1"}]})
        assert status == 400 and "codes" in body["error"]
        status, body = await _call(session, "PUT", f"{base}/api/reports/1.2.3/draft", {"findings": "x"})
        assert status == 400 and "radiologist" in body["error"]
        assert (await _call(session, "POST", f"{base}/api/reports/1.2.3/sign", {"radiologist": "a"}))[0] == 409
        status, body = await _call(session, "GET", f"{base}/api/reports/1.2.3")
        assert (status, body) == (200, {"versions": []})
