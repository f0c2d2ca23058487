"""Two ``pacs serve`` nodes sharing one PostgreSQL index and one S3 bucket (moto's HTTP
server), as docs/deployment.md describes: what one node stores the other finds and
retrieves, byte for byte; C-MOVE works from either node to a destination registered
through one of them; StudyStable, the AI engine's notification and the EMR's
DiagnosticReport are produced and delivered exactly once although both nodes run the
stability sweep, the event consumers and an outbox sender. The two nodes start together
on an empty database, so their schema migrations meet (pacs/index/migrate.py serialises
them with an advisory lock).

The index is always PostgreSQL here (a schema of its own, whatever ``PACS_TEST_DB`` says):
several nodes on one SQLite file is not a supported deployment.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from aiohttp import web
from moto.server import ThreadedMotoServer
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind as StudyRootFind,
    StudyRootQueryRetrieveInformationModelMove as StudyRootMove,
)

from .ai_support import Receiver
from .conftest import postgres_database
from .factory import dataset_part, make_ct, short_uid, to_bytes
from .retrieve_peers import StoreSCP
from .servers import ProcessServer, wait_until
from .test_reports import FhirReceiver

pytestmark = pytest.mark.slow

SECRET = "multi-node-webhook-secret-0123456789"
BUCKET = "archive"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}
#: Deadline of every wait on the nodes (they answer in well under a second here).
DEADLINE = 30.0


# -- helpers ------------------------------------------------------------------------------------
def http(method: str, url: str, body: Any = None, *, accept: str = "application/json",
         expect: int = 200) -> tuple[bytes, dict[str, str]]:
    """One HTTP request; the body and headers of the answer, which must have status ``expect``."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Accept": accept})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, payload, headers = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        status, payload, headers = exc.code, exc.read(), dict(exc.headers)
    assert status == expect, f"{method} {url}: {status} {payload[:500]!r}"
    return payload, headers


def get_json(url: str, expect: int = 200) -> Any:
    payload, _ = http("GET", url, expect=expect)
    return json.loads(payload) if payload else None


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The parts' bodies of a multipart/related answer (RFC 2046)."""
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";")
                    if p.strip().startswith("boundary="))
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, rest = chunk.partition(b"\r\n\r\n")
        parts.append(rest[:-2] if rest.endswith(b"\r\n") else rest)
    return parts


#: One ``pacs serve`` node (launched without waiting, so that several start together).
Node = ProcessServer


class LoopThread:
    """An asyncio loop in a thread, for the HTTP receivers (the test itself is synchronous)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def start_fhir(receiver: FhirReceiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_put("/fhir/{type}/{id}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/fhir"


def c_store(node: Node, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="PACS")
    assert assoc.is_established
    try:
        assert [assoc.send_c_store(ds).Status for ds in datasets] == [0x0000] * len(datasets)
    finally:
        assoc.release()


def c_find_studies(node: Node, study: str) -> list[Dataset]:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootFind)
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="PACS")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    for keyword in ("PatientID", "PatientName", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
                    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"):
        setattr(query, keyword, "")
    found, statuses = [], []
    for status, identifier in assoc.send_c_find(query, StudyRootFind):
        statuses.append(status.Status)
        if status.Status in (0xFF00, 0xFF01):
            found.append(identifier)
    assoc.release()
    assert statuses[-1] == 0x0000
    return found


def c_move_study(node: Node, study: str, destination: str) -> Dataset:
    """A study-level C-MOVE through ``node``; the final response."""
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootMove)
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="PACS")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    responses = [status for status, _ in assoc.send_c_move(identifier, destination, StudyRootMove)]
    assoc.release()
    return responses[-1]


def stable_events(node: Node, study: str) -> list[dict[str, Any]]:
    changes, since = [], 0
    while True:
        page = get_json(f"{node.base_url}/api/changes?since={since}&limit=1000")
        changes += page["changes"]
        since = page["last"]
        if page["done"]:
            break
    return [c for c in changes if c["type"] == "StudyStable" and c["study_uid"] == study]


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, FhirReceiver, str]]:
    """An AI engine's webhook and an EMR's FHIR endpoint, on a loop of their own."""
    loop = LoopThread()
    webhook = loop.run(Receiver(SECRET).start())
    fhir = FhirReceiver()
    runner, fhir_url = loop.run(start_fhir(fhir))
    yield webhook, fhir, fhir_url
    loop.run(webhook.stop())
    loop.run(runner.cleanup())
    loop.close()


@pytest.fixture
def nodes(tmp_path: Path, moto_endpoint: str, receivers) -> Iterator[tuple[Node, Node]]:  # type: ignore[no-untyped-def]
    """Nodes A and B: one PostgreSQL schema, one bucket, each its own data dir; started
    together on a fresh database (their schema migrations must not collide)."""
    _, _, fhir_url = receivers
    with postgres_database() as database_url:
        common = {
            **AWS,
            "PACS_DATABASE_URL": database_url,
            "PACS_STORAGE_URL": f"s3://{BUCKET}/pacs",
            "PACS_S3_ENDPOINT_URL": moto_endpoint,
            "PACS_EMR_FHIR_URL": fhir_url,
            "PACS_STABLE_SECONDS": "1",
            "PACS_STABILITY_CHECK_INTERVAL": "0.1",
            "PACS_OUTBOX_POLL_SECONDS": "0.05",
            "PACS_OUTBOX_RETRY_SECONDS": "0.05",
            "PACS_SHUTDOWN_TIMEOUT": "5",
        }
        pair = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            pair.append(Node({**common, "PACS_DATA_DIR": str(tmp_path / name / "data")}, tmp_path / name))
        a, b = pair
        public = f"{b.base_url}/dicom-web"  # what a load balancer's address would be
        for node in pair:
            node.env["PACS_PUBLIC_BASE_URL"] = public
        try:
            for node in pair:
                node.launch()
            for node in pair:
                node.wait_ready()
            yield a, b
        finally:
            for node in pair:
                node.stop()


# -- the test -----------------------------------------------------------------------------------
def test_two_nodes_share_index_bucket_and_deliver_once(nodes, receivers) -> None:  # type: ignore[no-untyped-def]
    a, b = nodes
    webhook, fhir, _ = receivers

    # An AI subscription made through A; a C-MOVE destination registered through B.
    sub = json.loads(http("POST", f"{a.base_url}/api/ai/subscriptions", {
        "name": "ct-engine", "trigger": "study_stable", "filter": {"modalities": ["CT"]},
        "delivery": {"type": "webhook", "url": webhook.url, "secret": SECRET}}, expect=201)[0])
    dest = StoreSCP(ae_title="DEST").start()
    try:
        http("POST", f"{b.base_url}/api/aes", {"ae_title": "DEST", "host": "127.0.0.1", "port": dest.port}, expect=201)
        _scenario(a, b, webhook, fhir, dest, sub)
    finally:
        dest.stop()


def _scenario(a: Node, b: Node, webhook: Receiver, fhir: FhirReceiver, dest: StoreSCP, sub: dict[str, Any]) -> None:
    # A study of two series: four CTs and the first two of series 2 through A, the third of
    # series 2 through B, the last through A again (each node's series cache goes stale).
    study = short_uid()
    datasets = []
    for i in range(7):
        series = f"{study}.{1 if i < 4 else 2}"
        ds = make_ct(study=study, series=series, patient_id="MN1", patient_name="Node^Nora", seed=i, rows=32,
                     columns=32)
        ds.SeriesNumber = 1 if i < 4 else 2
        ds.InstanceNumber = i + 1
        ds.StudyDescription = "MULTI NODE"
        datasets.append(ds)
    sent = {ds.SOPInstanceUID: to_bytes(ds) for ds in datasets}
    c_store(a, datasets[:6])
    c_store(b, datasets[6:7])
    extra = make_ct(study=study, series=f"{study}.2", patient_id="MN1", patient_name="Node^Nora", seed=7,
                    rows=32, columns=32)
    extra.SeriesNumber, extra.InstanceNumber, extra.StudyDescription = 2, 8, "MULTI NODE"
    c_store(a, [extra])
    datasets.append(extra)
    sent[extra.SOPInstanceUID] = to_bytes(extra)
    assert len(sent) == 8

    # QIDO-RS through B: the study, with exact values and counts over both nodes' writes.
    [match] = get_json(f"{b.base_url}/dicom-web/studies?StudyInstanceUID={study}"
                       "&includefield=00081030&includefield=00201206&includefield=00201208")
    assert match["0020000D"]["Value"] == [study]
    assert match["00100020"]["Value"] == ["MN1"]
    assert match["00100010"]["Value"] == [{"Alphabetic": "Node^Nora"}]
    assert match["00080020"]["Value"] == ["20260102"] and match["00080050"]["Value"] == ["ACC1"]
    assert match["00081030"]["Value"] == ["MULTI NODE"]
    assert match["00080061"]["Value"] == ["CT"]
    assert (match["00201206"]["Value"], match["00201208"]["Value"]) == ([2], [8])
    instances = get_json(f"{b.base_url}/dicom-web/studies/{study}/instances")
    assert sorted(i["00080018"]["Value"][0] for i in instances) == sorted(sent)

    # WADO-RS through B: every instance, the bytes that were sent.
    body, headers = http("GET", f"{b.base_url}/dicom-web/studies/{study}",
                         accept='multipart/related; type="application/dicom"')
    parts = multipart_parts(body, headers["Content-Type"])
    got = {str(dcmread(BytesIO(p), stop_before_pixels=True).SOPInstanceUID): p for p in parts}
    assert set(got) == set(sent)
    for uid, data in sent.items():
        assert dataset_part(got[uid]) == dataset_part(data)

    # C-FIND through B.
    [found] = c_find_studies(b, study)
    assert (found.StudyInstanceUID, found.PatientID, str(found.PatientName)) == (study, "MN1", "Node^Nora")
    assert (found.AccessionNumber, found.StudyDate, found.ModalitiesInStudy) == ("ACC1", "20260102", "CT")
    assert (found.NumberOfStudyRelatedSeries, found.NumberOfStudyRelatedInstances) == (2, 8)

    # C-MOVE through B, then through A, to the destination registered through B.
    for node in (b, a):
        dest.received.clear()
        final = c_move_study(node, study, "DEST")
        assert final.Status == 0x0000, node.base_url
        assert (final.NumberOfCompletedSuboperations, final.get("NumberOfFailedSuboperations", 0)) == (8, 0)
        assert set(dest.received) == set(sent)
        for uid, data in sent.items():
            assert dest.received[uid].data == dataset_part(data)
            assert dest.received[uid].dataset() == dcmread(BytesIO(data))

    # StudyStable once, whichever node's sweep won; the change feed is the same from both.
    [stable] = wait_until(lambda: stable_events(b, study), DEADLINE, "StudyStable")
    assert stable["payload"] == {"series": 2, "instances": 8, "modalities": ["CT"]}
    # The AI engine gets one notification, from one of the two outbox senders.
    wait_until(lambda: webhook.accepted(), DEADLINE, "the AI notification")
    deliveries = wait_until(lambda: [d for d in get_json(f"{a.base_url}/api/ai/deliveries?subscription={sub['id']}")
                                   ["deliveries"] if d["status"] == "delivered"], DEADLINE, "the delivery logged")
    assert [(d["status"], d["attempts"], d["last_status"]) for d in deliveries] == [("delivered", 1, 200)]
    [note] = webhook.json_accepted()
    assert (note["event_id"], note["event_type"], note["study_uid"]) == (stable["id"], "StudyStable", study)
    assert note["summary"]["instances"] == 8 and note["dicomweb"]["study"] == f"{b.base_url}/dicom-web/studies/{study}"
    assert webhook.received[0]["verified"]
    # Its study-scoped token, signed with the key both nodes share, opens the study on A.
    req = urllib.request.Request(f"{a.base_url}/dicom-web/studies/{study}/metadata",
                                 headers={"Authorization": f"Bearer {note['access_token']}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert sorted(i["00080018"]["Value"][0] for i in json.loads(resp.read())) == sorted(sent)
    # The EMR gets one ImagingStudy for that StudyStable.
    wait_until(lambda: fhir.of("ImagingStudy"), DEADLINE, "the ImagingStudy")
    [imaging] = fhir.of("ImagingStudy")
    assert imaging.numberOfInstances == 8 and [s.numberOfInstances for s in imaging.series] == [4, 4]

    # A report: claimed through A, drafted through B, signed through A.
    wait_until(lambda: _status(f"{b.base_url}/api/reading-worklist/{study}") == 200, DEADLINE, "the reading worklist")
    http("POST", f"{a.base_url}/api/reading-worklist/{study}/claim", {"radiologist": "alice"})
    http("PUT", f"{b.base_url}/api/reports/{study}/draft",
         {"radiologist": "alice", "findings": "Two nodes, one study.", "impression": "Normal."})
    signed = json.loads(http("POST", f"{a.base_url}/api/reports/{study}/sign", {"radiologist": "alice"})[0])
    assert (signed["status"], signed["version"]) == ("final", 1)
    wait_until(lambda: fhir.of("DiagnosticReport"), DEADLINE, "the DiagnosticReport")
    # The report's SR makes the study change: a second StudyStable (9 instances) and a second
    # ImagingStudy follow, the AI engine is not notified again (no new images).
    wait_until(lambda: len(stable_events(a, study)) == 2, DEADLINE, "the second StudyStable")
    wait_until(lambda: len(fhir.of("ImagingStudy")) == 2, DEADLINE, "the second ImagingStudy")
    fhir_messages = wait_until(lambda: _settled(get_json(f"{b.base_url}/api/outbox?channel=fhir")["messages"]),
                             DEADLINE, "the EMR messages settled")
    first, second = stable_events(a, study)
    assert first == stable and second["payload"]["instances"] == 9
    assert stable_events(a, study) == stable_events(b, study)
    [report] = fhir.of("DiagnosticReport")
    assert report.status == "final" and report.conclusion == "Normal."
    assert report.subject.identifier.value == "MN1"
    assert [i.numberOfInstances for i in fhir.of("ImagingStudy")] == [8, 9]
    assert not fhir.invalid and fhir.refused == 0
    assert len(webhook.received) == 1
    # Every outbox message went out once: one attempt each, nothing pending.
    assert sorted((m["method"], m["target_url"].rsplit("/", 2)[1], m["status"], m["attempts"])
                  for m in fhir_messages) == [("PUT", "DiagnosticReport", "delivered", 1),
                                              ("PUT", "ImagingStudy", "delivered", 1),
                                              ("PUT", "ImagingStudy", "delivered", 1)]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _settled(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The messages, once there are three and none is pending any more."""
    return messages if len(messages) == 3 and all(m["status"] != "pending" for m in messages) else None
