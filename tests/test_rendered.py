"""WADO-RS Rendered and Thumbnail resources (PS3.18 10.4.1.1.3, 10.4.1.1.6) against the
running server: images decoded with Pillow and compared with arrays computed here, with
numpy, from the original pixel values (PS3.3 C.11 formulas written out independently)."""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, generate_uid

from sample_data import generate_us_multiframe

from .factory import ROOT, make_ct, to_bytes
from .servers import ThreadedServer


def ct(rows: int = 48, columns: int = 64, seed: int = 0, study: str | None = None, series: str | None = None,
       number: int = 1) -> Dataset:
    """A signed CT slice (HU = stored - 1024) with a ramp plus noise; no window in it."""
    ds = make_ct(rows=rows, columns=columns, seed=seed, study=study, series=series)
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 12, 11
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.InstanceNumber = number
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 2000, rows * columns).reshape(rows, columns)
    ds.PixelData = (ramp + rng.integers(-20, 20, (rows, columns))).astype(np.int16).tobytes()
    return ds


def expected_linear(ds: Dataset, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), output 0..255, rounded: computed independently."""
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = np.empty_like(hu)
    for index, x in np.ndenumerate(hu):
        if x <= center - 0.5 - (width - 1) / 2:
            out[index] = 0
        elif x > center - 0.5 + (width - 1) / 2:
            out[index] = 255
        else:
            out[index] = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.rint(out).astype(np.uint8)


@dataclass
class Loaded:
    server: ThreadedServer
    ds: dict[str, Dataset]

    def url(self, label: str, suffix: str, level: str = "instance") -> str:
        ds = self.ds[label]
        path = f"/studies/{ds.StudyInstanceUID}"
        if level in ("series", "instance"):
            path += f"/series/{ds.SeriesInstanceUID}"
        if level == "instance":
            path += f"/instances/{ds.SOPInstanceUID}"
        return f"{self.server.base_url}/dicom-web{path}{suffix}"


@pytest.fixture
def loaded(server: ThreadedServer) -> Loaded:
    study, series = generate_uid(ROOT), generate_uid(ROOT)
    items = {f"ct{i}": ct(seed=i, study=study, series=series, number=i + 1) for i in range(3)}
    mono1 = ct(seed=7)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    items["mono1"] = mono1
    windowed = ct(seed=8)
    windowed.WindowCenter, windowed.WindowWidth = 300, 600
    items["windowed"] = windowed
    j2k = ct(seed=9)
    j2k.compress(JPEG2000Lossless, generate_instance_uid=False)
    items["j2k"] = j2k
    us = generate_us_multiframe(3, rows=48, columns=64, seed=2)
    us.StudyInstanceUID = generate_uid(ROOT)
    items["us"] = us
    for ds in items.values():
        server.archive.ingest_bytes(to_bytes(ds), source="test")
    return Loaded(server, {k: dcmread(BytesIO(to_bytes(v))) for k, v in items.items()})


def image_of(resp: requests.Response, content_type: str = "image/png") -> np.ndarray:
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == content_type
    return np.asarray(Image.open(BytesIO(resp.content)))


def test_png_with_window_equals_expected_array(loaded: Loaded) -> None:
    resp = requests.get(loaded.url("ct0", "/rendered"), params={"window": "40,400,linear"},
                        headers={"Accept": "image/png"}, timeout=30)
    assert np.array_equal(image_of(resp), expected_linear(loaded.ds["ct0"], 40, 400))


def test_object_window_and_monochrome1(loaded: Loaded) -> None:
    resp = requests.get(loaded.url("windowed", "/rendered"), headers={"Accept": "image/png"}, timeout=30)
    assert np.array_equal(image_of(resp), expected_linear(loaded.ds["windowed"], 300, 600))
    resp = requests.get(loaded.url("mono1", "/rendered"), params={"window": "100,800"},
                        headers={"Accept": "image/png"}, timeout=30)
    assert np.array_equal(image_of(resp), 255 - expected_linear(loaded.ds["mono1"], 100, 800))


def test_compressed_renders_like_its_pixels(loaded: Loaded) -> None:
    client = DICOMwebClient(url=f"{loaded.server.base_url}/dicom-web")
    ds = loaded.ds["j2k"]
    png = client.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                            media_types=("image/png",), params={"window": "500,1000"})
    assert np.array_equal(np.asarray(Image.open(BytesIO(png))), expected_linear(ds, 500, 1000))


def test_rgb_frame_and_viewport(loaded: Loaded) -> None:
    us = loaded.ds["us"]
    resp = requests.get(loaded.url("us", "/frames/2/rendered"), params={"accept": "image/png"}, timeout=30)
    assert np.array_equal(image_of(resp), us.pixel_array[1])
    resp = requests.get(loaded.url("us", "/frames/2/rendered"), params={"viewport": "128,96"}, timeout=30)
    image = Image.open(BytesIO(resp.content))
    assert resp.headers["Content-Type"] == "image/jpeg" and image.format == "JPEG"
    assert image.size == (128, 96) and image.mode == "RGB"
    resp = requests.get(loaded.url("ct1", "/rendered"), params={"viewport": "32,32", "quality": "50"}, timeout=30)
    assert Image.open(BytesIO(resp.content)).size == (32, 24)  # aspect ratio kept inside the viewport
    # source region: the right half, flipped left-right, same scale
    resp = requests.get(loaded.url("ct0", "/rendered"), params={"viewport": "32,48,64,0,-32,48", "window": "40,400"},
                        headers={"Accept": "image/png"}, timeout=30)
    assert np.array_equal(image_of(resp), expected_linear(loaded.ds["ct0"], 40, 400)[:, 32:][:, ::-1])


def test_frames_list_is_multipart(loaded: Loaded) -> None:
    resp = requests.get(loaded.url("us", "/frames/3,1/rendered"), headers={"Accept": "*/*"}, timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"')
    assert requests.get(loaded.url("us", "/frames/3,1/rendered"), headers={"Accept": "image/png"},
                        timeout=30).status_code == 406


def _parts(resp: requests.Response) -> list[tuple[str, bytes]]:
    head = f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + resp.content)
    return [(p["Content-Type"], p.get_payload(decode=True)) for p in message.get_payload()]


def test_series_and_study_rendered(loaded: Loaded) -> None:
    window = {"window": "40,400"}
    resp = requests.get(loaded.url("ct0", "/rendered", "series"), params=window,
                        headers={"Accept": 'multipart/related; type="image/png"'}, timeout=30)
    parts = _parts(resp)
    assert [t for t, _ in parts] == ["image/png"] * 3
    expected = [expected_linear(loaded.ds[f"ct{i}"], 40, 400) for i in range(3)]
    assert all(np.array_equal(np.asarray(Image.open(BytesIO(b))), e) for (_, b), e in zip(parts, expected))
    single = requests.get(loaded.url("ct0", "/rendered", "study"), params={**window, "accept": "image/png"}, timeout=30)
    assert np.array_equal(image_of(single), expected[0])


def test_thumbnail_is_the_middle_instance(loaded: Loaded) -> None:
    for level in ("study", "series"):
        resp = requests.get(loaded.url("ct0", "/thumbnail", level), headers={"Accept": "image/png"}, timeout=30)
        direct = requests.get(loaded.url("ct1", "/rendered"), params={"viewport": "128,128"},
                              headers={"Accept": "image/png"}, timeout=30)
        assert np.array_equal(image_of(resp), image_of(direct))
        assert Image.open(BytesIO(resp.content)).size == (128, 96)
    resp = requests.get(loaded.url("us", "/thumbnail"), params={"viewport": "40,40"}, timeout=30)
    assert Image.open(BytesIO(resp.content)).size == (40, 30) and resp.headers["Content-Type"] == "image/jpeg"
    resp = requests.get(loaded.url("us", "/frames/2/thumbnail"), timeout=30)
    assert resp.status_code == 200 and Image.open(BytesIO(resp.content)).format == "JPEG"


@pytest.mark.parametrize("params,accept,status", [
    ({"window": "abc"}, None, 400),
    ({"window": "40"}, None, 400),
    ({"window": "40,0"}, None, 400),
    ({"window": "nan,400"}, None, 400),
    ({"window": "40,400,CUBIC"}, None, 400),
    ({"viewport": "0,10"}, None, 400),
    ({"viewport": "10,10,1,1"}, None, 400),
    ({"viewport": "10,10,500,0,10,10"}, None, 400),
    ({"quality": "0"}, None, 400),
    ({"quality": "x"}, None, 400),
    ({}, "image/gif", 406),
    ({}, "application/dicom", 406),
])
def test_bad_parameters(loaded: Loaded, params: dict, accept: str | None, status: int) -> None:
    headers = {"Accept": accept} if accept else {}
    resp = requests.get(loaded.url("ct0", "/rendered"), params=params, headers=headers, timeout=30)
    assert resp.status_code == status and "error" in resp.json()


def test_unknown_targets_are_404(loaded: Loaded) -> None:
    assert requests.get(loaded.url("ct0", "/frames/2/rendered"), timeout=30).status_code == 404
    ds = loaded.ds["ct0"]
    base = f"{loaded.server.base_url}/dicom-web/studies/{ds.StudyInstanceUID}"
    assert requests.get(f"{base}/series/1.2.3/rendered", timeout=30).status_code == 404
    assert requests.get(f"{base}/series/1.2.3/thumbnail", timeout=30).status_code == 404
    assert requests.get(f"{loaded.server.base_url}/dicom-web/studies/1.2.3/thumbnail", timeout=30).status_code == 404
