"""Hardening: the per-client HTTP rate limit (pacs/ratelimit.py) and the decompression-bomb
guard (pacs/decode_guard.py), against a real server and real stored objects."""

from __future__ import annotations

import dataclasses
import struct
from typing import Iterator

import pytest
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless

from pacs.decode_guard import DecodeRefused, check_object, codestream_size, frame_bytes
from pacs.ratelimit import TokenBuckets
from pacs.settings import Settings

from .factory import make_ct, short_uid, to_bytes
from .servers import ThreadedServer


# -- rate limits ---------------------------------------------------------------------------
def test_bucket_allows_the_burst_then_the_rate() -> None:
    now = [100.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes back in 1/rate s
    assert buckets.take("b") == 0.0  # clients are counted apart
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    now[0] += 60  # a long pause refills to the burst, not beyond
    assert [buckets.take("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_forgotten_clients_are_the_least_recently_seen() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=lambda: 0.0, max_clients=2)
    assert (buckets.take("a"), buckets.take("b")) == (0.0, 0.0)
    assert buckets.take("a") > 0  # a is empty and now the most recent
    assert buckets.take("c") == 0.0  # b is forgotten to make room
    assert buckets.take("a") > 0


@pytest.fixture
def limited(settings: Settings) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(dataclasses.replace(settings, rate_limit_per_second=0.01, rate_limit_burst=3)).start()
    yield srv
    srv.stop()


def test_client_over_its_burst_gets_429_with_retry_after(limited: ThreadedServer) -> None:
    url = f"{limited.base_url}/dicom-web/studies"
    assert [requests.get(url, timeout=10).status_code for _ in range(3)] == [200, 200, 200]
    refused = requests.get(url, timeout=10)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "100"  # one request back after 1 / 0.01 s
    assert refused.json() == {"error": "too many requests: at most 0.01 per second (burst 3) per client"}
    assert requests.get(f"{limited.base_url}/api/changes?since=0", timeout=10).status_code == 429
    assert requests.get(f"{limited.base_url}/healthz", timeout=10).status_code == 200  # never limited


# -- decompression bombs -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "SC_rgb_jpeg_gdcm.dcm", "MR_small_jp2klossless.dcm"])
def test_codestream_header_gives_the_object_size(name: str) -> None:
    ds = dcmread(get_testdata_file(name))
    first = next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    assert codestream_size(first) == (ds.Rows, ds.Columns, ds.SamplesPerPixel)


def _j2k_ct(study: str, claimed: tuple[int, int] | None = None) -> Dataset:
    """A small JPEG 2000 CT; with ``claimed``, its SIZ header says (rows, columns) instead."""
    ds = make_ct(rows=32, columns=32, study=study, seed=3)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    if claimed is not None:
        data = bytearray(ds.PixelData)
        at = data.find(b"\xff\x4f\xff\x51") + 4
        data[at + 4:at + 20] = struct.pack(">IIII", claimed[1], claimed[0], 0, 0)
        ds.PixelData = bytes(data)
    return ds


def test_forged_codestream_header_is_counted() -> None:
    ds = _j2k_ct(short_uid(), claimed=(60000, 50000))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert codestream_size(frame) == (60000, 50000, 1)
    attrs = {"Rows": 32, "Columns": 32, "SamplesPerPixel": 1, "BitsAllocated": 16}
    assert frame_bytes(attrs) == 32 * 32 * 2
    assert frame_bytes(attrs, frame) == 60000 * 50000 * 2
    with pytest.raises(DecodeRefused, match="6,000,000,000 bytes"):
        check_object(attrs, [frame], 1, 1024**3)


@pytest.fixture
def bombs(server: ThreadedServer) -> dict[str, Dataset]:
    study = short_uid()
    items = {"good": _j2k_ct(study), "forged": _j2k_ct(study, claimed=(60000, 50000))}
    huge = _j2k_ct(study)
    huge.Rows = huge.Columns = 65535  # the attributes claim 8 GiB per frame
    items["declared"] = huge
    for ds in items.values():
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = short_uid()
        server.archive.ingest_bytes(to_bytes(ds), source="test")
    return items


def _instance_url(server: ThreadedServer, ds: Dataset) -> str:
    return (f"{server.base_url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


@pytest.mark.parametrize("label", ["forged", "declared"])
def test_bombs_are_refused_before_decoding(server: ThreadedServer, bombs: dict[str, Dataset], label: str) -> None:
    url = _instance_url(server, bombs[label])
    for suffix, headers in (("/rendered", {"Accept": "image/png"}), ("/thumbnail", {"Accept": "image/jpeg"}),
                            ("/frames/1", {"Accept": 'multipart/related; type="application/octet-stream"'}),
                            ("", {"Accept": 'multipart/related; type="application/dicom"; '
                                            'transfer-syntax=1.2.840.10008.1.2.1'})):
        resp = requests.get(url + suffix, headers=headers, timeout=30)
        assert resp.status_code == 406, (suffix, resp.status_code, resp.text[:200])
        error = resp.json()["error"]
        assert "PACS_MAX_DECODED_BYTES" in error or (
            "rendered" in suffix or "thumbnail" in suffix) and "PACS_RENDER_MAX_PIXELS" in error, error
    as_stored = requests.get(url + "/frames/1", timeout=30,
                             headers={"Accept": 'multipart/related; type="application/octet-stream"; '
                                                'transfer-syntax=*'})
    assert as_stored.status_code == 200  # the stored bytes are still served as they are
    good = requests.get(_instance_url(server, bombs["good"]) + "/rendered", headers={"Accept": "image/png"},
                        timeout=30)
    assert good.status_code == 200 and good.content.startswith(b"\x89PNG")


def test_render_pixel_cap(settings: Settings) -> None:
    srv = ThreadedServer(dataclasses.replace(settings, render_max_pixels=1000)).start()
    try:
        ds = make_ct(rows=32, columns=32, study=short_uid(), seed=1)
        srv.archive.ingest_bytes(to_bytes(ds), source="test")
        url = _instance_url(srv, ds)
        small = requests.get(url + "/rendered", headers={"Accept": "image/png"}, timeout=30)
        assert small.status_code == 406
        assert small.json()["error"] == ("an image of 32 x 32 pixels is above the rendering limit of "
                                         "1,000 pixels (setting PACS_RENDER_MAX_PIXELS)")
        frames = requests.get(url + "/frames/1", timeout=30,
                              headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        assert frames.status_code == 200  # raw frames are not rendered: not capped
    finally:
        srv.stop()


def test_transcoding_for_dimse_is_guarded_too(archive) -> None:  # type: ignore[no-untyped-def]
    """C-MOVE, C-GET and AI push transcode with :func:`pacs.retrieve.transcoded_bytes`."""
    from pacs.access import SYSTEM
    from pacs.query import Level, Query
    from pacs.retrieve import transcoded_bytes

    good, forged = _j2k_ct(short_uid()), _j2k_ct(short_uid(), claimed=(60000, 50000))
    for ds in (good, forged):
        archive.ingest_bytes(to_bytes(ds), source="test")
    items = {item.sop_instance_uid: item for item in archive.plan_retrieve(Query(Level.IMAGE), caller=SYSTEM)}
    with pytest.raises(DecodeRefused, match="PACS_MAX_DECODED_BYTES"):
        transcoded_bytes(archive, items[forged.SOPInstanceUID], "1.2.840.10008.1.2.1")
    decoded = transcoded_bytes(archive, items[good.SOPInstanceUID], "1.2.840.10008.1.2.1")
    assert good.pixel_array.tobytes() in decoded  # lossless: the pixels themselves


@pytest.mark.parametrize("claimed", [None, (60000, 50000)])
def test_slow_frame_path_reads_the_object_once(archive, claimed) -> None:  # type: ignore[no-untyped-def]
    """A compressed object whose frames ingest could not locate is read whole once, its
    frame's header checked, then decoded (or refused) from that one read."""
    from sqlalchemy import update

    from pacs.access import SYSTEM
    from pacs.frames import decoded_frame_array
    from pacs.index.models import Instance

    ds = _j2k_ct(short_uid(), claimed=claimed)
    archive.ingest_bytes(to_bytes(ds), source="test")
    with archive.db.write() as conn:  # as for fragments of unknown grouping: no frame offsets
        conn.execute(update(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)
                     .values(frame_ranges=None))
    source = archive.locate(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, caller=SYSTEM)
    opened = []
    real_open = archive.store.open
    archive.store.open = lambda key: opened.append(key) or real_open(key)  # count reads of the real store
    if claimed is None:
        assert decoded_frame_array(archive, source, 1).tobytes() == ds.pixel_array.tobytes()
    else:
        with pytest.raises(DecodeRefused, match="6,000,000,000 bytes"):
            decoded_frame_array(archive, source, 1)
    assert opened == [source.blob_key]
