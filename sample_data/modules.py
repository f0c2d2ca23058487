"""Common IOD modules (PS3.3 C.7, C.12) shared by every generated instance.

:class:`StudyInfo` and :class:`SeriesInfo` carry the values that repeat across a study
or series; :func:`new_instance` turns them into a dataset holding the SOP Common,
Patient, General Study, Patient Study, General Series, Frame of Reference, General
Equipment and General Image modules, and :func:`set_pixel_data` adds Image Pixel
(PS3.3 C.7.6.3).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UID

from .charsets import DEFAULT_LOCALE, Locale, PatientInfo
from .determinism import age_string, da, date_for, rng_for, shift_time, time_for, tm, uid_for

#: (0002,0012) and (0002,0013), fixed so files do not change with the pydicom version.
IMPLEMENTATION_CLASS_UID = uid_for(0, "implementation-class")
IMPLEMENTATION_VERSION_NAME = "SAMPLEDATA_1"


@dataclass(frozen=True)
class Equipment:
    """General Equipment module values (PS3.3 C.7.5.1)."""

    manufacturer: str
    model: str
    software: str
    serial: str


@dataclass(frozen=True)
class StudyInfo:
    """Values shared by every instance of a study (PS3.3 C.7.2.1, C.7.2.2)."""

    patient: PatientInfo
    study_uid: str
    study_id: str
    accession: str
    date: _dt.date
    time: _dt.time
    description: str
    locale: Locale = DEFAULT_LOCALE


@dataclass(frozen=True)
class SeriesInfo:
    """Values shared by every instance of a series (PS3.3 C.7.3.1, C.7.4.1, C.7.5.1)."""

    study: StudyInfo
    series_uid: str
    number: int
    modality: str
    description: str
    body_part: str
    equipment: Equipment
    start: _dt.datetime
    frame_of_reference_uid: str | None = None
    protocol: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def make_study(
    seed: int,
    label: str,
    patient: PatientInfo,
    description: str,
    *,
    study_uid: str | None = None,
    locale: Locale = DEFAULT_LOCALE,
) -> StudyInfo:
    """A study whose UID, IDs, date and time all derive from ``(seed, label, patient)``."""
    key = (label, patient.patient_id)
    rng = rng_for(seed, "study", *key)
    return StudyInfo(
        patient=patient,
        study_uid=study_uid or uid_for(seed, "study", *key),
        study_id=str(int(rng.integers(1000, 99999))),
        accession=f"A{int(rng.integers(10**8, 10**9))}",
        date=date_for(seed, *key),
        time=time_for(seed, *key),
        description=description,
        locale=locale,
    )


def make_series(
    study: StudyInfo,
    seed: int,
    number: int,
    modality: str,
    description: str,
    body_part: str,
    equipment: Equipment,
    *,
    with_frame_of_reference: bool = True,
    protocol: str = "",
    extra: dict[str, object] | None = None,
) -> SeriesInfo:
    """A series of ``study``; its UIDs derive from the study UID and series number."""
    start = shift_time(study.date, study.time, 60.0 * number)
    for_uid = uid_for(seed, study.study_uid, "frame-of-reference") if with_frame_of_reference else None
    return SeriesInfo(
        study=study,
        series_uid=uid_for(seed, study.study_uid, "series", number, description),
        number=number,
        modality=modality,
        description=description,
        body_part=body_part,
        equipment=equipment,
        start=start,
        frame_of_reference_uid=for_uid,
        protocol=protocol,
        extra=dict(extra or {}),
    )


def instance_uid(seed: int, series: SeriesInfo, index: int) -> UID:
    """SOP Instance UID of the ``index``-th instance of ``series``."""
    return uid_for(seed, series.series_uid, "instance", index)


def new_instance(
    series: SeriesInfo,
    sop_class_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    content: _dt.datetime,
) -> Dataset:
    """A dataset with the modules common to all generated images and its file meta."""
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class_uid, sop_instance_uid)
    _sop_common(ds, series.study, sop_class_uid, sop_instance_uid)
    _patient_and_study(ds, series.study)
    _series_and_equipment(ds, series)
    ds.InstanceNumber = instance_number
    ds.ContentDate = da(content.date())
    ds.ContentTime = tm(content, fraction=True)
    ds.AcquisitionDate = da(content.date())
    ds.AcquisitionTime = tm(content, fraction=True)
    ds.BurnedInAnnotation = "NO"
    return ds


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File Meta Information (PS3.10 7.1) with our own implementation identity."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _sop_common(ds: Dataset, study: StudyInfo, sop_class_uid: str, sop_instance_uid: str) -> None:
    """SOP Common module (PS3.3 C.12.1), including Specific Character Set (C.12.1.1.2)."""
    charset = study.patient.charset_value()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.InstanceCreationDate = da(study.date)
    ds.InstanceCreationTime = tm(study.time)
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid


def _patient_and_study(ds: Dataset, study: StudyInfo) -> None:
    """Patient (C.7.1.1), General Study (C.7.2.1) and Patient Study (C.7.2.2) modules."""
    patient = study.patient
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "SAMPLEDATA"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyDate = da(study.date)
    ds.StudyTime = tm(study.time)
    ds.ReferringPhysicianName = study.locale.referring_physician
    ds.StudyInstanceUID = study.study_uid
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession
    ds.StudyDescription = study.description
    ds.PatientAge = age_string(patient.birth_date, study.date)


def _series_and_equipment(ds: Dataset, series: SeriesInfo) -> None:
    """General Series (C.7.3.1), Frame of Reference (C.7.4.1), General Equipment (C.7.5.1)."""
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = series.number
    ds.SeriesDate = da(series.start.date())
    ds.SeriesTime = tm(series.start)
    ds.SeriesDescription = series.description
    ds.BodyPartExamined = series.body_part
    if series.protocol:
        ds.ProtocolName = series.protocol
    if series.frame_of_reference_uid:
        ds.FrameOfReferenceUID = series.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
    equipment, locale = series.equipment, series.study.locale
    ds.Manufacturer = equipment.manufacturer
    ds.ManufacturerModelName = equipment.model
    ds.SoftwareVersions = equipment.software
    ds.DeviceSerialNumber = equipment.serial
    ds.InstitutionName = locale.institution
    ds.StationName = locale.station
    for keyword, value in series.extra.items():
        setattr(ds, keyword, value)


def set_pixel_data(
    ds: Dataset,
    pixels: np.ndarray,
    photometric: str,
    bits_stored: int,
    *,
    frames: int | None = None,
) -> None:
    """Image Pixel module (PS3.3 C.7.6.3) and native little-endian Pixel Data (PS3.5 8.1).

    ``pixels`` is ``(rows, cols)``, ``(rows, cols, 3)``, or with a leading frame axis when
    ``frames`` is given; its dtype sets Bits Allocated and Pixel Representation.
    """
    colour = photometric in ("RGB", "YBR_FULL")
    shape = pixels.shape[1:] if frames else pixels.shape
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    if frames:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    data = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    ds.add_new(0x7FE00010, "OW" if ds.BitsAllocated > 8 else "OB", data)
