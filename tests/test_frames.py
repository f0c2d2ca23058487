"""WADO-RS Retrieve Frames and Retrieve Bulkdata (PS3.18 10.4.1.1.4-5) against the running
server: frames equal pydicom's decoding of the original file, stored compressed frames
equal pydicom's fragments, OHIF's Accept header, Range (RFC 9110 14), S3 equals folder."""

from __future__ import annotations

import email.parser
import email.policy
import json
from dataclasses import dataclass
from io import BytesIO
from typing import Iterator

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from sample_data import generate_us_multiframe

from .factory import ROOT, make_ct, to_bytes
from .servers import ThreadedServer

OHIF_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
MEDIA = {RLELossless: "image/dicom-rle", JPEGLSLossless: "image/jls", JPEG2000Lossless: "image/jp2",
         JPEGBaseline8Bit: "image/jpeg"}


def multiframe_ct(frames: int = 3, rows: int = 64, columns: int = 48, seed: int = 0) -> Dataset:
    """A multi-frame CT (signed 16-bit, intercept -1024) with distinct random frames."""
    ds = make_ct(rows=rows, columns=columns, seed=seed)
    ds.NumberOfFrames = frames
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(-1000, 3000, (frames, rows, columns), dtype=np.int16).tobytes()
    return ds


def compressed(ds: Dataset, syntax: str, fragments_per_frame: int = 1) -> Dataset:
    """``ds`` compressed with pydicom's encoders; optionally re-encapsulated with each
    frame split over several fragments (PS3.5 A.4) and a Basic Offset Table."""
    ds.compress(syntax, generate_instance_uid=False)
    if fragments_per_frame > 1:
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
        ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=True)
    return ds


@dataclass
class Stored:
    server: ThreadedServer
    datasets: dict[str, Dataset]  # label -> dataset as sent

    def url(self, path: str = "") -> str:
        return f"{self.server.base_url}/dicom-web{path}"

    def frames_url(self, label: str, frames: str) -> str:
        ds = self.datasets[label]
        return self.url(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                        f"/instances/{ds.SOPInstanceUID}/frames/{frames}")

    def frames(self, label: str, numbers: list[int], media_types=None) -> list[bytes]:
        ds = self.datasets[label]
        client = DICOMwebClient(url=self.url())
        return client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                               numbers, media_types=media_types)


def _samples() -> dict[str, Dataset]:
    samples = {
        "ct": multiframe_ct(),
        "us": generate_us_multiframe(4, rows=48, columns=64, seed=5),
        "rle": compressed(multiframe_ct(seed=1), RLELossless),
        "jls": compressed(multiframe_ct(seed=2), JPEGLSLossless),
        "j2k": compressed(multiframe_ct(seed=3), JPEG2000Lossless, fragments_per_frame=2),
        "rgb_rle": dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm")),
        "jpeg": dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")),  # YBR_FULL_422 baseline
    }
    for ds in samples.values():
        ds.StudyInstanceUID = generate_uid(ROOT)
        ds.SeriesInstanceUID = generate_uid(ROOT)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(ROOT)
    return samples


def _load(server: ThreadedServer) -> Stored:
    samples = _samples()
    for ds in samples.values():
        server.archive.ingest_bytes(to_bytes(ds), source="test")
    return Stored(server, {k: dcmread(BytesIO(to_bytes(ds))) for k, ds in samples.items()})


@pytest.fixture
def stored(server: ThreadedServer) -> Stored:
    return _load(server)


def expected_native(ds: Dataset, number: int) -> bytes:
    """Frame ``number`` decoded by pydicom from the original file, little endian."""
    array = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        array = array[number - 1]
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def expected_encoded(ds: Dataset, number: int) -> bytes:
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))[number - 1]


def split_multipart(resp: requests.Response) -> list[tuple[str, bytes]]:
    head = f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + resp.content)
    assert message.is_multipart() and not message.defects
    return [(part["Content-Type"], part.get_payload(decode=True)) for part in message.get_payload()]


# -- frames ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["ct", "us", "rle", "jls", "j2k", "rgb_rle", "jpeg"])
def test_default_frames_are_native_pixels_of_each_frame(stored: Stored, label: str) -> None:
    ds = stored.datasets[label]
    count = int(ds.get("NumberOfFrames", 1))
    numbers = list(range(count, 0, -1))  # in the order asked, last first
    got = stored.frames(label, numbers)
    assert got == [expected_native(ds, n) for n in numbers]
    resp = requests.get(stored.frames_url(label, "1"), timeout=30)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    assert split_multipart(resp) == [(f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}",
                                      expected_native(ds, 1))]


@pytest.mark.parametrize("label", ["rle", "jls", "j2k", "rgb_rle", "jpeg"])
def test_compressed_frames_as_stored_by_media_type(stored: Stored, label: str) -> None:
    ds = stored.datasets[label]
    syntax = str(ds.file_meta.TransferSyntaxUID)
    count = int(ds.get("NumberOfFrames", 1))
    got = stored.frames(label, list(range(1, count + 1)), media_types=((MEDIA[syntax], syntax),))
    assert got == [expected_encoded(ds, n) for n in range(1, count + 1)]
    resp = requests.get(stored.frames_url(label, str(count)), timeout=30,
                        headers={"Accept": f'multipart/related; type="{MEDIA[syntax]}"'})
    assert split_multipart(resp) == [(f"{MEDIA[syntax]}; transfer-syntax={syntax}", expected_encoded(ds, count))]


@pytest.mark.parametrize("label", ["ct", "j2k", "jls"])
def test_ohif_accept_gets_stored_syntax_in_each_part(stored: Stored, label: str) -> None:
    ds = stored.datasets[label]
    syntax = str(ds.file_meta.TransferSyntaxUID)
    resp = requests.get(stored.frames_url(label, "1,3"), headers={"Accept": OHIF_ACCEPT}, timeout=30)
    assert resp.status_code == 200
    parts = split_multipart(resp)
    if label == "ct":
        assert parts == [(f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}", expected_native(ds, n))
                         for n in (1, 3)]
    else:
        assert parts == [(f"application/octet-stream; transfer-syntax={syntax}", expected_encoded(ds, n))
                         for n in (1, 3)]


@pytest.mark.parametrize("label", ["ct", "jls"])
def test_implicit_little_endian_label(stored: Stored, label: str) -> None:
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2'
    resp = requests.get(stored.frames_url(label, "2"), headers={"Accept": accept}, timeout=30)
    expected = expected_native(stored.datasets[label], 2)
    assert split_multipart(resp) == [("application/octet-stream; transfer-syntax=1.2.840.10008.1.2", expected)]


def test_frame_list_errors(stored: Stored) -> None:
    for frames, status in (("0", 400), ("1,x", 400), ("-1", 400), ("1,,2", 400), ("4", 404), ("1,99", 404)):
        resp = requests.get(stored.frames_url("ct", frames), timeout=30)
        assert resp.status_code == status, frames
        assert "error" in resp.json()
    ds = stored.datasets["ct"]
    unknown = stored.url(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/1.2.3/frames/1")
    assert requests.get(unknown, timeout=30).status_code == 404
    bad_uid = stored.url(f"/studies/{ds.StudyInstanceUID}/series/x.y/instances/1.2.3/frames/1")
    assert requests.get(bad_uid, timeout=30).status_code == 400


def test_unproducible_representation_is_406(stored: Stored) -> None:
    for label, accept in (("ct", 'multipart/related; type="image/jp2"'),
                          ("jls", 'multipart/related; type="image/jp2"'),
                          ("jls", f'multipart/related; type="application/octet-stream"; transfer-syntax={JPEG2000Lossless}')):
        resp = requests.get(stored.frames_url(label, "1"), headers={"Accept": accept}, timeout=30)
        assert resp.status_code == 406, (label, accept)


def test_single_part_frame_with_range(stored: Stored) -> None:
    ds = stored.datasets["ct"]
    whole = expected_native(ds, 2)
    url = stored.frames_url("ct", "2")
    resp = requests.get(url, headers={"Accept": "application/octet-stream"}, timeout=30)
    assert resp.status_code == 200 and resp.content == whole
    assert resp.headers["Content-Type"] == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
    resp = requests.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=10-19"}, timeout=30)
    assert resp.status_code == 206 and resp.content == whole[10:20]
    assert resp.headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
    resp = requests.get(url, headers={"Accept": "application/octet-stream", "Range": f"bytes={len(whole)}-"}, timeout=30)
    assert resp.status_code == 416 and resp.headers["Content-Range"] == f"bytes */{len(whole)}"
    # single part cannot carry two frames: the multipart range further down the list is used
    resp = requests.get(stored.frames_url("ct", "1,2"), timeout=30,
                        headers={"Accept": "application/octet-stream, multipart/related; type=application/octet-stream"})
    assert [body for _, body in split_multipart(resp)] == [expected_native(ds, 1), whole]


# -- bulk data ------------------------------------------------------------------------------------
def _metadata(stored: Stored, label: str) -> dict:
    ds = stored.datasets[label]
    url = stored.url(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata")
    return requests.get(url, timeout=30).json()[0]


def test_bulkdata_of_metadata_uris(server: ThreadedServer) -> None:
    ds = multiframe_ct()
    ds.ICCProfile = bytes(range(256)) * 9  # 2,304 bytes of OB: bulk data
    seq_item = Dataset()
    seq_item.ICCProfile = bytes(reversed(range(256))) * 8  # inside a sequence: located by decoding
    ds.IconImageSequence = [seq_item]
    server.archive.ingest_bytes(to_bytes(ds), source="test")
    stored = Stored(server, {"ct": ds})
    meta = _metadata(stored, "ct")
    client = DICOMwebClient(url=stored.url())
    icc_uri = meta["00282000"]["BulkDataURI"]
    assert icc_uri.endswith("/bulk/1") or icc_uri.endswith("/bulk/0")
    assert client.retrieve_bulkdata(icc_uri) == [ds.ICCProfile]
    nested_uri = meta["00880200"]["Value"][0]["00282000"]["BulkDataURI"]
    assert client.retrieve_bulkdata(nested_uri) == [seq_item.ICCProfile]
    pixel_uri = meta["7FE00010"]["BulkDataURI"]
    assert client.retrieve_bulkdata(pixel_uri) == [ds.PixelData]
    # single part, Range: 206 with exactly those bytes; suffix ranges; 416 past the end
    octet = {"Accept": "application/octet-stream"}
    resp = requests.get(icc_uri, headers={**octet, "Range": "bytes=100-299"}, timeout=30)
    assert resp.status_code == 206 and resp.content == ds.ICCProfile[100:300]
    assert resp.headers["Content-Range"] == f"bytes 100-299/{len(ds.ICCProfile)}"
    resp = requests.get(pixel_uri, headers={**octet, "Range": "bytes=-7"}, timeout=30)
    assert resp.status_code == 206 and resp.content == ds.PixelData[-7:]
    resp = requests.get(nested_uri, headers={**octet, "Range": "bytes=5-"}, timeout=30)
    assert resp.status_code == 206 and resp.content == seq_item.ICCProfile[5:]
    resp = requests.get(icc_uri, headers={**octet, "Range": "bytes=99999-"}, timeout=30)
    assert resp.status_code == 416
    resp = requests.get(icc_uri, headers=octet, timeout=30)
    assert resp.status_code == 200 and resp.content == ds.ICCProfile
    base = icc_uri.rsplit("/", 1)[0]
    assert requests.get(base + "/7", timeout=30).status_code == 404
    assert requests.get(base + "/abc", timeout=30).status_code == 404


def test_encapsulated_pixeldata_bulk_is_its_frames(stored: Stored) -> None:
    ds = stored.datasets["j2k"]
    uri = _metadata(stored, "j2k")["7FE00010"]["BulkDataURI"]
    resp = requests.get(uri, headers={"Accept": OHIF_ACCEPT}, timeout=30)
    assert [body for _, body in split_multipart(resp)] == [expected_encoded(ds, n) for n in (1, 2, 3)]
    client = DICOMwebClient(url=stored.url())
    assert client.retrieve_bulkdata(uri) == [expected_native(ds, n) for n in (1, 2, 3)]


# -- S3 ------------------------------------------------------------------------------------------
@pytest.fixture
def s3_server(settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedServer]:
    from moto import mock_aws
    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="archive")
        srv = ThreadedServer(settings.replace(storage_url="s3://archive/pacs")).start()
        yield srv
        srv.stop()


def test_frames_from_s3_equal_folder(s3_server: ThreadedServer, tmp_path, database_url) -> None:
    s3 = _load(s3_server)
    assert s3_server.archive.store.__class__.__name__ == "S3Store"
    for label, ds in s3.datasets.items():
        count = int(ds.get("NumberOfFrames", 1))
        assert s3.frames(label, list(range(1, count + 1))) == [expected_native(ds, n) for n in range(1, count + 1)]
        resp = requests.get(s3.frames_url(label, "1"), headers={"Accept": OHIF_ACCEPT}, timeout=30)
        body = split_multipart(resp)[0][1]
        syntax = str(ds.file_meta.TransferSyntaxUID)
        assert body == (expected_native(ds, 1) if syntax == ExplicitVRLittleEndian else expected_encoded(ds, 1))
    meta = _metadata(s3, "ct")
    resp = requests.get(meta["7FE00010"]["BulkDataURI"], headers={"Accept": "application/octet-stream",
                                                                   "Range": "bytes=3-40"}, timeout=30)
    assert resp.status_code == 206 and resp.content == s3.datasets["ct"].PixelData[3:41]
