"""De-identification on export (PS3.15 E.1 Basic Application Level Confidentiality
Profile, pacs/deidentify.py): the profile's actions on real objects, UIDs remapped
consistently across instances, retrieves and archive instances, WADO-RS
``?deidentify=basic`` against the running server, and AI DICOM push subscriptions with
``"deidentify": true`` delivering to a real Storage SCP."""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import replace
from io import BytesIO
from typing import Any, Iterator

import aiohttp
import pytest
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless

from pacs import deidentify
from pacs.archive import Archive
from pacs.errors import InvalidQuery
from pacs.index.keys import forget_cached_keys
from pacs.settings import Settings

from .ai_support import until
from .factory import dataset_part, make_ct, short_uid, to_bytes
from .retrieve_peers import StoreSCP
from .servers import ThreadedServer, free_port

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
REGISTERED_UI = ("SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
                 "ImplementationClassUID")


def study_with_references() -> tuple[list[Dataset], str]:
    """Two CTs of one series (the second references the first in two sequences), an RLE
    secondary capture in a second series; private elements at top level and nested.
    Returns (datasets, study UID)."""
    study = short_uid()
    series, frame = f"{study}.1", f"{study}.9"
    first, second = (make_ct(study=study, series=series, sop=f"{series}.{i}", seed=i) for i in (1, 2))
    for ds in (first, second):
        ds.FrameOfReferenceUID = frame
        ds.PatientBirthDate, ds.InstitutionName = "19611224", "St Elsewhere"
        ds.ReferringPhysicianName, ds.OperatorsName = "House^Gregory", "Tech^Terry"
        ds.add_new(0x00091010, "LO", "private note")
        ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x01, "LO", "more private")
    second.ReferencedImageSequence = Sequence([_reference(first)])
    second.SourceImageSequence = Sequence([_reference(first)])
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "OLD-ID", "HOSP"
    second.OtherPatientIDsSequence = Sequence([other])
    sc = dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    sc.StudyInstanceUID, sc.SeriesInstanceUID = study, f"{study}.2"
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = f"{study}.2.1"
    sc.PatientID, sc.PatientName = "PID1", "Doe^Jane"
    return [first, second, sc], study


def _reference(target: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = target.SOPClassUID, target.SOPInstanceUID
    item.add_new(0x00311001, "LO", "nested private")  # no creator: removed as private all the same
    return item


def uids(ds: Dataset) -> dict[str, list[str]]:
    """Every UI value of ``ds`` and its sequences (file meta included), by keyword."""
    found: dict[str, list[str]] = {}

    def visit(_: Dataset, elem: Any) -> None:
        if elem.VR == "UI" and elem.value:
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            found.setdefault(elem.keyword, []).extend(str(v) for v in values)

    ds.walk(visit)
    if hasattr(ds, "file_meta"):
        ds.file_meta.walk(visit)
    return found


def private_tags(ds: Dataset) -> list[Any]:
    found: list[Any] = []
    ds.walk(lambda _, elem: found.append(elem.tag) if elem.tag.is_private else None)
    return found


def assert_deidentified(out: Dataset, original: Dataset, part10: bool = True) -> None:
    """The profile's visible results on one instance (PS3.15 E.1.1); ``part10``: with the
    File Meta Information it was sent with."""
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod == deidentify.METHOD
    code = out.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert str(out.PatientName) != str(original.PatientName) and out.PatientID != original.PatientID
    assert out.PatientName and out.PatientID  # replaced by a pseudonym, not emptied
    assert out.get("PatientBirthDate") in (None, "", "00010101")
    assert out.get("AccessionNumber", "") == ""
    assert "OtherPatientIDsSequence" not in out
    if "InstitutionName" in original:
        assert out.get("InstitutionName") != original.InstitutionName
    assert not private_tags(out)
    assert out.PixelData == original.PixelData  # untouched, byte for byte
    if part10:
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    before = {v for key, values in uids(original).items() if key not in REGISTERED_UI for v in values}
    after = {key: values for key, values in uids(out).items() if key not in REGISTERED_UI}
    assert after and all(v not in before and v.startswith("2.25.") for vs in after.values() for v in vs)
    assert out.SOPClassUID == original.SOPClassUID


# -- the profile on objects -----------------------------------------------------------------
def test_part10_deidentified_and_consistent(archive: Archive) -> None:
    datasets, _ = study_with_references()
    remap = deidentify.remapper_for(archive)
    out = [dcmread(BytesIO(deidentify.deidentify_part10(to_bytes(ds), remap))) for ds in datasets]
    for result, original in zip(out, datasets):
        assert_deidentified(result, original)
    first, second, sc = out
    assert first.StudyInstanceUID == second.StudyInstanceUID == sc.StudyInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != sc.SeriesInstanceUID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert len({first.SOPInstanceUID, second.SOPInstanceUID, sc.SOPInstanceUID}) == 3
    for name in ("ReferencedImageSequence", "SourceImageSequence"):  # references follow their target
        assert second[name][0].ReferencedSOPInstanceUID == first.SOPInstanceUID
        assert second[name][0].ReferencedSOPClassUID == datasets[0].SOPClassUID
    assert first.PatientID == second.PatientID == sc.PatientID  # one patient stays one patient
    assert sc.file_meta.TransferSyntaxUID == RLELossless


def test_mapping_is_stable_across_archives_and_keyed(settings: Settings) -> None:
    """Another archive on the same index (another server process) maps alike; another key
    maps differently; the dataset-bytes form (C-STORE) agrees with the Part 10 form."""
    [ds, *_], _ = study_with_references()
    one = Archive(settings)
    try:
        mapped = deidentify.remapper_for(one)(ds.SOPInstanceUID)
    finally:
        one.close()
    forget_cached_keys()  # forget the cached key, as a fresh process would
    two = Archive(settings)
    try:
        remap = deidentify.remapper_for(two)
        assert remap(ds.SOPInstanceUID) == mapped and len(mapped) <= 64
        raw = deidentify.deidentify_dataset_bytes(dataset_part(to_bytes(ds)), str(ds.file_meta.TransferSyntaxUID),
                                                  remap)
        assert raw.startswith(b"\x08\x00") and b"Doe^Jane" not in raw and mapped.encode() in raw
    finally:
        two.close()
    keyed = Archive(replace(settings, deidentify_secret="a configured key of 32 characters"))
    try:
        assert deidentify.remapper_for(keyed)(ds.SOPInstanceUID) != mapped
    finally:
        keyed.close()


def test_parameter_values() -> None:
    assert deidentify.requested([]) is False
    assert deidentify.requested(["basic"]) is True
    for bad in (["yes"], [""], ["basic", "basic"], ["BASIC"]):
        with pytest.raises(InvalidQuery, match="deidentify must be"):
            deidentify.requested(bad)


def test_unreadable_object_is_a_failed_instance_not_a_server_error() -> None:
    remap = deidentify.UidRemapper(b"k" * 32)
    with pytest.raises(deidentify.DeidentificationFailed, match="object unreadable") as refused:
        deidentify.deidentify_part10(b"\x00" * 64, remap)
    assert (refused.value.http_status, refused.value.dimse_status) == (406, 0xA702)


# -- WADO-RS ------------------------------------------------------------------------------
def split_multipart(resp: requests.Response) -> list[bytes]:
    head = f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + resp.content)
    assert message.is_multipart() and not message.defects
    return [part.get_payload(decode=True) for part in message.get_payload()]


def retrieve(server: ThreadedServer, path: str, query: str = "?deidentify=basic") -> list[Dataset]:
    resp = requests.get(f"{server.base_url}/dicom-web{path}{query}", headers={"Accept": ANY_SYNTAX}, timeout=30)
    assert resp.status_code == 200, resp.text
    return [dcmread(BytesIO(part)) for part in split_multipart(resp)]


@pytest.fixture
def loaded(server: ThreadedServer) -> tuple[ThreadedServer, list[Dataset], str]:
    datasets, study = study_with_references()
    for ds in datasets:
        server.archive.ingest_bytes(to_bytes(ds), source="test")
    return server, datasets, study


def test_wado_retrieve_deidentified(loaded: tuple[ThreadedServer, list[Dataset], str]) -> None:
    server, datasets, study = loaded
    by_number = {str(ds.SOPInstanceUID): ds for ds in datasets}
    first_run = retrieve(server, f"/studies/{study}")
    second_run = retrieve(server, f"/studies/{study}")
    assert len(first_run) == 3
    remap = deidentify.remapper_for(server.archive)
    originals = {remap(sop): ds for sop, ds in by_number.items()}
    for out in first_run:
        assert_deidentified(out, originals[out.SOPInstanceUID])
    assert sorted(to_bytes(d) for d in first_run) == sorted(to_bytes(d) for d in second_run)  # identical retrieves
    new_study = first_run[0].StudyInstanceUID
    assert {d.StudyInstanceUID for d in first_run} == {new_study} and new_study == remap(study)
    ct = datasets[0]
    [one] = retrieve(server, f"/studies/{study}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}")
    series = retrieve(server, f"/studies/{study}/series/{ct.SeriesInstanceUID}")
    assert one.SOPInstanceUID == remap(ct.SOPInstanceUID) and len(series) == 2
    assert {d.SeriesInstanceUID for d in series} == {one.SeriesInstanceUID}
    referencing = next(d for d in series if "ReferencedImageSequence" in d)
    assert referencing.ReferencedImageSequence[0].ReferencedSOPInstanceUID == one.SOPInstanceUID
    stored = retrieve(server, f"/studies/{study}", query="")  # without the parameter: as stored
    assert {d.SOPInstanceUID for d in stored} == set(by_number)
    assert all(private_tags(d) and d.PatientName == "Doe^Jane" for d in stored if d.Modality == "CT")


@pytest.mark.parametrize("query", ["?deidentify=full", "?deidentify=", "?deidentify=basic&deidentify=basic"])
def test_wado_bad_deidentify_value_is_400(loaded: tuple[ThreadedServer, list[Dataset], str], query: str) -> None:
    server, _, study = loaded
    resp = requests.get(f"{server.base_url}/dicom-web/studies/{study}{query}", timeout=30)
    assert resp.status_code == 400 and "deidentify must be" in resp.text
    meta = requests.get(f"{server.base_url}/dicom-web/studies/{study}/metadata?deidentify=basic", timeout=30)
    assert meta.status_code == 400 and "retrieves only" in meta.text


# -- AI subscriptions ------------------------------------------------------------------------
@pytest.fixture
def ai_server(settings: Settings) -> Iterator[ThreadedServer]:
    fast = replace(settings, http_port=free_port(), stable_seconds=0.3, stability_check_interval=0.05,
                   outbox_retry_seconds=0.05, outbox_poll_seconds=0.05, outbox_max_attempts=4)
    srv = ThreadedServer(fast).start()
    yield srv
    srv.stop()


async def _post(s: aiohttp.ClientSession, url: str, body: Any, status: int) -> Any:
    async with s.post(url, json=body) as resp:
        text = await resp.text()
        assert resp.status == status, text
        return await resp.json()


async def test_push_subscription_delivers_deidentified(ai_server: ThreadedServer) -> None:
    scp = StoreSCP(ae_title="AI_SCP").start().register(ai_server)
    base = ai_server.base_url + "/api/ai/subscriptions"
    try:
        async with aiohttp.ClientSession() as s:
            bad = {"name": "w", "deidentify": True, "delivery": {"type": "webhook", "url": "http://x/hook"}}
            assert "dicom_push" in (await _post(s, base, bad, 400))["error"]
            await _post(s, base, {"name": "n", "deidentify": "yes",
                                  "delivery": {"type": "dicom_push", "ae_title": "AI_SCP"}}, 400)
            sub = await _post(s, base, {"name": "anon", "deidentify": True, "filter": {"calling_aes": ["CT1"]},
                                        "delivery": {"type": "dicom_push", "ae_title": "AI_SCP"}}, 201)
            assert sub["deidentify"] is True
            datasets, study = study_with_references()
            for ds in datasets:
                ai_server.archive.ingest_bytes(to_bytes(ds), source="test", calling_ae="CT1")
            await until(lambda: len(scp.received) == 3, what="3 de-identified objects at the SCP")
        remap = deidentify.remapper_for(ai_server.archive)
        originals = {remap(str(ds.SOPInstanceUID)): ds for ds in datasets}
        assert set(scp.received) == set(originals)  # the C-STOREs named the new SOP Instance UIDs
        for sop, received in scp.received.items():
            out = received.dataset()
            assert out.SOPInstanceUID == sop
            assert_deidentified(out, originals[sop], part10=False)
            assert out.StudyInstanceUID == remap(study)
    finally:
        scp.stop()
