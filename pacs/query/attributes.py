"""Which attributes the index can match on, at which level, in which column.

Attributes listed here are matched in SQL; any other attribute can still be returned
(from the stored DICOM JSON) but not matched on. Computed attributes (PS3.4 C.3.4,
counts and ModalitiesInStudy / SOPClassesInStudy) come from the aggregate columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..index.models import Instance, Patient, Series, Study
from .model import Level


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level
    column: Any  # SQLAlchemy column matched on
    vr: str
    #: True for person names: matched on the normalised column, case/accent-insensitive.
    person_name: bool = False

    @property
    def tag(self) -> str:
        return f"{tag_for_keyword(self.keyword):08X}"


def _a(keyword: str, level: Level, column: Any, person_name: bool = False) -> Attribute:
    return Attribute(keyword, level, column, dictionary_VR(keyword), person_name)


MATCHABLE: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        _a("PatientID", Level.PATIENT, Patient.patient_id),
        _a("IssuerOfPatientID", Level.PATIENT, Patient.issuer),
        _a("PatientName", Level.PATIENT, Patient.patient_name_norm, person_name=True),
        _a("PatientBirthDate", Level.PATIENT, Patient.birth_date),
        _a("PatientSex", Level.PATIENT, Patient.sex),
        _a("StudyInstanceUID", Level.STUDY, Study.study_uid),
        _a("StudyDate", Level.STUDY, Study.study_date),
        _a("StudyTime", Level.STUDY, Study.study_time),
        _a("AccessionNumber", Level.STUDY, Study.accession_number),
        _a("StudyID", Level.STUDY, Study.study_id),
        _a("StudyDescription", Level.STUDY, Study.study_description),
        _a("ReferringPhysicianName", Level.STUDY, Study.referring_physician_norm, person_name=True),
        _a("ModalitiesInStudy", Level.STUDY, Series.modality),
        _a("SeriesInstanceUID", Level.SERIES, Series.series_uid),
        _a("Modality", Level.SERIES, Series.modality),
        _a("SeriesNumber", Level.SERIES, Series.series_number),
        _a("SeriesDescription", Level.SERIES, Series.series_description),
        _a("BodyPartExamined", Level.SERIES, Series.body_part_examined),
        _a("SeriesDate", Level.SERIES, Series.series_date),
        _a("SeriesTime", Level.SERIES, Series.series_time),
        _a("SOPInstanceUID", Level.IMAGE, Instance.sop_instance_uid),
        _a("SOPClassUID", Level.IMAGE, Instance.sop_class_uid),
        _a("InstanceNumber", Level.IMAGE, Instance.instance_number),
    )
}

#: Computed attributes (PS3.4 C.3.4 / C.6.1.1) and the level whose row holds them.
COMPUTED: dict[str, Level] = {
    "NumberOfPatientRelatedStudies": Level.PATIENT,
    "NumberOfPatientRelatedSeries": Level.PATIENT,
    "NumberOfPatientRelatedInstances": Level.PATIENT,
    "NumberOfStudyRelatedSeries": Level.STUDY,
    "NumberOfStudyRelatedInstances": Level.STUDY,
    "ModalitiesInStudy": Level.STUDY,
    "SOPClassesInStudy": Level.STUDY,
    "NumberOfSeriesRelatedInstances": Level.SERIES,
}

#: Unique key of each level (PS3.4 C.4.1.1.3).
UNIQUE_KEYS: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

#: Value representations on which wildcard matching is allowed (PS3.4 C.2.2.2.4).
WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
#: Value representations with range matching (PS3.4 C.2.2.2.5).
RANGE_VRS = {"DA", "TM", "DT"}


def attribute_level(keyword: str) -> Level | None:
    """The level an attribute belongs to in the archive's model, None if unknown."""
    if keyword in MATCHABLE:
        return MATCHABLE[keyword].level
    return COMPUTED.get(keyword)
