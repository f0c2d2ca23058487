"""Small hand-made instances for tests (independent of sample_data)."""

from __future__ import annotations

from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = "1.2.826.0.1.3680043.10.1234."


def make_ct(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    patient_id: str = "PID1",
    patient_name: str = "Doe^Jane",
    rows: int = 16,
    columns: int = 16,
    seed: int = 0,
) -> Dataset:
    """A valid CT Image Storage instance with random pixels."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or generate_uid(ROOT)
    ds.StudyInstanceUID = study or generate_uid(ROOT)
    ds.SeriesInstanceUID = series or generate_uid(ROOT)
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20260102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4000, (rows, columns), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """Part 10 encoding of ``ds``."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dataset_part(part10: bytes) -> bytes:
    """The dataset bytes of a Part 10 object, after preamble, DICM and file meta."""
    import struct

    assert part10[128:132] == b"DICM"
    # (0002,0000) File Meta Information Group Length, UL, explicit VR LE
    group_length = struct.unpack("<L", part10[140:144])[0]
    return part10[144 + group_length:]


_counter = iter(range(1, 10**9))


def short_uid() -> str:
    """A unique UID short enough to take suffixes like ``.12``."""
    import os

    return f"{ROOT}{os.getpid()}.{next(_counter)}"
