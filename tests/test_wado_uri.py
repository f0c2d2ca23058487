"""WADO-URI (PS3.18 9) against the running server, at /wado and /dicom-web/wado."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from sample_data import generate_us_multiframe

from .factory import dataset_part, to_bytes
from .servers import ThreadedServer
from .test_rendered import ct, expected_linear


@dataclass
class Loaded:
    server: ThreadedServer
    ds: dict[str, Dataset]
    blobs: dict[str, bytes]

    def get(self, label: str, path: str = "/wado", **params: str) -> requests.Response:
        ds = self.ds[label]
        query = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
                 "objectUID": ds.SOPInstanceUID, **params}
        return requests.get(self.server.base_url + path, params=query, timeout=30)


@pytest.fixture
def loaded(server: ThreadedServer) -> Loaded:
    items = {"ct": ct(seed=1), "us": generate_us_multiframe(3, rows=48, columns=64, seed=4)}
    j2k = ct(seed=2)
    j2k.compress(JPEG2000Lossless, generate_instance_uid=False)
    items["j2k"] = j2k
    blobs = {k: to_bytes(v) for k, v in items.items()}
    for blob in blobs.values():
        server.archive.ingest_bytes(blob, source="test")
    return Loaded(server, {k: dcmread(BytesIO(b)) for k, b in blobs.items()}, blobs)


@pytest.mark.parametrize("path", ["/wado", "/dicom-web/wado"])
def test_default_is_jpeg_of_first_frame(loaded: Loaded, path: str) -> None:
    resp = loaded.get("ct", path)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/jpeg"
    assert Image.open(BytesIO(resp.content)).size == (64, 48)


def test_png_with_window_frame_and_size(loaded: Loaded) -> None:
    resp = loaded.get("ct", contentType="image/png", windowCenter="40", windowWidth="400")
    assert resp.headers["Content-Type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(BytesIO(resp.content))), expected_linear(loaded.ds["ct"], 40, 400))
    resp = loaded.get("us", contentType="image/png", frameNumber="3")
    assert np.array_equal(np.asarray(Image.open(BytesIO(resp.content))), loaded.ds["us"].pixel_array[2])
    resp = loaded.get("ct", contentType="image/jpeg", rows="24", imageQuality="40")
    assert Image.open(BytesIO(resp.content)).size == (32, 24)
    resp = loaded.get("ct", contentType="image/gif,image/png", columns="16")
    assert resp.headers["Content-Type"] == "image/png" and Image.open(BytesIO(resp.content)).size == (16, 12)


def test_application_dicom(loaded: Loaded) -> None:
    resp = loaded.get("ct", contentType="application/dicom")
    assert resp.status_code == 200 and resp.content == loaded.blobs["ct"]
    assert resp.headers["Content-Type"] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    resp = loaded.get("j2k", contentType="application/dicom", transferSyntax="*")
    assert resp.content == loaded.blobs["j2k"]
    resp = loaded.get("j2k", contentType="application/dicom")  # default: Explicit VR LE, decoded
    sent = dcmread(BytesIO(resp.content))
    assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(sent.pixel_array, loaded.ds["j2k"].pixel_array)
    resp = loaded.get("ct", contentType="application/dicom", transferSyntax=ImplicitVRLittleEndian)
    assert dcmread(BytesIO(resp.content)).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert dataset_part(resp.content) != dataset_part(loaded.blobs["ct"])
    assert loaded.get("ct", contentType="application/dicom", transferSyntax=RLELossless).status_code == 406


@pytest.mark.parametrize("params,status", [
    ({"requestType": "WADX"}, 400),
    ({"studyUID": ""}, 400),
    ({"objectUID": "abc"}, 400),
    ({"objectUID": "1.2.3.4"}, 404),
    ({"frameNumber": "0"}, 400),
    ({"frameNumber": "2"}, 404),
    ({"windowCenter": "40"}, 400),
    ({"windowCenter": "a", "windowWidth": "1"}, 400),
    ({"rows": "-3"}, 400),
    ({"imageQuality": "101"}, 400),
    ({"contentType": "image/gif"}, 406),
    ({"contentType": "text/html"}, 406),
])
def test_errors(loaded: Loaded, params: dict, status: int) -> None:
    resp = loaded.get("ct", **params)
    assert resp.status_code == status and "error" in resp.json()


def test_missing_parameters(loaded: Loaded) -> None:
    resp = requests.get(loaded.server.base_url + "/wado", params={"requestType": "WADO"}, timeout=30)
    assert resp.status_code == 400 and "studyUID" in resp.json()["error"]
