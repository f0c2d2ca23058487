"""STOW-RS with metadata and bulk data (PS3.18 10.5.1.4, ``multipart/related;
type="application/dicom+json"``) against the running server: instances built from DICOM
JSON and octet-stream parts, a missing bulk data part, refused media types."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from .factory import to_bytes
from .servers import ThreadedServer
from .test_stow import (
    BOUNDARY, CANNOT_UNDERSTAND, body, failed, incoming_files, instance_count, post, referenced, stored_blobs,
    study_of,
)


# -- metadata and bulk data (type="application/dicom+json") ------------------------------
def metadata_body(datasets: list[Dataset], bulk_type: str = "application/octet-stream",
                  drop: int | None = None) -> bytes:
    """A JSON array of the datasets with bulk data as BulkDataURIs, then one part per
    bulk value with its Content-Location (PS3.18 10.5.1.4); ``drop``: leave that part out."""
    values: dict[str, bytes] = {}

    def handler(elem: Any) -> str:
        uri = f"http://client.example/bulk/{len(values)}"
        values[uri] = elem.value
        return uri

    array = [ds.to_json_dict(bulk_data_threshold=256, bulk_data_element_handler=handler) for ds in datasets]
    out = bytearray(f"--{BOUNDARY}\r\nContent-Type: application/dicom+json\r\n\r\n".encode())
    out += json.dumps(array).encode() + b"\r\n"
    for i, (uri, value) in enumerate(values.items()):
        if i != drop:
            out += f"--{BOUNDARY}\r\nContent-Type: {bulk_type}\r\nContent-Location: {uri}\r\n\r\n".encode()
            out += value + b"\r\n"
    return bytes(out + f"--{BOUNDARY}--\r\n".encode())


METADATA = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'


async def test_metadata_and_bulk_data_are_stored_as_part10(server: ThreadedServer) -> None:
    datasets = study_of(2, rows=32)
    status, _, answer = await post(server, "/studies", metadata_body(datasets), METADATA)
    assert status == 200
    assert answer["00081199"]["Value"] == [referenced(server, ds) for ds in datasets]
    blobs = stored_blobs(server)
    for ds in datasets:
        stored = dcmread(BytesIO(blobs[ds.SOPInstanceUID]))
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert stored.PixelData == ds.PixelData
        assert stored.to_json_dict() == dcmread(BytesIO(to_bytes(ds))).to_json_dict()  # VRs resolved
    assert incoming_files(server) == []


async def test_metadata_with_a_missing_bulk_part_fails_that_instance(server: ThreadedServer) -> None:
    datasets = study_of(2, rows=32)
    status, headers, answer = await post(server, "/studies", metadata_body(datasets, drop=0), METADATA)
    assert status == 202
    assert answer["00081198"]["Value"] == [
        failed(CANNOT_UNDERSTAND, datasets[0].SOPClassUID, datasets[0].SOPInstanceUID)]
    assert answer["00081199"]["Value"] == [referenced(server, datasets[1])]
    assert "no bulk data part for a BulkDataURI of 7FE00010" in headers["Warning"]
    assert list(stored_blobs(server)) == [datasets[1].SOPInstanceUID]
    assert incoming_files(server) == []


async def test_metadata_with_compressed_bulk_data_415(server: ThreadedServer) -> None:
    status, _, answer = await post(server, "/studies", metadata_body(study_of(1), "image/jpeg"), METADATA)
    assert status == 415 and "application/octet-stream only" in answer["error"]
    assert instance_count(server) == 0 and incoming_files(server) == []


async def test_metadata_not_json_400(server: ThreadedServer) -> None:
    data = body(b"{not json", part_type="application/dicom+json")
    status, _, answer = await post(server, "/studies", data, METADATA)
    assert status == 400 and "not JSON" in answer["error"]
