"""The study summary: the patient- and study-level attributes of a study's first instance,
kept on the study row so that a study-level search need not read instance JSON.

A study-level match takes its values from its representative instance, the smallest
instance id under it (pacs/query/run.py). On an index of a million instances reading
each representative's JSON (about 2 kB, from a table far larger than memory) is most of
the time of a C-FIND answering hundreds of studies (docs/big-index.md). The summary is
that JSON cut to :data:`SUMMARY_KEYWORDS`, stored with the representative's id and
SHA-256 (``study.summary_json``, ``summary_rep``, ``summary_sha``):

* written when ingest creates the study (its first instance is the representative:
  instance ids only grow, and the study row is locked until that instance is inserted);
* rewritten when the representative is replaced (duplicate policy ``overwrite``) and
  after deletes (:func:`refresh_summary`);
* used for requests whose every key is in the summary; a study without one (none after
  ``pacs db upgrade``) is answered from its first instance's JSON.

Every write that can change a study's first instance keeps its summary, so a search
trusts it and need not look for the first instance: at 848 matches that look-up (a
correlated sub-query per study) was three quarters of the SQL time.

The attribute list is versioned (:data:`SUMMARY_VERSION`, kept in ``schema_meta``): a
release that changes it rebuilds every summary at ``pacs db upgrade`` (:func:`backfill`).
"""

from __future__ import annotations

from typing import Any, Iterable

import orjson
from pydicom.datadict import tag_for_keyword
from sqlalchemy import Connection, bindparam, func, select, update

from .models import Instance, Series, Study

#: Bump when :data:`SUMMARY_KEYWORDS` changes: the next upgrade rebuilds the summaries.
SUMMARY_VERSION = "1"

#: Attributes kept: PS3.3 C.7.1.1 Patient, C.7.2.1 General Study, C.7.2.2 Patient Study,
#: the Study Root / Patient Root return keys of PS3.4 C.6.1.1.2-3, PS3.18 Table 10.6.3-3
#: (QIDO-RS study defaults), and the few series-level attributes viewers and
#: workstations ask for at study level. Any attribute may be listed: the summary holds the representative's own
#: values, exactly what the instance JSON would give.
SUMMARY_KEYWORDS = (
    "SpecificCharacterSet", "TimezoneOffsetFromUTC", "InstanceAvailability",
    # Patient
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "EthnicGroup", "PatientComments", "PatientSpeciesDescription", "PatientBreedDescription",
    "ResponsiblePerson", "ResponsibleOrganization", "PatientIdentityRemoved", "DeidentificationMethod",
    "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator",
    # General Study
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "RequestingService", "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence", "ReferencedStudySequence", "StudyStatusID",
    "StudyPriorityID", "RequestedProcedureDescription", "RequestedProcedureID",
    # Patient Study
    "AdmittingDiagnosesDescription", "PatientAge", "PatientSize", "PatientWeight", "Occupation",
    "AdditionalPatientHistory", "PatientSexNeutered", "MedicalAlerts", "Allergies", "PregnancyStatus",
    "SmokingStatus", "AdmissionID",
    # Asked at study level by viewers and workstations (OHIF's study list: Modality)
    "Modality", "RetrieveURL", "InstitutionName", "InstitutionalDepartmentName", "StationName",
    "Manufacturer",
    # Computed at study level (the query adds the archive's values over these)
    "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)

#: :data:`SUMMARY_KEYWORDS` as 8-digit upper-case hex tags, the form the query model uses.
SUMMARY_TAGS = frozenset(f"{tag_for_keyword(k):08X}" for k in SUMMARY_KEYWORDS)


def covers(tags: Iterable[str]) -> bool:
    """True when every tag is kept in the summary."""
    return SUMMARY_TAGS.issuperset(tags)


def study_summary(dicom_json: str | dict[str, Any]) -> str:
    """The summary of an instance's stored DICOM JSON: its elements among
    :data:`SUMMARY_TAGS`, unchanged (bulk data URIs included)."""
    body = orjson.loads(dicom_json) if isinstance(dicom_json, str) else dicom_json
    return orjson.dumps({tag: value for tag, value in body.items() if tag in SUMMARY_TAGS}).decode()


def first_instances(conn: Connection, study_pks: list[int]) -> dict[int, int]:
    """Each study's first instance (smallest id) by study; studies without one are left out."""
    found: dict[int, int] = {}
    for start in range(0, len(study_pks), 500):
        found.update(conn.execute(
            select(Series.study_fk, func.min(Instance.id))
            .join(Instance, Instance.series_fk == Series.id)
            .where(Series.study_fk.in_(study_pks[start:start + 500]))
            .group_by(Series.study_fk)
        ).all())
    return found


_SET_SUMMARY = (
    update(Study).where(Study.id == bindparam("b_pk"))
    .values(summary_json=bindparam("b_json"), summary_rep=bindparam("b_rep"), summary_sha=bindparam("b_sha"))
)


def _values(study_pk: int, first: Any) -> dict[str, Any]:
    """:data:`_SET_SUMMARY`'s parameters from the first instance's row (None: no summary)."""
    if first is None:
        return {"b_pk": study_pk, "b_json": None, "b_rep": None, "b_sha": None}
    return {"b_pk": study_pk, "b_json": study_summary(first.dicom_json), "b_rep": first.id, "b_sha": first.sha256}


def write_summary(conn: Connection, study_pk: int, instance_pk: int, dicom_json: str, sha256: str) -> None:
    """Set a study's summary from its first instance, e.g. right after it was replaced."""
    conn.execute(_SET_SUMMARY, {"b_pk": study_pk, "b_json": study_summary(dicom_json),
                                "b_rep": instance_pk, "b_sha": sha256})


def refresh_summaries(conn: Connection, study_pks: list[int]) -> None:
    """Rewrite the summaries of ``study_pks`` from their current first instances (a study
    without instances gets none)."""
    reps = first_instances(conn, study_pks)
    rows = conn.execute(
        select(Instance.id, Instance.sha256, Instance.dicom_json).where(Instance.id.in_(list(reps.values())))
    ).all() if reps else []
    by_id = {row.id: row for row in rows}
    conn.execute(_SET_SUMMARY, [_values(pk, by_id.get(reps.get(pk, -1))) for pk in study_pks])


def refresh_summary(conn: Connection, study_pk: int) -> None:
    """:func:`refresh_summaries` for one study (after deletes)."""
    refresh_summaries(conn, [study_pk])


def backfill(conn: Connection, batch: int = 500) -> int:
    """Rebuild every study's summary, ``batch`` studies at a time; the number rebuilt."""
    done, last = 0, 0
    while True:
        pks = conn.execute(select(Study.id).where(Study.id > last).order_by(Study.id).limit(batch)).scalars().all()
        if not pks:
            return done
        refresh_summaries(conn, list(pks))
        done, last = done + len(pks), pks[-1]
