"""The PHI access audit trail (pacs/audit.py, pacs/web_audit.py, pacs/dimse/audit.py): a
scripted session over every door against the running server, then ``GET /api/audit``
must list exactly those accesses, in order, with who, what, outcome and where."""

from __future__ import annotations

import re
import socket
import time
from io import BytesIO
from xml.etree import ElementTree
from typing import Any, Iterator

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind as StudyRootFind,
    StudyRootQueryRetrieveInformationModelGet as StudyRootGet,
    Verification,
)

from pacs import api_tokens
from pacs.audit import DROPPED, AuditTrail, Record
from pacs.settings import Settings

from .factory import make_ct, to_bytes
from .servers import ThreadedServer

FIELDS = ("door", "action", "actor", "credential", "ae_title", "outcome", "status", "reason", "route",
          "patient_id", "study_uid", "source")
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


@pytest.fixture
def srv(settings: Settings) -> Iterator[ThreadedServer]:
    server = ThreadedServer(settings.replace(allow_delete=True, require_called_ae=True)).start()
    yield server
    server.stop()


def _associate(server: ThreadedServer, calling: str, contexts: list[Any], called: str = "PACS", **kwargs: Any):
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", server.dimse_port, ae_title=called, **kwargs)


def _c_store(server: ThreadedServer, ds: Dataset) -> None:
    assoc = _associate(server, "MODALITY", [CTImageStorage])
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


def _c_find(server: ThreadedServer, patient_id: str) -> list[Dataset]:
    assoc = _associate(server, "WORKSTATION", [StudyRootFind])
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.PatientID, identifier.StudyInstanceUID = "STUDY", patient_id, ""
    found = [ds for status, ds in assoc.send_c_find(identifier, StudyRootFind) if status.Status == 0xFF00]
    assoc.release()
    return found


def _c_get(server: ThreadedServer, study: str) -> int:
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", study
    final = list(assoc.send_c_get(identifier, StudyRootGet))[-1][0]
    assoc.release()
    assert final.Status == 0x0000
    return len(received)


def _events(server: ThreadedServer, **params: Any) -> list[dict[str, Any]]:
    answer = requests.get(f"{server.base_url}/api/audit", params=params, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["events"]


def _row(door: str, action: str, actor: str, status: int, route: str, patient: str = "", study: str = "",
         reason: str = "") -> dict[str, Any]:
    dimse = door == "dimse"
    return {"door": door, "action": action, "actor": actor, "credential": "ae" if dimse else "anonymous",
            "ae_title": actor if dimse else "", "outcome": "failure" if reason else "success", "status": status,
            "reason": reason, "route": route, "patient_id": patient, "study_uid": study, "source": "127.0.0.1"}


def _run_session(server: ThreadedServer) -> tuple[str, str]:
    """Every door once; returns the two studies (C-STORE's, STOW's)."""
    web = DICOMwebClient(f"{server.base_url}/dicom-web")
    first, second = make_ct(patient_id="AUD1", seed=1), make_ct(patient_id="AUD2", seed=2)
    s1, s2 = str(first.StudyInstanceUID), str(second.StudyInstanceUID)
    _c_store(server, first)
    web.store_instances([dcmread(BytesIO(to_bytes(second)))])
    server.archive.audit.flush()  # STOW's row names its patient before the study is deleted below
    assert [r["00100020"]["Value"] for r in web.search_for_studies(search_filters={"PatientID": "AUD1"})] == [["AUD1"]]
    assert len(web.retrieve_study_metadata(s1)) == 1
    wado = requests.get(f"{server.base_url}/dicom-web/studies/{s1}", headers={"Accept": MULTIPART_DICOM}, timeout=30)
    assert wado.status_code == 200
    missing = requests.get(f"{server.base_url}/dicom-web/studies/1.2.3.4/metadata", timeout=30)
    assert missing.status_code == 404
    assert len(_c_find(server, "AUD2")) == 1
    assert _c_get(server, s1) == 1
    assert _c_store_refused(server)
    echo = _associate(server, "WORKSTATION", [Verification])
    assert echo.send_c_echo().Status == 0x0000  # not patient data: not audited
    echo.release()
    assert requests.delete(f"{server.base_url}/dicom-web/studies/{s2}", timeout=30).status_code == 204
    return s1, s2


def _c_store_refused(server: ThreadedServer) -> bool:
    assoc = _associate(server, "INTRUDER", [CTImageStorage], called="NOTPACS")
    return assoc.is_rejected


def test_session_is_audited_exactly_in_order(srv: ThreadedServer) -> None:
    s1, s2 = _run_session(srv)
    ct, find, get = str(CTImageStorage), str(StudyRootFind), str(StudyRootGet)
    expected = [
        _row("dimse", "store", "MODALITY", 0, ct, "AUD1", s1),
        _row("dicomweb", "store", "anonymous", 200, "POST /dicom-web/studies", "AUD2", s2),
        _row("dicomweb", "query", "anonymous", 200, "GET /dicom-web/studies", "AUD1"),
        _row("dicomweb", "view-metadata", "anonymous", 200, "GET /dicom-web/studies/{study}/metadata", "AUD1", s1),
        _row("dicomweb", "retrieve", "anonymous", 200, "GET /dicom-web/studies/{study}", "AUD1", s1),
        _row("dicomweb", "view-metadata", "anonymous", 404, "GET /dicom-web/studies/{study}/metadata", "",
             "1.2.3.4", reason="404 Not Found: study 1.2.3.4 not found"),
        _row("dimse", "query", "WORKSTATION", 0, find, "AUD2"),
        _row("dimse", "retrieve", "WORKSTATION", 0, get, "AUD1", s1),
        _row("dimse", "association-refused", "INTRUDER", 7, "called NOTPACS", reason="called AE title not recognised"),
        _row("dicomweb", "delete", "anonymous", 204, "DELETE /dicom-web/studies/{study}", "AUD2", s2),
    ]
    events = _events(srv)
    assert [{k: e[k] for k in FIELDS} for e in events] == expected
    ids, times = [e["id"] for e in events], [e["time"] for e in events]
    assert ids == sorted(ids) and times == sorted(times) and time.time() - times[0] < 120
    assert [e["details"] for e in events] == [""] * len(events)


def test_authenticated_callers_and_login_failures(settings: Settings) -> None:
    """With authentication on: the token's subject and id are the actor; a missing or bad
    token is a login failure; a token without the scope is a refused access; only admin
    tokens read the trail."""
    server = ThreadedServer(settings.replace(auth_required=True)).start()
    try:
        db = server.archive.db
        admin, admin_info = api_tokens.create(db, "auditor", "read,admin")
        clerk, clerk_info = api_tokens.create(db, "clerk", "worklist")
        base = server.base_url
        auth = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
        study = "1.2.826.0.1.3680043.10.1234.77"
        assert requests.get(f"{base}/dicom-web/studies", params={"PatientID": "AUD9"}, headers=auth(admin),
                            timeout=30).status_code == 200
        assert requests.get(f"{base}/dicom-web/studies/{study}/series", timeout=30).status_code == 401
        assert requests.get(f"{base}/api/worklist", headers=auth("pacst1.000000000000.nope"),
                            timeout=30).status_code == 401
        assert requests.get(f"{base}/dicom-web/studies/{study}/metadata", headers=auth(clerk),
                            timeout=30).status_code == 403
        assert requests.get(f"{base}/api/audit", headers=auth(clerk), timeout=30).status_code == 403
        answer = requests.get(f"{base}/api/audit", headers=auth(admin), timeout=30)
        assert answer.status_code == 200
        rows = [{k: e[k] for k in ("door", "action", "actor", "credential", "outcome", "status", "route",
                                    "patient_id", "study_uid")} for e in answer.json()["events"]]
        assert rows == [
            {"door": "dicomweb", "action": "query", "actor": "token:auditor", "credential": f"api-token:{admin_info.id}",
             "outcome": "success", "status": 200, "route": "GET /dicom-web/studies", "patient_id": "AUD9",
             "study_uid": ""},
            {"door": "dicomweb", "action": "login-failure", "actor": "anonymous", "credential": "anonymous",
             "outcome": "failure", "status": 401, "route": "GET /dicom-web/studies/{study}/series",
             "patient_id": "", "study_uid": study},
            {"door": "rest", "action": "login-failure", "actor": "anonymous", "credential": "anonymous",
             "outcome": "failure", "status": 401, "route": "GET /api/worklist", "patient_id": "", "study_uid": ""},
            {"door": "dicomweb", "action": "view-metadata", "actor": "token:clerk",
             "credential": f"api-token:{clerk_info.id}", "outcome": "failure", "status": 403,
             "route": "GET /dicom-web/studies/{study}/metadata", "patient_id": "", "study_uid": study},
        ]
        reasons = [e["reason"] for e in answer.json()["events"]]
        assert reasons[1] == "401 Unauthorized: authentication required"
        assert reasons[2] == "401 Unauthorized: unknown API token"
        assert reasons[3] == "403 Forbidden: this request needs the read scope"
    finally:
        server.stop()


def test_filters_and_paging(srv: ThreadedServer) -> None:
    s1, s2 = _run_session(srv)
    actions = lambda events: [e["action"] for e in events]  # noqa: E731
    assert actions(_events(srv, study_uid=s1)) == ["store", "view-metadata", "retrieve", "retrieve"]
    assert actions(_events(srv, patient_id="AUD2")) == ["store", "query", "delete"]
    assert actions(_events(srv, actor="WORKSTATION")) == ["query", "retrieve"]
    assert actions(_events(srv, outcome="failure")) == ["view-metadata", "association-refused"]
    assert actions(_events(srv, action="delete", door="dicomweb")) == ["delete"]
    every = _events(srv)
    page = requests.get(f"{srv.base_url}/api/audit", params={"limit": 4}, timeout=30).json()
    assert [e["id"] for e in page["events"]] == [e["id"] for e in every[:4]] and page["done"] is False
    after = _events(srv, after=page["last"], limit=1000)
    assert [e["id"] for e in after] == [e["id"] for e in every[4:]]
    assert [e["id"] for e in _events(srv, offset=8)] == [e["id"] for e in every[8:]]
    middle = every[3]["time"]
    assert _events(srv, since=middle) == [e for e in every if e["time"] >= middle]
    assert _events(srv, until=middle) == [e for e in every if e["time"] < middle]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(every[0]["time"] - 1))
    assert len(_events(srv, since=iso)) == len(every)
    assert _events(srv, until="2000-01-01T00:00:00Z") == []


@pytest.mark.parametrize("params", [{"since": "yesterday"}, {"limit": "-1"}, {"limit": "5000"},
                                    {"offset": "x"}, {"patient": "AUD1"}])
def test_bad_parameters_are_400(srv: ThreadedServer, params: dict[str, str]) -> None:
    answer = requests.get(f"{srv.base_url}/api/audit", params=params, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"]


def test_full_queue_drops_and_counts(archive: Any) -> None:
    trail = AuditTrail(archive.db, capacity=2)
    trail._thread = object()  # type: ignore[assignment]  # no writer: the queue only fills
    before = DROPPED._value.get()
    for n in range(3):
        trail.record(Record(door="rest", action="query", status=200, actor=f"a{n}"))
    assert DROPPED._value.get() == before + 1


def test_disabled_trail_records_nothing(settings: Settings) -> None:
    server = ThreadedServer(settings.replace(audit_enabled=False)).start()
    try:
        assert requests.get(f"{server.base_url}/dicom-web/studies", timeout=30).status_code == 200
        assert _events(server) == []
    finally:
        server.stop()


def test_syslog_export_of_dicom_audit_messages(settings: Settings) -> None:
    """PACS_AUDIT_SYSLOG: each event also goes out as an RFC 5424 datagram carrying a PS3.15
    A.5 AuditMessage."""
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(10)
    server = ThreadedServer(settings.replace(audit_syslog=f"127.0.0.1:{collector.getsockname()[1]}")).start()
    try:
        ds = make_ct(patient_id="AUD5", seed=5)
        _c_store(server, ds)
        assert requests.get(f"{server.base_url}/dicom-web/studies/1.2.3.9/metadata", timeout=30).status_code == 404
        frames = [collector.recv(65535) for _ in range(2)]
    finally:
        server.stop()
        collector.close()
    messages = []
    for frame in frames:
        header, _, body = frame.partition(b"\xef\xbb\xbf")
        assert re.fullmatch(rb"<85>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ pacs - DICOM\+RFC3881 - ", header)
        messages.append(ElementTree.fromstring(body))
    store, metadata = messages
    assert store.find("EventIdentification").attrib["EventActionCode"] == "C"
    assert store.find("EventIdentification").attrib["EventOutcomeIndicator"] == "0"
    assert store.find("EventIdentification/EventID").attrib == {
        "csd-code": "110104", "codeSystemName": "DCM", "originalText": "DICOM Instances Transferred"}
    requestor, archive = store.findall("ActiveParticipant")
    assert requestor.attrib == {"UserID": "MODALITY", "UserIsRequestor": "true", "AlternativeUserID": "AETITLES=MODALITY",
                                "NetworkAccessPointID": "127.0.0.1", "NetworkAccessPointTypeCode": "2"}
    assert archive.attrib == {"UserID": "PACS", "UserIsRequestor": "false"}
    assert [(o.attrib["ParticipantObjectID"], o.attrib["ParticipantObjectTypeCodeRole"])
            for o in store.findall("ParticipantObjectIdentification")] == [("AUD5", "1"), (str(ds.StudyInstanceUID), "3")]
    failed = metadata.find("EventIdentification")
    assert (failed.attrib["EventActionCode"], failed.attrib["EventOutcomeIndicator"]) == ("R", "4")
    assert failed.find("EventOutcomeDescription").text == "404 Not Found: study 1.2.3.9 not found"
    assert metadata.find("ActiveParticipant").attrib["UserID"] == "anonymous"


def test_bad_syslog_target_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        Settings(audit_syslog="collector.example")
