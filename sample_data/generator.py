"""Deterministic generator of realistic synthetic DICOM studies.

Everything derives from a seed: UIDs come from :func:`pydicom.uid.generate_uid` with
fixed entropy sources, dates and times from seeded offsets to a fixed base date, pixels
from seeded :class:`numpy.random.Generator` instances. Nothing reads the wall clock, so
the same seed always gives byte-identical Part 10 files (PS3.10 7).

Public API: :func:`generate_ct_series`, :func:`generate_tiny_series`,
:func:`generate_mr_series`, :func:`generate_cr`, :func:`generate_us_multiframe`,
:func:`generate_sample_studies`, :func:`generate_small_set`, :func:`write_dataset`,
:func:`write_series` and :class:`PatientInfo`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from .charsets import DEFAULT_LOCALE, Locale, PatientInfo, default_patient, international_patient, locale_for
from .modalities import CR_READER, CT_SCANNER, MR_SCANNER, US_SCANNER
from .modules import SeriesInfo, StudyInfo, make_series, make_study
from .series import SUPPORTED_SYNTAXES, cr_image, ct_series, lossless_copy, mr_series, us_cine

__all__ = [
    "PatientInfo",
    "SUPPORTED_SYNTAXES",
    "generate_cr",
    "generate_ct_series",
    "generate_mr_series",
    "generate_sample_studies",
    "generate_small_set",
    "generate_tiny_series",
    "generate_us_multiframe",
    "write_dataset",
    "write_series",
]


def _study(seed: int, label: str, patient: PatientInfo | None, study_uid: str | None,
           description: str, locale: Locale = DEFAULT_LOCALE) -> StudyInfo:
    """A study for ``patient`` (default: the seed's ASCII patient)."""
    return make_study(seed, label, patient or default_patient(seed), description,
                      study_uid=study_uid, locale=locale)


def _ct_series_info(study: StudyInfo, seed: int, number: int, description: str, body_part: str) -> SeriesInfo:
    return make_series(study, seed, number, "CT", description, body_part, CT_SCANNER,
                       protocol="Chest-Abdomen Routine")


def generate_ct_series(
    count: int,
    *,
    seed: int = 0,
    rows: int = 512,
    columns: int = 512,
    patient: PatientInfo | None = None,
    study_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    slice_spacing: float = 2.5,
    series_number: int = 2,
) -> Iterator[Dataset]:
    """Yield ``count`` axial CT slices (CT Image Storage, PS3.3 A.3) of one series.

    Signed 16-bit pixels with Rescale Intercept -1024 (HU), a contrast-enhanced
    chest/abdomen phantom that changes smoothly from slice to slice (folding back over the
    anatomy for very long series) and CT-like noise. A 512x512 slice is about 514 kB.
    ``transfer_syntax`` is one of :data:`SUPPORTED_SYNTAXES`.
    """
    study = _study(seed, "ct", patient, study_uid, "CT CHEST ABDOMEN WITH CONTRAST")
    series = _ct_series_info(study, seed, series_number, f"Axial {slice_spacing:g}mm Standard", "CHEST")
    yield from ct_series(series, seed, count, (rows, columns), slice_spacing, transfer_syntax)


def generate_tiny_series(count: int, *, seed: int = 0) -> Iterator[Dataset]:
    """Yield ``count`` tiny CT-like instances (64x64, 16-bit, about 9.5 kB) for benchmarks."""
    study = _study(seed, "tiny", None, None, "CT LOW-RES BENCHMARK")
    series = _ct_series_info(study, seed, 1, "Tiny 64x64", "CHEST")
    yield from ct_series(series, seed, count, (64, 64), 5.0)


def generate_mr_series(
    count: int = 24,
    *,
    seed: int = 0,
    rows: int = 256,
    columns: int = 256,
    patient: PatientInfo | None = None,
    study_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    series_number: int = 3,
) -> Iterator[Dataset]:
    """Yield ``count`` axial T1 spin-echo head slices (MR Image Storage, PS3.3 A.4), 12-bit."""
    study = _study(seed, "mr", patient, study_uid, "MR HEAD WITHOUT CONTRAST")
    series = make_series(study, seed, series_number, "MR", "Ax T1 SE", "HEAD", MR_SCANNER,
                         protocol="Brain Routine")
    yield from mr_series(series, seed, count, (rows, columns), transfer_syntax=transfer_syntax)


def generate_cr(
    *,
    seed: int = 0,
    rows: int = 2500,
    columns: int = 2048,
    patient: PatientInfo | None = None,
    study_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A PA chest computed radiograph (CR Image Storage, PS3.3 A.2), 12 of 16 bits, MONOCHROME1."""
    study = _study(seed, "cr", patient, study_uid, "XR CHEST PA")
    series = make_series(study, seed, 1, "CR", "Chest PA", "CHEST", CR_READER,
                         with_frame_of_reference=False, protocol="Chest PA")
    return cr_image(series, seed, (rows, columns), transfer_syntax)


def generate_us_multiframe(
    frames: int = 24,
    *,
    seed: int = 0,
    rows: int = 288,
    columns: int = 384,
    patient: PatientInfo | None = None,
    study_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A cardiac cine loop (Ultrasound Multi-frame Image Storage, PS3.3 A.7), RGB 8-bit."""
    study = _study(seed, "us", patient, study_uid, "ECHO TRANSTHORACIC")
    series = make_series(study, seed, 1, "US", "Parasternal long axis", "HEART", US_SCANNER,
                         with_frame_of_reference=False, protocol="Adult Echo")
    return us_cine(series, seed, frames, (rows, columns), transfer_syntax)


def _intl(key: str, seed: int, label: str, description: str) -> StudyInfo:
    """A study of catalogue patient ``key`` with texts in the patient's own language."""
    return make_study(seed, label, international_patient(key, seed), description, locale=locale_for(key))


def _with_copies(originals: list[Dataset], to_copy: list[Dataset], syntax: str, seed: int,
                 series_number: int) -> list[Dataset]:
    """``originals`` followed by lossless re-encoded copies of ``to_copy`` (made before any
    caller can touch the originals)."""
    copies = [lossless_copy(ds, syntax, seed, series_number) for ds in to_copy]
    return originals + copies


def generate_sample_studies(seed: int = 0) -> Iterator[Dataset]:
    """The full demo set (about 60 MB): every modality, codec and character set.

    * CT chest/abdomen, 40 slices of 512x512 every 7.5 mm, plus 5 slices re-encoded JPEG 2000 lossless
      (ISO_IR 100 patient ``Müller^Jürgen``);
    * MR head, 24 slices, plus the same series RLE Lossless (ISO 2022 IR 87 Japanese);
    * CR chest 2500x2048, plus a JPEG-LS lossless copy (ISO_IR 192 Chinese);
    * US cine, 24 RGB frames, plus a Deflated copy (ISO_IR 144 Cyrillic);
    * small CT series for Greek (ISO_IR 192 and ISO_IR 126) and Arabic (ISO_IR 192)
      patients, stored JPEG 2000 lossless, JPEG-LS lossless and Deflated.
    """
    ct = _intl("latin1", seed, "demo-ct", "CT CHEST ABDOMEN WITH CONTRAST")
    ct_slices = list(ct_series(_ct_series_info(ct, seed, 2, "Axial 7.5mm Standard", "CHEST"),
                               seed, 40, (512, 512), 7.5))
    yield from _with_copies(ct_slices, ct_slices[12:17], JPEG2000Lossless, seed, 102)
    mr = _intl("japanese", seed, "demo-mr", "MR HEAD WITHOUT CONTRAST")
    mr_slices = list(mr_series(make_series(mr, seed, 3, "MR", "Ax T1 SE", "HEAD", MR_SCANNER), seed, 24))
    yield from _with_copies(mr_slices, mr_slices, RLELossless, seed, 103)
    cr = _intl("chinese", seed, "demo-cr", "XR CHEST PA")
    radiograph = cr_image(make_series(cr, seed, 1, "CR", "Chest PA", "CHEST", CR_READER,
                                      with_frame_of_reference=False), seed)
    yield from _with_copies([radiograph], [radiograph], JPEGLSLossless, seed, 101)
    us = _intl("cyrillic", seed, "demo-us", "ECHO TRANSTHORACIC")
    cine = us_cine(make_series(us, seed, 1, "US", "Parasternal long axis", "HEART", US_SCANNER,
                               with_frame_of_reference=False), seed)
    yield from _with_copies([cine], [cine], DeflatedExplicitVRLittleEndian, seed, 101)
    for key, syntax in (("greek", JPEG2000Lossless), ("arabic", JPEGLSLossless),
                        ("greek8859", DeflatedExplicitVRLittleEndian)):
        study = _intl(key, seed, "demo-ct", "CT THORAX")
        info = _ct_series_info(study, seed, 2, "Axial 5mm Lung", "CHEST")
        yield from ct_series(info, seed, 6, (512, 512), 5.0, syntax, z_start=-60.0)


def generate_small_set(seed: int = 0) -> Iterator[Dataset]:
    """The small committed set (10 files, about 1.2 MB) written to ``sample_data/files``.

    Three 256x256 CT slices (ISO_IR 100), one 512x512 CT slice in JPEG 2000 lossless
    (ISO_IR 192 Greek), an MR slice native and RLE (ISO 2022 IR 87 Japanese), a reduced
    CR in JPEG-LS lossless (ISO_IR 192 Chinese), an 8-frame RGB US cine (ISO_IR 144),
    and 64x64 CT instances Deflated (ISO_IR 192 Arabic) and native (ISO_IR 126 Greek).
    """
    ct = _intl("latin1", seed, "small-ct", "CT CHEST WITH CONTRAST")
    yield from ct_series(_ct_series_info(ct, seed, 2, "Axial 10mm Standard", "CHEST"),
                         seed, 3, (256, 256), 10.0, z_start=-80.0)
    greek = _intl("greek", seed, "small-j2k", "CT THORAX")
    yield from ct_series(_ct_series_info(greek, seed, 2, "Axial 5mm Lung", "CHEST"),
                         seed, 1, (512, 512), 5.0, JPEG2000Lossless, z_start=-120.0)
    mr = _intl("japanese", seed, "small-mr", "MR HEAD WITHOUT CONTRAST")
    mr_slice = list(mr_series(make_series(mr, seed, 3, "MR", "Ax T1 SE", "HEAD", MR_SCANNER), seed, 1,
                              z_top=30.0))
    yield from _with_copies(mr_slice, mr_slice, RLELossless, seed, 103)
    cr = _intl("chinese", seed, "small-cr", "XR CHEST PA")
    yield cr_image(make_series(cr, seed, 1, "CR", "Chest PA (reduced)", "CHEST", CR_READER,
                               with_frame_of_reference=False), seed, (500, 410), JPEGLSLossless)
    us = _intl("cyrillic", seed, "small-us", "ECHO TRANSTHORACIC")
    yield us_cine(make_series(us, seed, 1, "US", "Parasternal long axis", "HEART", US_SCANNER,
                              with_frame_of_reference=False), seed, 8, (96, 128))
    for key, syntax in (("arabic", DeflatedExplicitVRLittleEndian), ("greek8859", ExplicitVRLittleEndian)):
        study = _intl(key, seed, "small-tiny", "CT LOW-RES")
        yield from ct_series(_ct_series_info(study, seed, 1, "Tiny 64x64", "CHEST"),
                             seed, 1, (64, 64), 5.0, syntax, z_start=-100.0)


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM Part 10 file: 128-byte preamble, ``DICM``, file meta (PS3.10 7.1).

    The transfer syntax is the one in ``ds.file_meta``; Deflated datasets are deflated here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


def write_series(datasets: Iterable[Dataset], out_dir: Path) -> list[Path]:
    """Write each dataset to ``out_dir/<SOP Instance UID>.dcm``; return the paths in order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = out_dir / f"{ds.SOPInstanceUID}.dcm"
        write_dataset(ds, path)
        paths.append(path)
    return paths
