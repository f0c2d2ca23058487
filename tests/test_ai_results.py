"""AI findings back into the PACS (ai_hooks/results.py): a TID 1500 Comprehensive SR in the
study read back with highdicom, a FHIR transaction validated by the R4B models at a local
FHIR receiver, triage on the reading worklist, token checks, and the reference engine
(``python -m ai_hooks.example_engine``) end to end with the sample CT."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import replace
from typing import Any, Iterator

import aiohttp
import highdicom as hd
import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle

from ai_hooks import tokens
from pacs.settings import Settings
from sample_data import generate_ct_series

from .ai_support import Receiver, until
from .servers import ThreadedServer
from .retrieve_peers import to_bytes
from .servers import free_port
from .test_ai_hooks import SECRET, api, ingest_ct, webhook

SCT = "http://snomed.info/sct"
NODULE = {"system": SCT, "code": "27925004", "display": "Nodule"}
AREA = {"system": SCT, "code": "42798000", "display": "Area"}


@pytest.fixture
async def fhir() -> Any:
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def results_server(settings: Settings, fhir: Receiver) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(replace(settings, http_port=free_port(), stable_seconds=0.3, stability_check_interval=0.05,
                             outbox_retry_seconds=0.05, outbox_poll_seconds=0.05,
                             emr_fhir_url=fhir.url.rsplit("/", 1)[0] + "/fhir")).start()
    yield srv
    srv.stop()


async def on_worklist(s: aiohttp.ClientSession, server: ThreadedServer, study: str) -> dict[str, Any] | None:
    async with s.get(f"{server.base_url}/api/reading-worklist/{study}") as resp:
        return await resp.json() if resp.status == 200 else None


async def fetch_sr(s: aiohttp.ClientSession, server: ThreadedServer, study: str, sop: str) -> hd.sr.ComprehensiveSR:
    """The SR as any DICOMweb client gets it, parsed by highdicom."""
    async with s.get(f"{server.base_url}/dicom-web/studies?StudyInstanceUID={study}&includefield=all") as resp:
        assert resp.status == 200
    async with s.get(f"{server.base_url}/dicom-web/studies/{study}/instances?SOPInstanceUID={sop}") as resp:
        [found] = await resp.json()
    series = found["0020000E"]["Value"][0]
    url = f"{server.base_url}/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    async with s.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}) as resp:
        assert resp.status == 200
        reader = aiohttp.MultipartReader.from_response(resp)
        part = await reader.next()
        data = await part.read()  # type: ignore[union-attr]
    return hd.sr.srread(io.BytesIO(data))


def measurements(group: Any) -> dict[tuple[str, str], float]:
    out = {}
    for m in group.get_measurements():
        derivation = m.derivation.meaning if m.derivation is not None else ""
        out[(m.name.meaning, derivation)] = float(m.value)
    return out


async def test_findings_become_sr_fhir_and_stat(results_server: ThreadedServer, fhir: Receiver) -> None:
    server = results_server
    datasets = list(generate_ct_series(2, seed=21, rows=64, columns=64))
    for ds in datasets:
        server.archive.ingest_bytes(to_bytes(ds), source="test")
    study, sop = str(datasets[0].StudyInstanceUID), str(datasets[1].SOPInstanceUID)
    body = {"study_uid": study, "model": {"name": "nodule-net", "version": "2.1"}, "findings": [
        {"code": NODULE, "label": "Nodule right upper lobe", "probability": 0.93, "critical": True,
         "location": {"sop_instance_uid": sop, "point": [31.5, 20]},
         "measurements": [{"code": AREA, "value": 42.5, "unit": "mm2"}]},
        {"code": NODULE, "label": "Nodule left", "probability": 0.2,
         "location": {"sop_instance_uid": sop, "region": [[1, 1], [10, 1], [10, 10]]}},
        {"code": {"system": SCT, "code": "38266002", "display": "Entire body"}, "label": "Whole study",
         "location": {"sop_instance_uid": sop}}]}
    async with aiohttp.ClientSession() as s:
        item = await until(lambda: on_worklist(s, server, study), what="study on the reading worklist")
        assert item["priority_label"] == "ROUTINE"
        record = await api(s, "POST", server.base_url + "/api/ai/results", body, 201)
        assert record["critical"] and record["priority_raised"] and record["finding_count"] == 3
        item = await on_worklist(s, server, study)
        assert (item["priority"], item["priority_label"]) == (1, "STAT")
        assert item["priority_reason"] == "AI: nodule-net 2.1: Nodule right upper lobe"
        listed = (await api(s, "GET", server.base_url + "/api/reading-worklist"))["items"]
        assert listed[0]["study_uid"] == study

        sr = await fetch_sr(s, server, study, record["sr_sop_instance_uid"])
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.StudyInstanceUID == study
        assert sr.VerificationFlag == "UNVERIFIED" and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        rois = sr.content.get_planar_roi_measurement_groups()
        assert [str(g.tracking_identifier) for g in rois] == ["Nodule right upper lobe", "Nodule left"]
        assert measurements(rois[0]) == {("AI probability", ""): 0.93, ("Area", ""): 42.5}
        point = rois[0].roi
        assert point.graphic_type.value == "POINT" and np.allclose(point.value, [[31.5, 20]])
        assert rois[1].roi.graphic_type.value == "POLYLINE" and len(rois[1].roi.value) == 4
        [image_group] = sr.content.get_image_measurement_groups()
        assert image_group.finding_type.value == "38266002"
        assert image_group.source_images[0].referenced_sop_instance_uid == sop
        device = sr.content.get_observer_contexts(observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"))
        assert device[0].observer_identifying_attributes.name == "nodule-net"

        bundle_raw = await until(lambda: [r for r in fhir.accepted() if r["method"] == "POST"], what="FHIR bundle")
        bundle = Bundle.model_validate_json(bundle_raw[0]["body"])
        assert bundle_raw[0]["headers"]["Content-Type"] == "application/fhir+json"
        kinds = [e.resource.get_resource_type() for e in bundle.entry]
        assert kinds == ["Observation", "Observation", "Observation", "DiagnosticReport"]
        first = bundle.entry[0].resource
        assert first.status == "preliminary" and first.meta.tag[0].code == "AIAST"
        assert float(first.valueQuantity.value) == 0.93 and first.interpretation[0].coding[0].code == "AA"
        assert float(first.component[0].valueQuantity.value) == 42.5 and first.device.display == "nodule-net 2.1"
        report = bundle.entry[-1].resource
        assert report.status == "preliminary" and len(report.result) == 3
        assert report.identifier[0].value == f"urn:oid:{record['sr_sop_instance_uid']}"
        assert (await api(s, "GET", server.base_url + f"/api/ai/results?study_uid={study}"))["results"][0][
            "id"] == record["id"]


async def test_bad_findings_are_refused_and_nothing_stored(results_server: ThreadedServer) -> None:
    server = results_server
    study = ingest_ct(server, seed=22, count=1)
    other = ingest_ct(server, seed=23, count=1)
    good = {"study_uid": study, "model": {"name": "m", "version": "1"}, "findings": [{"code": NODULE}]}
    before = len(server.archive.changes(0, 1000))
    async with aiohttp.ClientSession() as s:
        url = server.base_url + "/api/ai/results"
        for bad in ({**good, "findings": []}, {**good, "model": {"name": "m"}},
                    {**good, "findings": [{"code": NODULE, "probability": 1.5}]},
                    {**good, "findings": [{"code": NODULE, "location": {"sop_instance_uid": "1.2.3"}}]},
                    {**good, "findings": [{"code": NODULE, "critical": "yes"}]}, {**good, "study_uid": "x y"}):
            assert (await api(s, "POST", url, bad, 400))["error"]
        await api(s, "POST", url, {**good, "study_uid": "1.2.3.4"}, 404)
        key = tokens.signing_key(server.archive.db)
        token, _ = tokens.issue(key, other, 1, ttl=60)
        async with s.post(url, json=good, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 403
        async with s.post(url, json=good, headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401 and "invalid_token" in resp.headers["WWW-Authenticate"]
        assert not [e for e in server.archive.changes(before, 1000) if e.type == "InstanceStored"]
        mine, _ = tokens.issue(key, study, 1, ttl=60)
        async with s.post(url, json=good, headers={"Authorization": f"Bearer {mine}"}) as resp:
            assert resp.status == 201


async def test_require_token_setting(settings: Settings) -> None:
    server = ThreadedServer(replace(settings, http_port=free_port(), ai_require_token=True)).start()
    try:
        study = ingest_ct(server, seed=24, count=1)
        good = {"study_uid": study, "model": {"name": "m", "version": "1"}, "findings": [{"code": NODULE}]}
        async with aiohttp.ClientSession() as s:
            async with s.post(server.base_url + "/api/ai/results", json=good) as resp:
                assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
            token, _ = tokens.issue(tokens.signing_key(server.archive.db), study, 1, ttl=60)
            async with s.post(server.base_url + "/api/ai/results", json=good,
                              headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 201
    finally:
        server.stop()


async def test_reference_engine_end_to_end(results_server: ThreadedServer) -> None:
    server = results_server
    port = free_port()
    engine = subprocess.Popen([sys.executable, "-m", "ai_hooks.example_engine", "--port", str(port),
                               "--secret", SECRET], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as s:
            async def ready() -> bool:
                try:
                    async with s.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await until(ready, what="engine ready")
            await api(s, "POST", server.base_url + "/api/ai/subscriptions",
                      webhook("example", f"http://127.0.0.1:{port}/notify"), 201)
            datasets = list(generate_ct_series(3, seed=25, rows=96, columns=96))
            for ds in datasets:
                server.archive.ingest_bytes(to_bytes(ds), source="test")
            study = str(datasets[0].StudyInstanceUID)

            async def posted() -> list[dict[str, Any]]:
                return (await api(s, "GET", server.base_url + f"/api/ai/results?study_uid={study}"))["results"]

            [record] = await until(posted, timeout=60, what="engine results")
            assert record["model"] == {"name": "pacs-example-body-outline", "version": "1.0"}
            sr = await fetch_sr(s, server, study, record["sr_sop_instance_uid"])
        groups = sr.content.get_planar_roi_measurement_groups()
        assert len(groups) == 3
        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        for group in groups:
            ds = by_uid[group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
            hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            mask = hu > -500
            got = measurements(group)
            spacing = [float(v) for v in ds.PixelSpacing]
            assert got[("Area", "")] == pytest.approx(mask.sum() * spacing[0] * spacing[1], rel=1e-4)
            assert got[("Attenuation Coefficient", "Mean")] == pytest.approx(hu[mask].mean(), abs=1e-2)
            assert got[("Attenuation Coefficient", "Maximum")] == pytest.approx(hu[mask].max(), abs=1e-2)
            assert 0 < mask.sum() < mask.size
    finally:
        engine.terminate()
        out, _ = engine.communicate(timeout=30)
    assert b"3 slices measured and posted" in out, out.decode()[-2000:]
