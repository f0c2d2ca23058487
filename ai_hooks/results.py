"""Findings posted back by AI engines (``POST /api/ai/results``): a DICOM SR in the study,
a FHIR transaction to the EMR, and triage on the reading worklist.

1. The document is validated (ai_hooks/findings.py) and checked against the index: the
   study must be held and every located image must be one of its instances (400/404
   otherwise, nothing stored).
2. A Comprehensive SR with a TID 1500 measurement report (ai_hooks/sr.py) is stored
   through the one ingest path (source ``ai``), so viewers and DICOM clients see it.
3. In ONE transaction: the ``ai_result`` row; when a finding is critical, the study moves
   to STAT on the reading worklist with the reason ``AI: <model> <version>: <label>``
   (:func:`worklist.reading.raise_priority`, never downwards); when
   ``PACS_EMR_FHIR_URL`` is set, the FHIR Bundle (ai_hooks/fhir.py) is enqueued.

If step 3 fails after step 2 the SR stays in the study and posting again stores another.
A critical finding for a study that is not on the reading worklist yet (not stable) puts
it there at once, at STAT.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Connection, insert, select, update

from pacs.access import SYSTEM, Caller, require
from pacs.archive import Archive
from pacs.errors import InvalidQuery, NotFound
from pacs.index.db import Database
from pacs.index.models import Instance, Patient, Series, Study
from pacs.retrieve import header_dataset
from worklist.reading import raise_priority

from . import fhir
from .findings import Findings
from .models import AIResult
from .sr import build_findings_sr

STAT = 1


def _images(conn: Connection, study_uid: str, uids: set[str]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.number_of_frames, Series.series_uid)
        .join(Series, Series.id == Instance.series_fk).join(Study, Study.id == Series.study_fk)
        .where(Study.study_uid == study_uid, Instance.sop_instance_uid.in_(uids))).all() if uids else []
    found = {r.sop_instance_uid: {"sop_class_uid": r.sop_class_uid, "frames": r.number_of_frames or 1,
                                  "series_uid": r.series_uid} for r in rows}
    missing = sorted(uids - set(found))
    if missing:
        raise InvalidQuery(f"location.sop_instance_uid {missing[0]} is not an instance of study {study_uid}")
    return found


def _evidence(conn: Connection, findings: Findings, images: dict[str, dict[str, Any]]) -> tuple[list[Dataset], str]:
    """The SR's evidence (see ai_hooks/sr.py) and the patient ID."""
    first = conn.execute(
        select(Instance.sop_instance_uid, Instance.sop_class_uid, Instance.dicom_json, Series.series_uid,
               Patient.patient_id)
        .join(Series, Series.id == Instance.series_fk).join(Study, Study.id == Series.study_fk)
        .join(Patient, Patient.id == Study.patient_fk)
        .where(Study.study_uid == findings.study_uid).order_by(Instance.id).limit(1)).first()
    if first is None:
        raise NotFound(f"study {findings.study_uid} is not held")
    evidence = [header_dataset(first.dicom_json)]
    for uid, image in images.items():
        if uid == first.sop_instance_uid:
            continue
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = image["sop_class_uid"], uid
        ds.SeriesInstanceUID, ds.StudyInstanceUID = image["series_uid"], findings.study_uid
        evidence.append(ds)
    return evidence, first.patient_id


def submit(archive: Archive, findings: Findings, caller: Caller = SYSTEM) -> dict[str, Any]:
    """Store, record, triage and forward one findings document (module doc); its record.
    ``caller`` needs the ``ai`` scope for the study (pacs/access.py)."""
    require(caller, "ai", findings.study_uid)
    uids = {f.location.sop_instance_uid for f in findings.findings if f.location}
    with archive.db.read() as conn:
        images = _images(conn, findings.study_uid, uids)
        for f in findings.findings:
            if f.location and f.location.frame and f.location.frame > images[f.location.sop_instance_uid]["frames"]:
                raise InvalidQuery(f"frame {f.location.frame} beyond the frames of {f.location.sop_instance_uid}")
        evidence, patient_id = _evidence(conn, findings, images)
    sr = build_findings_sr(evidence, findings, images)
    archive.ingest_dataset(sr, source="ai", caller=caller)
    now = time.time()
    critical = findings.critical
    with archive.db.write() as conn:
        result_id = conn.execute(insert(AIResult).values(
            study_uid=findings.study_uid, model_name=findings.model_name, model_version=findings.model_version,
            findings=len(findings.findings), critical=bool(critical), priority_raised=False,
            sr_sop_uid=sr.SOPInstanceUID, body="{}", created_at=now).returning(AIResult.id)).scalar_one()
        raised = bool(critical) and raise_priority(
            conn, findings.study_uid, STAT, f"AI: {findings.model_name} {findings.model_version}: {critical[0].label}")
        conn.execute(update(AIResult).where(AIResult.id == result_id).values(
            priority_raised=raised, body=json.dumps(summary(findings))))
        if archive.settings.emr_fhir_url:
            bundle = fhir.transaction(findings, int(result_id), patient_id, sr.SOPInstanceUID, now)
            fhir.enqueue(conn, archive.settings.emr_fhir_url, bundle, f"ai-result:{result_id}")
    return get(archive.db, int(result_id))


def summary(findings: Findings) -> dict[str, Any]:
    """What the results list shows of a document (labels, codes, probabilities)."""
    return {"findings": [{"code": f.code.code, "system": f.code.system, "label": f.label,
                          "probability": f.probability, "critical": f.critical,
                          "measurements": len(f.measurements)} for f in findings.findings]}


def _as_json(row: Any) -> dict[str, Any]:
    return {"id": row.id, "study_uid": row.study_uid, "model": {"name": row.model_name, "version": row.model_version},
            "finding_count": row.findings, "critical": row.critical, "priority_raised": row.priority_raised,
            "sr_sop_instance_uid": row.sr_sop_uid, "created_at": row.created_at, **json.loads(row.body)}


def get(db: Database, result_id: int) -> dict[str, Any]:
    with db.read() as conn:
        row = conn.execute(select(AIResult).where(AIResult.id == result_id)).first()
    if row is None:
        raise NotFound(f"no AI result {result_id}")
    return _as_json(row)


def list_results(db: Database, study_uid: str = "", since: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    stmt = select(AIResult).where(AIResult.id > since)
    if study_uid:
        stmt = stmt.where(AIResult.study_uid == study_uid)
    with db.read() as conn:
        rows = conn.execute(stmt.order_by(AIResult.id).limit(limit)).all()
    return [_as_json(r) for r in rows]
