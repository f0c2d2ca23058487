"""The shared matching table: one data set and the cases both doors (C-FIND, QIDO-RS) must pass.

Each case is (level, {keyword: query value}, expected result labels). Values use the
DICOM syntax (backslash for lists); the QIDO door turns lists into commas itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from .factory import make_ct, short_uid


@dataclass(frozen=True)
class StudySpec:
    label: str
    patient_id: str
    patient_name: str
    date: str
    time: str
    accession: str
    description: str
    referring: str
    series: tuple[tuple[str, int], ...]  # (modality, instance count)


STUDIES = (
    StudySpec("S1", "P1", "Doe^John", "20260101", "101500", "A100", "CT CHEST", "Smith^Anna", (("CT", 3),)),
    StudySpec("S2", "P1", "Doe^John", "20260115", "153000", "A101", "MR HEAD", "Jones^Bob", (("MR", 2),)),
    StudySpec("S3", "P2", "Müller^Jürgen", "20251231", "080000", "B_1%", "CT ABDOMEN", "", (("CT", 1), ("PT", 1))),
    StudySpec("S4", "P3", "O'Brien^Mary", "20260201", "120000", "A1002", "CR CHEST", "", (("CR", 1),)),
    StudySpec("S5", "P4", "DOE^JANE", "20260110", "090000", "C7", "US ABDOMEN", "", (("US", 1),)),
)

STUDY_CASES: list[tuple[dict[str, str], set[str]]] = [
    ({"PatientID": "P1"}, {"S1", "S2"}),
    ({"PatientName": "doe*"}, {"S1", "S2", "S5"}),
    ({"PatientName": "*brien*"}, {"S4"}),
    ({"PatientName": "muller^jurgen"}, {"S3"}),
    ({"PatientName": "Doe^J?hn"}, {"S1", "S2"}),
    ({"PatientName": "DOE^JOHN"}, {"S1", "S2"}),
    ({"StudyDate": "20260101-20260131"}, {"S1", "S2", "S5"}),
    ({"StudyDate": "-20251231"}, {"S3"}),
    ({"StudyDate": "20260201-"}, {"S4"}),
    ({"StudyDate": "20260115"}, {"S2"}),
    ({"AccessionNumber": "A10*"}, {"S1", "S2", "S4"}),
    ({"AccessionNumber": "B_1%"}, {"S3"}),
    ({"AccessionNumber": "B_*"}, {"S3"}),
    ({"AccessionNumber": "A_00"}, set()),
    ({"AccessionNumber": "A1?0"}, {"S1"}),
    ({"ModalitiesInStudy": "PT"}, {"S3"}),
    ({"ModalitiesInStudy": "CT\\MR"}, {"S1", "S2", "S3"}),
    ({"StudyTime": "1000-1100"}, {"S1"}),
    ({"StudyTime": "15"}, {"S2"}),
    ({"StudyDescription": "*CHEST"}, {"S1", "S4"}),
    ({"PatientName": "DOE*", "StudyDate": "20260110-"}, {"S2", "S5"}),
    ({"ReferringPhysicianName": "smith*"}, {"S1"}),
    ({"PatientName": "", "StudyDate": ""}, {"S1", "S2", "S3", "S4", "S5"}),
    ({"PatientID": "NOBODY"}, set()),
    ({"StudyTime": "080000-101500"}, {"S1", "S3", "S5"}),
    ({"StudyDate": "20260101-20260101"}, {"S1"}),
    ({"PatientName": "o'brien^mary"}, {"S4"}),
    ({"AccessionNumber": "A100\\C7"}, {"S1", "S5"}),
    ({"PatientBirthDate": "19700101", "PatientSex": "F"}, {"S1", "S2", "S3", "S4", "S5"}),
]


def build_datasets() -> tuple[list[Dataset], dict[str, str]]:
    """The instances of the matching data set and a map label -> UID (studies: S1..,
    series: S1.CT, .., patients: P1..)."""
    datasets, labels = [], {}
    for spec in STUDIES:
        study = short_uid()
        labels[spec.label] = study
        for s_index, (modality, count) in enumerate(spec.series):
            series = f"{study}.{s_index + 1}"
            labels[f"{spec.label}.{modality}"] = series
            for i in range(count):
                ds = make_ct(study=study, series=series, patient_id=spec.patient_id,
                             patient_name=spec.patient_name, seed=len(datasets))
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds.StudyDate, ds.StudyTime = spec.date, spec.time
                ds.AccessionNumber, ds.StudyDescription = spec.accession, spec.description
                ds.ReferringPhysicianName = spec.referring
                ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, s_index + 1, i + 1
                datasets.append(ds)
    return datasets, labels
