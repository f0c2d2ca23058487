"""Tests for the synthetic study generator in ``sample_data``."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    UID,
)

from sample_data import (
    INTERNATIONAL_KEYS,
    PatientInfo,
    generate_cr,
    generate_ct_series,
    generate_mr_series,
    generate_small_set,
    generate_tiny_series,
    generate_us_multiframe,
    international_patient,
    write_dataset,
    write_series,
)
from sample_data.__main__ import main as cli_main

FILES_DIR = Path(__file__).resolve().parents[1] / "sample_data" / "files"
LOSSLESS = [JPEG2000Lossless, RLELossless, JPEGLSLossless, DeflatedExplicitVRLittleEndian]


def _roundtrip(ds: Dataset, tmp_path: Path, name: str = "x.dcm") -> tuple[Dataset, bytes]:
    path = tmp_path / name
    write_dataset(ds, path)
    raw = path.read_bytes()
    return dcmread(path), raw


def _all_uids(datasets: list[Dataset]) -> set[str]:
    return {str(getattr(ds, kw)) for ds in datasets
            for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}


# --- determinism ---------------------------------------------------------------------

def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = write_series(generate_small_set(seed=7), tmp_path / "a")
    second = write_series(generate_small_set(seed=7), tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_different_seed_gives_different_uids_and_pixels() -> None:
    zero = list(generate_ct_series(3, seed=0, rows=64, columns=64))
    one = list(generate_ct_series(3, seed=1, rows=64, columns=64))
    assert not _all_uids(zero) & _all_uids(one)
    assert zero[0].PatientID != one[0].PatientID
    assert zero[0].PixelData != one[0].PixelData  # noise differs, anatomy does not
    assert len({ds.SOPInstanceUID for ds in zero}) == 3


def test_uids_are_valid_and_unique_across_the_small_set() -> None:
    datasets = list(generate_small_set())
    sop_uids = [ds.SOPInstanceUID for ds in datasets]
    assert len(set(sop_uids)) == len(sop_uids)
    for uid in _all_uids(datasets):
        assert UID(uid).is_valid and len(uid) <= 64, uid
    assert len({ds.SeriesInstanceUID for ds in datasets}) == len(datasets) - 2  # 3 CT slices share


def test_study_uid_and_patient_are_honoured() -> None:
    patient = PatientInfo("P-1", "Test^Patient", "19800101", "O", "")
    datasets = list(generate_ct_series(2, rows=32, columns=32, patient=patient, study_uid="1.2.3.4"))
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3.4"}
    assert datasets[0].PatientName == "Test^Patient" and datasets[0].PatientID == "P-1"
    assert "SpecificCharacterSet" not in datasets[0]


# --- content and decoding ------------------------------------------------------------

def test_ct_slice_attributes_and_anatomy(tmp_path: Path) -> None:
    datasets = list(generate_ct_series(2, seed=3, slice_spacing=40.0))
    ds, raw = _roundtrip(datasets[1], tmp_path)
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert 500_000 < len(raw) < 540_000  # about 512 kB
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (512, 512, 16, 1)
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert float(ds.ImagePositionPatient[2]) == float(ds.SliceLocation) == -50.0
    assert float(ds.PixelSpacing[0]) * ds.Columns == pytest.approx(float(ds.ReconstructionDiameter))
    for keyword in ("KVP", "SliceThickness", "WindowCenter", "AccessionNumber", "StudyID",
                    "ReferringPhysicianName", "BodyPartExamined", "StationName", "InstitutionName"):
        assert keyword in ds, keyword
    hu = apply_modality_lut(ds.pixel_array, ds)
    body = hu[200:320, 150:360]
    for col in (256 - 102, 256 + 102):  # lungs at x = -/+80 mm (0.78 mm pixels)
        assert np.median(hu[241:261, col - 10:col + 10]) < -700
    assert np.median(hu[241:261, 246:266]) > -200  # mediastinum between them
    assert (hu > 600).sum() > 200  # ribs, spine
    assert -20 < np.median(hu[np.abs(hu - 40) < 60]) < 100  # soft tissue near 40 HU
    assert body.std() > 100  # structured, not flat


def test_ct_varies_smoothly_with_position() -> None:
    slices = list(generate_ct_series(12, seed=0, rows=128, columns=128, slice_spacing=2.5))
    pixels = [ds.pixel_array.astype(np.int32) for ds in slices]
    near = np.abs(pixels[0] - pixels[1]).mean()
    far = np.abs(pixels[0] - pixels[11]).mean()
    assert near < far
    z = [float(ds.ImagePositionPatient[2]) for ds in slices]
    assert np.allclose(np.diff(z), -2.5)
    assert [ds.InstanceNumber for ds in slices] == list(range(1, 13))


@pytest.mark.parametrize(
    "make, modality, shape",
    [
        (lambda: next(generate_mr_series(1, seed=2)), "MR", (256, 256)),
        (lambda: generate_cr(seed=2, rows=400, columns=328), "CR", (400, 328)),
        (lambda: generate_us_multiframe(6, seed=2, rows=96, columns=128), "US", (6, 96, 128, 3)),
        (lambda: next(generate_tiny_series(1, seed=2)), "CT", (64, 64)),
    ],
)
def test_every_kind_reads_back(make, modality: str, shape: tuple[int, ...], tmp_path: Path) -> None:
    ds, _ = _roundtrip(make(), tmp_path)
    assert ds.Modality == modality
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    arr = ds.pixel_array
    assert arr.shape == shape
    assert arr.max() > arr.min()
    if ds.BitsStored == 12:
        assert arr.max() <= 4095


def test_cr_is_a_2k_monochrome1_radiograph() -> None:
    ds = generate_cr()
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored) == (2500, 2048, 16, 12)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.ViewPosition == "PA"
    assert len(ds.PixelData) == 2500 * 2048 * 2


def test_us_is_multiframe_with_cine_timing() -> None:
    ds = generate_us_multiframe(10, rows=96, columns=128)
    assert ds.NumberOfFrames == 10 and ds.SamplesPerPixel == 3
    assert ds.FrameIncrementPointer == 0x00181063 and float(ds.FrameTime) > 0
    frames = ds.pixel_array
    assert not np.array_equal(frames[0], frames[5])  # the heart beats


def test_committed_files_all_decode() -> None:
    files = sorted(FILES_DIR.glob("*.dcm"))
    assert 6 <= len(files) <= 12
    assert sum(p.stat().st_size for p in files) < 2_000_000
    syntaxes = set()
    for path in files:
        ds = dcmread(path)
        assert path.stem == ds.SOPInstanceUID
        assert ds.pixel_array.size > 0
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
    assert {JPEG2000Lossless, RLELossless, JPEGLSLossless, DeflatedExplicitVRLittleEndian} <= syntaxes


def test_committed_files_match_regeneration(tmp_path: Path) -> None:
    cli_main([str(tmp_path), "--set", "small"])
    fresh = {p.name: p.read_bytes() for p in tmp_path.glob("*.dcm")}
    committed = {p.name: p.read_bytes() for p in FILES_DIR.glob("*.dcm")}
    assert sorted(fresh) == sorted(committed)
    for name, data in committed.items():
        if fresh[name] == data:
            continue
        # Encoders (openjpeg, CharLS, zlib) may legitimately produce other bytes in
        # another release; then the header and the decoded pixels must still match.
        new, old = dcmread(BytesIO(fresh[name])), dcmread(BytesIO(data))
        syntax = old.file_meta.TransferSyntaxUID
        assert syntax.is_compressed or syntax.is_deflated, (
            f"{name} differs; run: python -m sample_data sample_data/files --set small"
        )
        np.testing.assert_array_equal(new.pixel_array, old.pixel_array)
        del new.PixelData, old.PixelData
        assert new == old, name


# --- codecs ----------------------------------------------------------------------------

@pytest.mark.parametrize("syntax", LOSSLESS + [ImplicitVRLittleEndian])
def test_lossless_ct_matches_uncompressed(syntax: str, tmp_path: Path) -> None:
    native = next(generate_ct_series(1, seed=5, rows=128, columns=128))
    encoded = next(generate_ct_series(1, seed=5, rows=128, columns=128, transfer_syntax=syntax))
    ds, _ = _roundtrip(encoded, tmp_path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert (ds.pixel_array < 0).any()  # signed padding survives the codec
    np.testing.assert_array_equal(ds.pixel_array, native.pixel_array)


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_lossless_mr_and_us_match_uncompressed(syntax: str, tmp_path: Path) -> None:
    mr_native = next(generate_mr_series(1, seed=4, rows=96, columns=96))
    mr = next(generate_mr_series(1, seed=4, rows=96, columns=96, transfer_syntax=syntax))
    us_native = generate_us_multiframe(3, seed=4, rows=48, columns=64)
    us = generate_us_multiframe(3, seed=4, rows=48, columns=64, transfer_syntax=syntax)
    for native, encoded in ((mr_native, mr), (us_native, us)):
        ds, raw = _roundtrip(encoded, tmp_path)
        np.testing.assert_array_equal(ds.pixel_array, native.pixel_array)
        assert len(raw) < len(native.PixelData) + 4096


def test_unsupported_syntax_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported transfer syntax"):
        next(generate_ct_series(1, rows=32, columns=32, transfer_syntax="1.2.840.10008.1.2.4.50"))


# --- character sets ----------------------------------------------------------------------

EXPECTED_BYTES = {
    "latin1": ("ISO_IR 100", "Müller^Jürgen".encode("latin-1")),
    "japanese": (["ISO 2022 IR 6", "ISO 2022 IR 87"], b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B="),
    "chinese": ("ISO_IR 192", "王^小明".encode("utf-8")),
    "cyrillic": ("ISO_IR 144", "Иванова".encode("iso8859-5")),
    "greek": ("ISO_IR 192", "Παπαδοπούλου".encode("utf-8")),
    "arabic": ("ISO_IR 192", "الحسيني".encode("utf-8")),
    "greek8859": ("ISO_IR 126", "Διονυσίου".encode("iso8859-7")),
}


@pytest.mark.parametrize("key", INTERNATIONAL_KEYS)
def test_international_names_roundtrip(key: str, tmp_path: Path) -> None:
    patient = international_patient(key)
    source = next(generate_ct_series(1, rows=16, columns=16, patient=patient))
    ds, raw = _roundtrip(source, tmp_path)
    charset, encoded = EXPECTED_BYTES[key]
    assert ds.SpecificCharacterSet == charset
    assert str(ds.PatientName) == patient.name
    assert encoded in raw  # stored in the declared repertoire, not as UTF-8 by accident


def test_small_set_names_and_texts_decode() -> None:
    names = {}
    for path in FILES_DIR.glob("*.dcm"):
        ds = dcmread(path)
        names[str(ds.PatientName)] = ds.get("SpecificCharacterSet")
        ds.decode()
        assert "?" not in str(ds.InstitutionName)
    assert names["Yamada^Tarou=山田^太郎=やまだ^たろう"] == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert names["Müller^Jürgen"] == "ISO_IR 100"
    assert names["Иванова^Анна^Сергеевна"] == "ISO_IR 144"
    assert names["Wang^XiaoMing=王^小明"] == "ISO_IR 192"


# --- sizes and CLI -------------------------------------------------------------------------

def test_tiny_instances_are_about_9_kb(tmp_path: Path) -> None:
    paths = write_series(generate_tiny_series(20, seed=11), tmp_path)
    assert len(paths) == 20 and len({p.name for p in paths}) == 20
    for path in paths:
        assert 7_000 <= path.stat().st_size <= 12_000
    assert dcmread(paths[-1]).pixel_array.shape == (64, 64)


def test_cli_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([str(tmp_path), "--set", "tiny", "4", "--seed", "9"]) == 0
    assert "wrote 4 files" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.dcm"))) == 4


def test_cli_rejects_bad_set(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli_main([str(tmp_path), "--set", "ct", "many"])
