"""WADO-RS (PS3.18 10.4) against the running server: metadata from the index with
absolute BulkDataURIs, ETag / If-None-Match, streamed multipart instances as stored,
transfer syntax negotiation and transcoding, errors, CORS; through dicomweb-client,
requests and aiohttp."""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import aiohttp
import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from sqlalchemy import select

from dicomweb import wado
from pacs.index.models import Instance

from .factory import ROOT, make_ct, to_bytes
from .servers import ThreadedServer

MULTIPART = 'multipart/related; type="application/dicom"'


@dataclass
class Loaded:
    """A study of two series: two CT instances (Explicit VR LE, one with an ICC profile
    as bulk data) and one RLE Lossless secondary capture."""

    server: ThreadedServer
    study: str
    ct_series: str
    sc_series: str
    originals: dict[str, bytes]  # SOP Instance UID -> Part 10 bytes as sent

    def url(self, path: str = "") -> str:
        return f"{self.server.base_url}/dicom-web{path}"

    @property
    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.url())


def _rle_instance(study: str, series: str) -> bytes:
    ds = dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(ROOT)
    ds.PatientID = "PID1"
    return to_bytes(ds)


@pytest.fixture
def loaded(server: ThreadedServer) -> Loaded:
    study, ct_series, sc_series = (generate_uid(ROOT) for _ in range(3))
    cts = [make_ct(study=study, series=ct_series, seed=i) for i in range(2)]
    cts[0].ICCProfile = bytes(range(256)) * 8  # 2 KiB of OB: a bulk data element
    blobs = [to_bytes(ds) for ds in cts] + [_rle_instance(study, sc_series)]
    originals = {}
    for blob in blobs:
        server.archive.ingest_bytes(blob, source="test")
        originals[dcmread(BytesIO(blob)).SOPInstanceUID] = blob
    return Loaded(server, study, ct_series, sc_series, originals)


def get(loaded: Loaded, path: str, **headers: str) -> requests.Response:
    return requests.get(loaded.url(path), headers=headers, timeout=30)


def split_multipart(resp: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part, parsed by the standard library (RFC 2046)."""
    head = f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + resp.content)
    assert message.is_multipart() and not message.defects
    return [(part["Content-Type"], part.get_payload(decode=True)) for part in message.get_payload()]


def stored_json(loaded: Loaded) -> dict[str, str]:
    """SOP Instance UID -> the DICOM JSON text held in the index."""
    with loaded.server.archive.db.read() as conn:
        rows = conn.execute(select(Instance.sop_instance_uid, Instance.dicom_json)).all()
    return dict(rows)


def expected_metadata(loaded: Loaded, series: str, sop: str, root: str | None = None) -> dict[str, Any]:
    """The stored JSON of an instance with its ``bulk:`` URIs resolved independently
    against ``root`` (default: the server's /dicom-web URL)."""
    import json

    base = f"{root or loaded.url()}/studies/{loaded.study}/series/{series}/instances/{sop}/bulk/"

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (base + v[5:] if k == "BulkDataURI" else resolve(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(json.loads(stored_json(loaded)[sop]))


def sops_of(loaded: Loaded, series: str) -> list[str]:
    return [sop for sop, blob in loaded.originals.items()
            if dcmread(BytesIO(blob), stop_before_pixels=True).SeriesInstanceUID == series]


# -- metadata -------------------------------------------------------------------------
def test_study_series_instance_metadata_equal_stored_json(loaded: Loaded) -> None:
    client = loaded.client
    # dicomweb-client sends "Host: 127.0.0.1" without the port (web.py: headers['Host'] =
    # self.host), and absolute URIs are built from the Host the client sent.
    root = "http://127.0.0.1/dicom-web"
    ct, sc = sops_of(loaded, loaded.ct_series), sops_of(loaded, loaded.sc_series)
    study = client.retrieve_study_metadata(loaded.study)
    assert study == [expected_metadata(loaded, loaded.ct_series, s, root) for s in ct] + [
        expected_metadata(loaded, loaded.sc_series, s, root) for s in sc]
    series = client.retrieve_series_metadata(loaded.study, loaded.ct_series)
    assert series == [expected_metadata(loaded, loaded.ct_series, s, root) for s in ct]
    instance = client.retrieve_instance_metadata(loaded.study, loaded.sc_series, sc[0])
    assert instance == expected_metadata(loaded, loaded.sc_series, sc[0], root)
    resp = requests.get(loaded.url(f"/studies/{loaded.study}/metadata"), timeout=30)
    assert resp.json() == [expected_metadata(loaded, loaded.ct_series, s) for s in ct] + [
        expected_metadata(loaded, loaded.sc_series, s) for s in sc]


def test_bulk_data_uris_are_absolute_and_well_formed(loaded: Loaded) -> None:
    sop = sops_of(loaded, loaded.ct_series)[0]
    url = loaded.url(f"/studies/{loaded.study}/series/{loaded.ct_series}/instances/{sop}")
    resp = get(loaded, f"/studies/{loaded.study}/series/{loaded.ct_series}/instances/{sop}/metadata")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/dicom+json"
    [body] = resp.json()
    assert body["7FE00010"] == {"vr": "OW", "BulkDataURI": f"{url}/bulk/pixeldata"}
    assert body["00282000"] == {"vr": "OB", "BulkDataURI": f"{url}/bulk/0"}
    assert "bulk:" not in resp.text
    assert '"BulkDataURI":"bulk:' in stored_json(loaded)[sop]  # the index keeps them relative


def test_expand_bulk_uris_rewrites_only_bulk_data_uris() -> None:
    stored = ('{"00081030":{"vr":"LO","Value":["\\"BulkDataURI\\":\\"bulk:0"]},'
              '"7FE00010": {"vr":"OB","BulkDataURI" : "bulk:pixeldata"}}')
    out = wado.expand_bulk_uris(stored, 'http://h"x/i')
    import json

    parsed = json.loads(out)
    assert parsed["00081030"]["Value"] == ['"BulkDataURI":"bulk:0']
    assert parsed["7FE00010"]["BulkDataURI"] == 'http://h"x/i/bulk/pixeldata'


async def test_metadata_etag_and_if_none_match(loaded: Loaded) -> None:
    url = loaded.url(f"/studies/{loaded.study}/series/{loaded.ct_series}/metadata")
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            etag = resp.headers["ETag"]
            first = await resp.read()
        assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
        for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            async with http.get(url, headers={"If-None-Match": header}) as resp:
                assert resp.status == 304 and resp.headers["ETag"] == etag
                assert await resp.read() == b""
        async with http.get(url, headers={"If-None-Match": '"stale"'}) as resp:
            assert resp.status == 200 and await resp.read() == first
        async with http.get(loaded.url(f"/studies/{loaded.study}/metadata")) as resp:
            assert resp.headers["ETag"] != etag  # another resource, another tag
        extra = make_ct(study=loaded.study, series=loaded.ct_series, seed=9)
        loaded.server.archive.ingest_bytes(to_bytes(extra), source="test")
        async with http.get(url, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 200 and resp.headers["ETag"] != etag
            assert len(await resp.json()) == 3


def test_metadata_accept(loaded: Loaded) -> None:
    path = f"/studies/{loaded.study}/metadata"
    ohif = "application/dicom+json, multipart/related; type=application/octet-stream; transfer-syntax=*"
    assert get(loaded, path, Accept=ohif).status_code == 200
    resp = get(loaded, path, Accept=MULTIPART)
    assert resp.status_code == 406 and "application/dicom+json" in resp.json()["error"]


# -- instances -----------------------------------------------------------------------
def test_retrieve_study_sends_stored_files_whole(loaded: Loaded) -> None:
    """As stored from the folder store: sendfile, with the exact Content-Length."""
    resp = get(loaded, f"/studies/{loaded.study}", Accept=f"{MULTIPART}; transfer-syntax=*")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith(MULTIPART + "; boundary=")
    assert "Transfer-Encoding" not in resp.headers
    assert int(resp.headers["Content-Length"]) == len(resp.content)
    parts = split_multipart(resp)
    assert [body for _, body in parts] == list(loaded.originals.values())
    syntaxes = [ctype.split("transfer-syntax=")[1] for ctype, _ in parts]
    assert syntaxes == [ExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless]
    assert all(ctype.startswith("application/dicom; ") for ctype, _ in parts)


def _same(got: Dataset, sent: bytes) -> None:
    original = dcmread(BytesIO(sent))
    assert got == original  # every data element, Pixel Data bytes included
    assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert got.PixelData == original.PixelData


def test_dicomweb_client_retrieve_study_series_instance(loaded: Loaded) -> None:
    client = loaded.client
    study = client.retrieve_study(loaded.study, media_types=(("application/dicom", "*"),))
    assert [ds.SOPInstanceUID for ds in study] == list(loaded.originals)
    for ds in study:
        _same(ds, loaded.originals[ds.SOPInstanceUID])
    series = client.retrieve_series(loaded.study, loaded.ct_series)  # default: Explicit VR LE, stored so
    assert [ds.SOPInstanceUID for ds in series] == sops_of(loaded, loaded.ct_series)
    for ds in series:
        _same(ds, loaded.originals[ds.SOPInstanceUID])
    sop = sops_of(loaded, loaded.sc_series)[0]
    instance = client.retrieve_instance(loaded.study, loaded.sc_series, sop, media_types=(("application/dicom", "*"),))
    _same(instance, loaded.originals[sop])


def test_transcode_rle_to_explicit_vr_little_endian(loaded: Loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wado, "CHUNK_SIZE", 333)  # many chunks per object
    sop = sops_of(loaded, loaded.sc_series)[0]
    original = dcmread(BytesIO(loaded.originals[sop]))
    ds = loaded.client.retrieve_instance(loaded.study, loaded.sc_series, sop,
                                         media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPInstanceUID == sop and ds.file_meta.MediaStorageSOPInstanceUID == sop
    assert np.array_equal(ds.pixel_array, original.pixel_array)
    assert ds.PatientID == original.PatientID and ds.Rows == original.Rows
    explicit = f"{MULTIPART}; transfer-syntax={ExplicitVRLittleEndian}"
    resp = get(loaded, f"/studies/{loaded.study}", Accept=explicit)
    assert resp.headers.get("Transfer-Encoding") == "chunked"  # a transcoded part: length not known ahead
    parts = split_multipart(resp)
    assert [c.split("transfer-syntax=")[1] for c, _ in parts] == [ExplicitVRLittleEndian] * 3
    assert [body for _, body in parts][:2] == list(loaded.originals.values())[:2]  # already ELE: as stored


def test_accept_preference_and_absent_header(loaded: Loaded) -> None:
    sop = sops_of(loaded, loaded.sc_series)[0]
    path = f"/studies/{loaded.study}/series/{loaded.sc_series}/instances/{sop}"
    original = dcmread(BytesIO(loaded.originals[sop]))
    for accept in (None, "*/*", MULTIPART, "multipart/related; type=application/dicom"):
        # no transfer-syntax: the default of application/dicom, Explicit VR LE (PS3.18 8.7.3.5.2)
        resp = requests.get(loaded.url(path), headers={"Accept": accept} if accept else {}, timeout=30)
        [(ctype, body)] = split_multipart(resp)
        assert ctype.endswith(f"transfer-syntax={ExplicitVRLittleEndian}")
        assert np.array_equal(dcmread(BytesIO(body)).pixel_array, original.pixel_array)
    resp = get(loaded, path, Accept=f"{MULTIPART}; transfer-syntax=*")
    [(ctype, body)] = split_multipart(resp)
    assert ctype.endswith(f"transfer-syntax={RLELossless}") and body == loaded.originals[sop]
    jpeg2000 = f"{MULTIPART}; transfer-syntax=1.2.840.10008.1.2.4.90"
    explicit = f"{MULTIPART}; transfer-syntax={ExplicitVRLittleEndian}"
    resp = get(loaded, path, Accept=f"{jpeg2000}, {explicit}; q=0.5")
    [(ctype, _)] = split_multipart(resp)
    assert ctype.endswith(f"transfer-syntax={ExplicitVRLittleEndian}")


@pytest.mark.parametrize("accept, reason", [
    (f"{MULTIPART}; transfer-syntax=1.2.840.10008.1.2.4.90", "cannot be sent in 1.2.840.10008.1.2.4.90"),
    (f"{MULTIPART}; transfer-syntax=1.2.840.10008.1.2.2", "cannot be sent in 1.2.840.10008.1.2.2"),
    ('multipart/related; type="application/octet-stream"', "multipart/related"),
    ("application/dicom", "multipart/related"),
    ("application/dicom+json", "multipart/related"),
])
def test_not_acceptable(loaded: Loaded, accept: str, reason: str) -> None:
    resp = get(loaded, f"/studies/{loaded.study}", Accept=accept)
    assert resp.status_code == 406 and reason in resp.json()["error"]
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


# -- errors, CORS ---------------------------------------------------------------------
def test_unknown_resources_are_404_with_a_reason(loaded: Loaded) -> None:
    unknown = "1.2.3.999"
    sc_sop = sops_of(loaded, loaded.sc_series)[0]
    cases = [
        (f"/studies/{unknown}", f"study {unknown} not found"),
        (f"/studies/{loaded.study}/series/{unknown}", f"series {unknown} of study {loaded.study} not found"),
        (f"/studies/{loaded.study}/series/{loaded.ct_series}/instances/{sc_sop}", f"instance {sc_sop}"),
        (f"/studies/{unknown}/series/{loaded.sc_series}/instances/{sc_sop}", "not found"),
    ]
    for path, reason in cases:
        for suffix in ("", "/metadata"):
            resp = get(loaded, path + suffix)
            assert resp.status_code == 404, (path, suffix)
            assert reason in resp.json()["error"]
    resp = get(loaded, "/studies/not..a.uid/metadata")
    assert resp.status_code == 400 and "StudyInstanceUID: not a UID" in resp.json()["error"]
    assert get(loaded, "/studies/1.2..3").status_code == 400


def test_cors_headers_and_preflight(loaded: Loaded) -> None:
    origin = {"Origin": "http://viewer.example"}
    for path in (f"/studies/{loaded.study}", f"/studies/{loaded.study}/metadata"):
        resp = get(loaded, path, **origin)
        assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "ETag" in resp.headers["Access-Control-Expose-Headers"]
    sop = sops_of(loaded, loaded.ct_series)[0]
    for path in (f"/studies/{loaded.study}", f"/studies/{loaded.study}/series/{loaded.ct_series}/metadata",
                 f"/studies/{loaded.study}/series/{loaded.ct_series}/instances/{sop}/metadata"):
        resp = requests.options(loaded.url(path), timeout=30, headers={
            **origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept"})
        assert resp.status_code == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"


def test_head_sends_headers_only(loaded: Loaded) -> None:
    resp = requests.head(loaded.url(f"/studies/{loaded.study}"), timeout=30)
    assert resp.status_code == 200 and resp.content == b""
    assert resp.headers["Content-Type"].startswith(MULTIPART)


def _blob_key(loaded: Loaded, sop: str) -> str:
    with loaded.server.archive.db.read() as conn:
        return conn.execute(select(Instance.blob_key).where(Instance.sop_instance_uid == sop)).scalar_one()


def test_missing_objects(loaded: Loaded) -> None:
    """An index row without its object: 503 while no byte was sent; later, the response
    is closed before its close delimiter, so the client sees a broken message."""
    ct = sops_of(loaded, loaded.ct_series)
    loaded.server.archive.store.delete(_blob_key(loaded, ct[1]))
    resp = get(loaded, f"/studies/{loaded.study}/series/{loaded.ct_series}/instances/{ct[1]}")
    assert resp.status_code == 503 and f"object of {ct[1]} missing" in resp.json()["error"]
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(loaded, f"/studies/{loaded.study}/series/{loaded.ct_series}")
    resp = get(loaded, f"/studies/{loaded.study}/series/{loaded.sc_series}")  # the server goes on
    assert resp.status_code == 200 and len(split_multipart(resp)) == 1
