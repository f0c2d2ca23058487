"""STOW-RS (PS3.18 10.5) against the running server: dicomweb-client stores and WADO-RS
gives the same bytes back; raw aiohttp bodies for the edge cases (framing, media types,
size limits, other studies, hostile UIDs, duplicates); the exact DICOM JSON answers."""

from __future__ import annotations

import email.parser
import email.policy
import os
from io import BytesIO
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from sqlalchemy import func, select

from pacs.index.models import Instance
from pacs.settings import Settings

from .factory import ROOT, make_ct, to_bytes
from .servers import ThreadedServer

MULTIPART = 'multipart/related; type="application/dicom"'
BOUNDARY = "stow-test-boundary"
CANNOT_UNDERSTAND, STUDY_MISMATCH, DUPLICATE_CONFLICT, OUT_OF_RESOURCES = 0xC000, 0xC409, 0xC002, 0xA700


def body(*parts: bytes, boundary: str = BOUNDARY, part_type: str | None = "application/dicom") -> bytes:
    """A multipart/related body (RFC 2387) with one part per object."""
    out = bytearray()
    for part in parts:
        head = f"--{boundary}\r\n" + (f"Content-Type: {part_type}\r\n" if part_type else "") + "\r\n"
        out += head.encode() + part + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


async def post(server: ThreadedServer, path: str, data: Any,
               content_type: str = f"{MULTIPART}; boundary={BOUNDARY}", **headers: str
               ) -> tuple[int, dict[str, str], Any]:
    """POST ``data`` to /dicom-web``path``: status, headers, parsed JSON body (or None)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/dicom-web{path}", data=data,
                             headers={"Content-Type": content_type, **headers}) as resp:
            raw = await resp.read()
            return resp.status, dict(resp.headers), (await resp.json(content_type=None)) if raw else None


def ui(value: str | None = None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def us(value: int) -> dict[str, Any]:
    return {"vr": "US", "Value": [value]}


def ur(value: str | None = None) -> dict[str, Any]:
    return {"vr": "UR", "Value": [value]} if value else {"vr": "UR"}


def referenced(server: ThreadedServer, ds: Dataset, root: str | None = None) -> dict[str, Any]:
    base = root or f"{server.base_url}/dicom-web"
    url = (f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    return {"00081150": ui(ds.SOPClassUID), "00081155": ui(ds.SOPInstanceUID), "00081190": ur(url)}


def failed(reason: int, sop_class: str | None = None, sop: str | None = None) -> dict[str, Any]:
    return {"00081150": ui(sop_class), "00081155": ui(sop), "00081197": us(reason)}


def stored_blobs(server: ThreadedServer) -> dict[str, bytes]:
    """SOP Instance UID -> the stored object's bytes."""
    archive = server.archive
    assert archive is not None
    with archive.db.read() as conn:
        rows = conn.execute(select(Instance.sop_instance_uid, Instance.blob_key)).all()
    out = {}
    for sop, key in rows:
        with archive.store.open(key) as fp:
            out[sop] = fp.read()
    return out


def instance_count(server: ThreadedServer) -> int:
    assert server.archive is not None
    with server.archive.db.read() as conn:
        return conn.execute(select(func.count()).select_from(Instance)).scalar_one()


def incoming_files(server: ThreadedServer) -> list[str]:
    assert server.archive is not None
    return os.listdir(server.archive.incoming_dir)


def study_of(count: int, study: str | None = None, rows: int = 16) -> list[Dataset]:
    study, series = study or generate_uid(ROOT), generate_uid(ROOT)
    return [make_ct(study=study, series=series, seed=i, rows=rows, columns=rows) for i in range(count)]


def split_multipart(resp: requests.Response) -> list[bytes]:
    """The part bodies of a multipart answer, parsed by the standard library (RFC 2046)."""
    head = f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + resp.content)
    assert message.is_multipart() and not message.defects
    return [part.get_payload(decode=True) for part in message.get_payload()]


def dcmwrite_bytes(ds: Dataset) -> bytes:
    """The bytes dicomweb-client sends for ``ds`` (``pydicom.dcmwrite``)."""
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds)
    return buf.getvalue()


@pytest.fixture
def small_server(settings: Settings) -> Iterator[ThreadedServer]:
    """A server whose STOW-RS takes instances of at most 20 kB and requests of 100 kB."""
    srv = ThreadedServer(settings.replace(stow_max_part_bytes=20_000, stow_max_request_bytes=100_000)).start()
    yield srv
    srv.stop()


# -- through dicomweb-client ---------------------------------------------------------------
def _rle(study: str) -> Dataset:
    ds = dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid(ROOT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(ROOT)
    ds.PatientID, ds.PatientName = "PID1", "Doe^Jane"  # the patient of make_ct
    return ds


def test_dicomweb_client_store_then_wado_gives_the_same_bytes(server: ThreadedServer) -> None:
    made = study_of(3)
    study = made[0].StudyInstanceUID
    # as read from Part 10 files: with the preamble dcmwrite needs to write Part 10 again
    datasets = [dcmread(BytesIO(to_bytes(ds))) for ds in made] + [_rle(study)]
    client = DICOMwebClient(url=f"{server.base_url}/dicom-web")
    answer = client.store_instances(datasets=datasets[:2])
    answer2 = client.store_instances(datasets=datasets[2:], study_instance_uid=study)
    root = "http://127.0.0.1/dicom-web"  # dicomweb-client sends Host without the port
    for response, sent in ((answer, datasets[:2]), (answer2, datasets[2:])):
        assert response.to_json_dict() == {
            "00081190": ur(f"{root}/studies/{study}"),
            "00081199": {"vr": "SQ", "Value": [referenced(server, ds, root) for ds in sent]},
        }
    for ds in datasets:
        url = (f"{server.base_url}/dicom-web/studies/{study}/series/{ds.SeriesInstanceUID}"
               f"/instances/{ds.SOPInstanceUID}")
        resp = requests.get(url, headers={"Accept": f"{MULTIPART}; transfer-syntax=*"}, timeout=30)
        assert resp.status_code == 200
        assert split_multipart(resp) == [dcmwrite_bytes(ds)]
    assert server.archive is not None
    events = server.archive.changes(0, 100)
    # parts of one request are ingested concurrently: any order in the index
    assert sorted(e.sop_instance_uid for e in events if e.type == "InstanceStored") == sorted(
        ds.SOPInstanceUID for ds in datasets)
    assert incoming_files(server) == []


# -- the answer ---------------------------------------------------------------------------
async def test_all_stored_answer_200_exact_json(server: ThreadedServer) -> None:
    datasets = study_of(2)
    study = datasets[0].StudyInstanceUID
    blobs = [to_bytes(ds) for ds in datasets]
    status, headers, answer = await post(server, f"/studies/{study}", body(*blobs))
    assert status == 200
    assert headers["Content-Type"] == "application/dicom+json"
    assert "Warning" not in headers
    assert answer == {
        "00081190": ur(f"{server.base_url}/dicom-web/studies/{study}"),
        "00081199": {"vr": "SQ", "Value": [referenced(server, ds) for ds in datasets]},
    }
    assert stored_blobs(server) == {ds.SOPInstanceUID: blob for ds, blob in zip(datasets, blobs)}


async def test_large_instance_chunked_body_is_stored_byte_for_byte(server: ThreadedServer) -> None:
    """A 2 MiB instance (above aiohttp's 1 MiB client_max_size and the 1 MiB flush size)
    in a chunked body without Content-Length, sent in odd-sized pieces."""
    [big] = study_of(1, rows=1024)
    blob = to_bytes(big)
    assert len(blob) > 2 * 1024 * 1024
    data = body(blob, to_bytes(make_ct(study=big.StudyInstanceUID)))

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 77_777):
            yield data[start:start + 77_777]

    status, _, answer = await post(server, "/studies", pieces())
    assert status == 200 and len(answer["00081199"]["Value"]) == 2
    assert stored_blobs(server)[big.SOPInstanceUID] == blob


async def test_single_part_application_dicom(server: ThreadedServer) -> None:
    [ds] = study_of(1)
    status, _, answer = await post(server, "/studies", to_bytes(ds), "application/dicom")
    assert status == 200
    assert answer["00081199"]["Value"] == [referenced(server, ds)]
    assert stored_blobs(server) == {ds.SOPInstanceUID: to_bytes(ds)}


async def test_non_dicom_part_among_good_ones_202(server: ThreadedServer) -> None:
    datasets = study_of(2)
    study = datasets[0].StudyInstanceUID
    parts = [to_bytes(datasets[0]), b"this is not DICOM at all" * 100, to_bytes(datasets[1])]
    status, headers, answer = await post(server, "/studies", body(*parts))
    assert status == 202
    assert answer == {
        "00081190": ur(f"{server.base_url}/dicom-web/studies/{study}"),
        "00081198": {"vr": "SQ", "Value": [failed(CANNOT_UNDERSTAND)]},
        "00081199": {"vr": "SQ", "Value": [referenced(server, ds) for ds in datasets]},
    }
    assert headers["Warning"].startswith('299 ') and '"C000 not a DICOM Part 10 object' in headers["Warning"]
    assert sorted(stored_blobs(server)) == sorted(ds.SOPInstanceUID for ds in datasets)
    assert incoming_files(server) == []


async def test_every_part_of_another_study_409_nothing_stored(server: ThreadedServer) -> None:
    datasets = study_of(2)
    target = generate_uid(ROOT)
    status, headers, answer = await post(server, f"/studies/{target}", body(*map(to_bytes, datasets)))
    assert status == 409
    assert answer == {
        "00081190": ur(),
        "00081198": {"vr": "SQ", "Value": [
            failed(STUDY_MISMATCH, ds.SOPClassUID, ds.SOPInstanceUID) for ds in datasets]},
    }
    assert "C409 StudyInstanceUID differs from the study of the request" in headers["Warning"]
    assert instance_count(server) == 0 and incoming_files(server) == []


async def test_one_part_of_another_study_202(server: ThreadedServer) -> None:
    [mine] = study_of(1)
    [other] = study_of(1)
    status, _, answer = await post(server, f"/studies/{mine.StudyInstanceUID}",
                                   body(to_bytes(other), to_bytes(mine)))
    assert status == 202
    assert answer["00081198"]["Value"] == [failed(STUDY_MISMATCH, other.SOPClassUID, other.SOPInstanceUID)]
    assert answer["00081199"]["Value"] == [referenced(server, mine)]
    assert list(stored_blobs(server)) == [mine.SOPInstanceUID]


async def test_hostile_uids_fail_and_nothing_is_written(server: ThreadedServer) -> None:
    traversal = make_ct()
    traversal.SOPInstanceUID = traversal.file_meta.MediaStorageSOPInstanceUID = "../../etc/passwd"
    too_long = make_ct()
    too_long.SOPInstanceUID = too_long.file_meta.MediaStorageSOPInstanceUID = "1." + "2" * 70
    bad_study = make_ct()
    bad_study.StudyInstanceUID = "1.2.3/../../x"
    status, headers, answer = await post(server, "/studies", body(*map(to_bytes, (traversal, too_long, bad_study))))
    assert status == 409
    assert answer == {"00081190": ur(), "00081198": {"vr": "SQ", "Value": [
        failed(CANNOT_UNDERSTAND, CTImageStorage),  # the invalid UIDs are not echoed
        failed(CANNOT_UNDERSTAND, CTImageStorage),
        failed(CANNOT_UNDERSTAND, CTImageStorage, bad_study.SOPInstanceUID),
    ]}}
    assert "SOPInstanceUID is not a valid UID" in headers["Warning"]
    assert "StudyInstanceUID is not a valid UID" in headers["Warning"]
    assert instance_count(server) == 0 and incoming_files(server) == []
    assert server.archive is not None
    data_dir = server.archive.settings.data_dir
    assert not any("etc" in p.parts or "passwd" in p.name for p in Path(data_dir).rglob("*"))
    assert requests.get(f"{server.base_url}/healthz", timeout=10).status_code == 200


async def test_duplicates(server: ThreadedServer) -> None:
    [ds] = study_of(1)
    blob = to_bytes(ds)
    first = await post(server, "/studies", body(blob))
    again = await post(server, "/studies", body(blob))
    assert first[0] == again[0] == 200 and first[2] == again[2]
    changed = make_ct(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID, sop=ds.SOPInstanceUID, seed=99)
    status, _, answer = await post(server, "/studies", body(to_bytes(changed)))
    assert status == 409
    assert answer["00081198"]["Value"] == [failed(DUPLICATE_CONFLICT, ds.SOPClassUID, ds.SOPInstanceUID)]
    assert stored_blobs(server) == {ds.SOPInstanceUID: blob}
    assert server.archive is not None
    assert len([e for e in server.archive.changes(0, 100) if e.type == "InstanceStored"]) == 1


# -- refused requests ---------------------------------------------------------------------
@pytest.mark.parametrize("content_type, reason", [
    ("application/json", "application/json is not supported"),
    ("multipart/related; type=\"application/dicom+xml\"; boundary=x", 'type="application/dicom+xml"'),
    ("multipart/form-data; boundary=x", "multipart/form-data is not supported"),
])
async def test_unsupported_media_types_415(server: ThreadedServer, content_type: str, reason: str) -> None:
    [ds] = study_of(1)
    status, _, answer = await post(server, "/studies", body(to_bytes(ds), boundary="x"), content_type)
    assert status == 415
    assert reason in answer["error"]
    assert 'multipart/related; type="application/dicom"' in answer["error"]
    assert instance_count(server) == 0


async def test_part_that_is_not_application_dicom_415(server: ThreadedServer) -> None:
    [ds] = study_of(1)
    status, _, answer = await post(server, "/studies", body(to_bytes(ds), part_type="text/plain"))
    assert status == 415 and answer == {"error": "part 1 is text/plain, not application/dicom"}
    assert instance_count(server) == 0 and incoming_files(server) == []


async def test_part_without_content_type_is_taken_as_application_dicom(server: ThreadedServer) -> None:
    [ds] = study_of(1)
    status, _, _ = await post(server, "/studies", body(to_bytes(ds), part_type=None))
    assert status == 200 and instance_count(server) == 1


async def test_accept_other_than_json_406(server: ThreadedServer) -> None:
    [ds] = study_of(1)
    status, _, answer = await post(server, "/studies", body(to_bytes(ds)), Accept="application/dicom+xml")
    assert status == 406 and "application/dicom+json" in answer["error"]
    assert instance_count(server) == 0


@pytest.mark.parametrize("content_type", [MULTIPART, f"{MULTIPART}; boundary=not-the-one"])
async def test_missing_or_wrong_boundary_400(server: ThreadedServer, content_type: str) -> None:
    [ds] = study_of(1)
    status, _, answer = await post(server, "/studies", body(to_bytes(ds)), content_type)
    assert status == 400 and "boundary" in answer["error"]
    assert instance_count(server) == 0 and incoming_files(server) == []


async def test_truncated_final_part_400(server: ThreadedServer) -> None:
    datasets = study_of(2)
    whole = body(*map(to_bytes, datasets))
    cut = whole[: len(whole) - len(to_bytes(datasets[1])) // 2]  # mid second part
    status, headers, answer = await post(server, "/studies", cut)
    assert status == 400
    assert answer == {  # the complete first part is stored and listed
        "00081190": ur(f"{server.base_url}/dicom-web/studies/{datasets[0].StudyInstanceUID}"),
        "00081199": {"vr": "SQ", "Value": [referenced(server, datasets[0])]},
        "0008119A": {"vr": "SQ", "Value": [{"00081197": us(CANNOT_UNDERSTAND)}]},
    }
    assert "truncated" in headers["Warning"]
    assert list(stored_blobs(server)) == [datasets[0].SOPInstanceUID]
    assert incoming_files(server) == []
    only = body(to_bytes(datasets[1]))
    status, _, answer = await post(server, "/studies", only[: len(only) // 2])
    assert status == 400 and "truncated" in answer["error"]
    assert instance_count(server) == 1 and incoming_files(server) == []


async def test_empty_body_400(server: ThreadedServer) -> None:
    status, _, answer = await post(server, "/studies", f"--{BOUNDARY}--\r\n".encode())
    assert status == 400 and answer == {"error": "the request holds no instance"}


async def test_part_over_the_limit_413(small_server: ThreadedServer) -> None:
    small, big, after = make_ct(), make_ct(rows=128, columns=128), make_ct()
    assert len(to_bytes(small)) < 20_000 < len(to_bytes(big))
    status, headers, answer = await post(small_server, "/studies", body(*map(to_bytes, (small, big, after))))
    assert status == 413
    assert answer == {
        "00081190": ur(f"{small_server.base_url}/dicom-web/studies/{small.StudyInstanceUID}"),
        "00081199": {"vr": "SQ", "Value": [referenced(small_server, small)]},
        "0008119A": {"vr": "SQ", "Value": [{"00081197": us(OUT_OF_RESOURCES)}]},
    }
    assert "A700 an instance exceeds the limit of 20000 bytes (stow_max_part_bytes)" in headers["Warning"]
    assert list(stored_blobs(small_server)) == [small.SOPInstanceUID]
    assert incoming_files(small_server) == []
    status, _, answer = await post(small_server, "/studies", body(to_bytes(big)))
    assert status == 413 and "stow_max_part_bytes" in answer["error"]
    assert instance_count(small_server) == 1 and incoming_files(small_server) == []


async def test_request_over_the_limit_413(small_server: ThreadedServer) -> None:
    parts = [to_bytes(ds) for ds in study_of(12)]
    padded = body(*parts) + b"\r\n" * 60_000  # epilogue: over 100 kB with Content-Length
    status, _, answer = await post(small_server, "/studies", padded)
    assert status == 413 and "stow_max_request_bytes" in answer["error"]
    assert instance_count(small_server) == 0

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for part in [to_bytes(ds) for ds in study_of(8, rows=90)]:
            yield body(part)[: -len(f"--{BOUNDARY}--\r\n")]
        yield f"--{BOUNDARY}--\r\n".encode()

    status, _, answer = await post(small_server, "/studies", chunked())
    assert status == 413
    assert 0 < len(answer["00081199"]["Value"]) < 8
    assert instance_count(small_server) == len(answer["00081199"]["Value"])
    assert incoming_files(small_server) == []


async def test_malformed_study_in_the_path_400(server: ThreadedServer) -> None:
    [ds] = study_of(1)
    status, _, answer = await post(server, "/studies/1.2.abc", body(to_bytes(ds)))
    assert status == 400 and "StudyInstanceUID of the target resource" in answer["error"]
    assert instance_count(server) == 0


def test_duplicate_policy_keep_answers_202_with_warning_reason(settings: Settings) -> None:
    srv = ThreadedServer(settings.replace(duplicate_policy="keep")).start()
    try:
        [ds] = study_of(1)
        other = make_ct(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID, sop=ds.SOPInstanceUID, seed=5)
        client = DICOMwebClient(url=f"{srv.base_url}/dicom-web")
        client.store_instances(datasets=[dcmread(BytesIO(to_bytes(ds)))])
        resp = requests.post(f"{srv.base_url}/dicom-web/studies", data=body(to_bytes(other)), timeout=30,
                             headers={"Content-Type": f"{MULTIPART}; boundary={BOUNDARY}"})
        assert resp.status_code == 202
        assert resp.json()["00081199"]["Value"] == [{**referenced(srv, ds), "00081196": us(0xB000)}]
        assert stored_blobs(srv) == {ds.SOPInstanceUID: to_bytes(ds)}  # the first copy is kept
    finally:
        srv.stop()


def test_client_gone_mid_part_leaves_no_spool_and_server_serves_on(server: ThreadedServer) -> None:
    import socket
    import time

    [ds] = study_of(1, rows=1024)  # 2 MiB: spooled to a file before the part ends
    data = body(to_bytes(ds))
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
            f"Content-Type: {MULTIPART}; boundary={BOUNDARY}\r\n\r\n").encode()

    def wait_until(condition: Any) -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)  # polling the server's incoming folder
        assert condition()

    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(head + data[: len(data) * 3 // 4])
        wait_until(lambda: incoming_files(server) != [])  # the server is mid-part
    wait_until(lambda: incoming_files(server) == [])  # and removes the spool when the client leaves
    assert instance_count(server) == 0
    resp = requests.post(f"{server.base_url}/dicom-web/studies", data=data, timeout=30,
                         headers={"Content-Type": f"{MULTIPART}; boundary={BOUNDARY}"})
    assert resp.status_code == 200 and instance_count(server) == 1


async def test_part_of_dicom_json_type_among_instances_415(server: ThreadedServer) -> None:
    [ds] = study_of(1)
    status, _, answer = await post(server, "/studies", body(to_bytes(ds), part_type="application/dicom+json"))
    assert status == 415 and answer == {"error": "part 1 is application/dicom+json, not application/dicom"}
    status, _, answer = await post(server, "/studies", to_bytes(ds), "application/dicom+xml")
    assert status == 415 and "application/dicom+xml is not supported" in answer["error"]


async def test_one_sop_instance_uid_twice_in_a_request_leaves_one_object(server: ThreadedServer) -> None:
    """Regression (fuzz run): two parts under one SOP Instance UID with different content
    are ingested concurrently; the loser was refused (C002) but its object stayed in the
    store, and its spool in the incoming folder, until the orphan sweep."""
    [ds] = study_of(1)
    other = make_ct(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID, sop=ds.SOPInstanceUID, seed=99)
    status, _, answer = await post(server, "/studies", body(to_bytes(ds), to_bytes(other)))
    assert status == 202
    assert answer["00081198"]["Value"] == [failed(DUPLICATE_CONFLICT, ds.SOPClassUID, ds.SOPInstanceUID)]
    [kept] = stored_blobs(server).values()
    assert kept in (to_bytes(ds), to_bytes(other))
    assert server.archive is not None
    objects = Path(server.archive.settings.resolved_storage_url)
    assert len([p for p in objects.rglob("*.dcm") if ".tmp" not in p.parts]) == 1
    assert incoming_files(server) == []
