"""/api/worklist/items (REST) and POST /fhir/ServiceRequest against the running server."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import aiohttp
import pytest

from pacs.events import read_changes

from .servers import ThreadedServer

CT_ORDER = {
    "patient_id": "P100", "patient_name": "Müller^Anna", "patient_birth_date": "1970-02-03",
    "patient_sex": "F", "accession_number": "ACC100", "modality": "ct",
    "requested_procedure_description": "CT chest",
    "requested_procedure_code": {"code": "24627-2", "scheme": "LN", "meaning": "CT Chest"},
    "scheduled_station_ae": "CT1", "scheduled_start": "2026-12-04T10:30:00", "priority": "STAT",
}
#: occurrenceDateTime 2026-12-05T08:15:00Z in the server's local time (what modalities use).
LOCAL_START = datetime(2026, 12, 5, 8, 15, tzinfo=timezone.utc).astimezone().strftime("%Y-%m-%dT%H:%M:%S")


def _service_request(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "urgent",
        "contained": [{"resourceType": "Patient", "id": "pat", "identifier": [{"system": "urn:mrn", "value": "P200"}],
                       "name": [{"family": "Doe", "given": ["John"]}], "birthDate": "1980-05-06",
                       "gender": "male"}],
        "subject": {"reference": "#pat"},
        "identifier": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
             "value": "ACC200"},
            {"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.8.498.200"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5", "display": "XR Chest 2 views"},
                            {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX"}],
                 "text": "Chest X-ray"},
        "occurrenceDateTime": "2026-12-05T08:15:00Z",
        "performer": [{"identifier": {"system": "urn:dicom:ae", "value": "DX_ROOM2"}, "display": "DX room 2"},
                      {"reference": "Practitioner/7", "display": "Tech^Tina"}],
        "requester": {"display": "Ref^Rita"},
    }
    resource.update(changes)
    return resource


async def test_create_get_list_patch_cancel(server: ThreadedServer) -> None:
    base = f"{server.base_url}/api/worklist/items"
    async with aiohttp.ClientSession() as http:
        async with http.post(base, json=CT_ORDER) as resp:
            assert resp.status == 201
            item = await resp.json()
            assert resp.headers["Location"] == f"/api/worklist/items/{item['id']}"
        uid = item.pop("study_instance_uid")
        assert uid.startswith("1.2.826.0.1.3680043.8.498.")  # pydicom generate_uid
        for key in ("id", "created_at", "updated_at"):
            item.pop(key)
        assert item == {
            "status": "SCHEDULED", "priority": "STAT", "patient_id": "P100", "issuer_of_patient_id": "",
            "patient_name": "Müller^Anna", "patient_birth_date": "1970-02-03", "patient_sex": "F",
            "accession_number": "ACC100", "referring_physician_name": "", "requested_procedure_id": "ACC100",
            "requested_procedure_description": "CT chest",
            "requested_procedure_code": {"code": "24627-2", "scheme": "LN", "meaning": "CT Chest"},
            "modality": "CT", "scheduled_station_ae": "CT1", "scheduled_station_name": "",
            "scheduled_start": "2026-12-04T10:30:00", "performing_physician_name": "", "step_id": "ACC100",
            "step_description": "", "mpps_uid": ""}
        second = {**CT_ORDER, "accession_number": "ACC101", "modality": "MR", "scheduled_station_ae": "MR1",
                  "scheduled_start": "2026-12-06T09:00:00"}
        async with http.post(base, json=second) as resp:
            assert resp.status == 201
            mr_id = (await resp.json())["id"]
        async with http.get(base, params={"modality": "CT"}) as resp:
            assert [i["accession_number"] for i in await resp.json()] == ["ACC100"]
        async with http.get(base, params={"date_from": "2026-12-05", "scheduled_station_ae": "MR1"}) as resp:
            assert [i["id"] for i in await resp.json()] == [mr_id]
        async with http.get(base, params={"date_to": "2026-12-04"}) as resp:
            assert [i["accession_number"] for i in await resp.json()] == ["ACC100"]
        async with http.get(base, params={"patient_id": "P100", "status": "SCHEDULED"}) as resp:
            assert [i["accession_number"] for i in await resp.json()] == ["ACC100", "ACC101"]

        async with http.patch(f"{base}/{mr_id}", json={"scheduled_station_ae": "MR2", "priority": "low"}) as resp:
            assert resp.status == 200
            patched = await resp.json()
            assert (patched["scheduled_station_ae"], patched["priority"]) == ("MR2", "LOW")
        async with http.delete(f"{base}/{mr_id}") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "CANCELLED"
        async with http.patch(f"{base}/{mr_id}", json={"priority": "STAT"}) as resp:
            assert resp.status == 409
        async with http.get(f"{base}/{mr_id}") as resp:
            assert (await resp.json())["priority"] == "LOW"
        async with http.get(f"{base}/999999") as resp:
            assert resp.status == 404
    types = [e.type for e in read_changes(server.archive.db, 0, 100)]
    assert types == ["ProcedureScheduled", "ProcedureScheduled", "ProcedureUpdated", "ProcedureCancelled"]


@pytest.mark.parametrize("body, reasons", [
    ({}, ["patient_id is required", "modality is required", "scheduled_start is required"]),
    ({**CT_ORDER, "scheduled_start": "tomorrow"}, ["scheduled_start must be an ISO 8601 date-time"]),
    ({**CT_ORDER, "patient_sex": "X", "accession_number": "A" * 17},
     ["patient_sex must be one of M, F, O", "accession_number is longer than 16 characters"]),
    ({**CT_ORDER, "study_instance_uid": "1.2.abc", "colour": "red"},
     ["unknown field colour", "study_instance_uid is not a valid UID"]),
    ({**CT_ORDER, "patient_name": "A\\B", "priority": "SOON"},
     ["patient_name must not contain control characters or backslashes", "priority must be one of"]),
    ([1, 2], ["body must be a JSON object"]),
])
async def test_invalid_items_are_400_with_reasons(server: ThreadedServer, body: Any, reasons: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/api/worklist/items", json=body) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
        async with http.get(f"{server.base_url}/api/worklist/items") as resp:
            assert await resp.json() == []  # nothing stored
    for reason in reasons:
        assert reason in error


async def test_duplicate_study_uid_is_409(server: ThreadedServer) -> None:
    body = {**CT_ORDER, "study_instance_uid": "1.2.3.4.5"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/api/worklist/items", json=body) as resp:
            assert resp.status == 201
        async with http.post(f"{server.base_url}/api/worklist/items", json=body) as resp:
            assert resp.status == 409


async def test_fhir_service_request_becomes_an_item(server: ThreadedServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/fhir/ServiceRequest", json=_service_request(),
                             headers={"Content-Type": "application/fhir+json"}) as resp:
            assert resp.status == 201
            item = await resp.json()
            assert resp.headers["Location"] == f"/api/worklist/items/{item['id']}"
        async with http.get(f"{server.base_url}{resp.headers['Location']}") as resp:
            assert await resp.json() == item
    for key in ("id", "created_at", "updated_at"):
        item.pop(key)
    assert item == {
        "status": "SCHEDULED", "priority": "HIGH", "patient_id": "P200", "issuer_of_patient_id": "",
        "patient_name": "Doe^John", "patient_birth_date": "1980-05-06", "patient_sex": "M",
        "accession_number": "ACC200", "referring_physician_name": "Ref^Rita", "requested_procedure_id": "ACC200",
        "requested_procedure_description": "Chest X-ray",
        "requested_procedure_code": {"code": "36643-5", "scheme": "LN", "meaning": "XR Chest 2 views"},
        "modality": "DX", "scheduled_station_ae": "DX_ROOM2", "scheduled_station_name": "DX room 2",
        "scheduled_start": LOCAL_START, "performing_physician_name": "Tech^Tina", "step_id": "ACC200",
        "step_description": "", "study_instance_uid": "1.2.826.0.1.3680043.8.498.200", "mpps_uid": ""}


async def test_fhir_subject_by_identifier(server: ThreadedServer) -> None:
    resource = _service_request(subject={"identifier": {"value": "P300"}, "display": "Roe, Jane"}, contained=None)
    resource.pop("contained")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/fhir/ServiceRequest", json=resource) as resp:
            assert resp.status == 201
            item = await resp.json()
    assert (item["patient_id"], item["patient_name"]) == ("P300", "Roe^Jane")


@pytest.mark.parametrize("changes, diagnostic", [
    ({"status": "draft"}, "only an active ServiceRequest"),
    ({"intent": "proposal"}, "intent: must be an order"),
    ({"subject": {"reference": "#nobody"}}, "is not a Patient"),
    ({"occurrenceDateTime": None}, "occurrenceDateTime (or occurrencePeriod.start) is required"),
    ({"code": {"coding": [{"system": "http://loinc.org", "code": "1"}]}}, "giving the modality"),
    ({"subject": None}, "subject"),
    ({"resourceType": "Patient"}, "must be a FHIR ServiceRequest"),
])
async def test_invalid_service_request_is_400_operation_outcome(
        server: ThreadedServer, changes: dict[str, Any], diagnostic: str) -> None:
    resource = {k: v for k, v in _service_request(**changes).items() if v is not None}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/fhir/ServiceRequest", json=resource) as resp:
            assert resp.status == 400
            assert resp.headers["Content-Type"].startswith("application/fhir+json")
            outcome = await resp.json()
        async with http.get(f"{server.base_url}/api/worklist/items") as resp:
            assert await resp.json() == []
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error" and outcome["issue"][0]["code"] == "invalid"
    assert any(diagnostic in issue["diagnostics"] for issue in outcome["issue"]), outcome
