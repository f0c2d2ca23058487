"""Radiology reports: drafts, signing, amendments.

A radiologist who holds a study (claimed it on the reading worklist) saves a **draft**
(findings, impression, optional coded diagnoses); the study becomes ``preliminary``.
**Signing** the draft:

1. builds a Basic Text SR of the report (worklist/sr.py) in the study, with the earlier
   signed versions as predecessor documents, and stores it through the one ingest path,
   so every viewer and every DICOM client sees it;
2. in one transaction: the version becomes ``final`` (the first signed one) or
   ``amended`` (later ones), the study's reading state follows, a ``ReportSigned`` event
   is appended and, when ``PACS_EMR_FHIR_URL`` is set, the FHIR DiagnosticReport is
   enqueued for the EMR (worklist/emr.py).

An amendment is a new draft on a signed study, by any radiologist, signed the same way.
Signed versions are never changed. If step 2 fails after step 1, the SR stays in the
study and signing again stores a new one (the version is still a draft).
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage
from sqlalchemy import Connection, func, insert, select, update

from pacs.access import SYSTEM, Caller
from pacs.archive import Archive
from pacs.errors import Conflict, InvalidQuery, NotFound
from pacs.events import EventType, append_event
from pacs.index.db import Database
from pacs.index.models import Instance, Series, Study
from pacs.retrieve import header_dataset

from . import emr
from .reading_models import ReadingItem, Report
from .sr import ReportContent, build_report_sr

MAX_TEXT = 64 * 1024
SIGNED = ("final", "amended")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise InvalidQuery(f"{name} must be text of at most {MAX_TEXT} characters")
    return value.strip()


def _codes(value: Any) -> list[dict[str, str]]:
    """Coded diagnoses: a list of {"system", "code", "display"?} with non-empty strings."""
    if value is None:
        return []
    ok = isinstance(value, list) and len(value) <= 20 and all(
        isinstance(c, dict) and set(c) <= {"system", "code", "display"}
        and all(isinstance(c.get(k), str) and c.get(k) for k in ("system", "code"))
        and isinstance(c.get("display", ""), str) for c in value)
    if not ok:
        raise InvalidQuery('codes must be a list of at most 20 {"system", "code", "display"} objects')
    return [{k: c[k][:256] for k in ("system", "code", "display") if k in c} for c in value]


def as_json(row: Any) -> dict[str, Any]:
    return {"study_uid": row.study_uid, "version": row.version, "status": row.status, "author": row.author,
            "findings": row.findings, "impression": row.impression, "codes": json.loads(row.codes),
            "created_at": row.created_at, "signed_at": row.signed_at, "sr_sop_uid": row.sr_sop_uid}


def versions(db: Database, study_uid: str) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(select(Report).where(Report.study_uid == study_uid).order_by(Report.version)).all()
    return [as_json(r) for r in rows]


def _item(conn: Connection, study_uid: str) -> Any:
    item = conn.execute(select(ReadingItem).where(ReadingItem.study_uid == study_uid)).first()
    if item is None:
        raise NotFound(f"study {study_uid} is not on the reading worklist")
    return item


def _may_write(item: Any, author: str) -> None:
    """A draft needs the study in the author's hands, or a signed study (amendment)."""
    if item.state in ("claimed", "preliminary") and item.assigned_to == author:
        return
    if item.state in SIGNED:
        return
    holder = f" by {item.assigned_to}" if item.assigned_to else ""
    raise Conflict(f"study is {item.state}{holder}: claim it before writing its report")


def save_draft(db: Database, study_uid: str, author: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create or update the study's draft (see module doc); the draft as JSON."""
    findings, impression = _text(body.get("findings", ""), "findings"), _text(body.get("impression", ""), "impression")
    codes = json.dumps(_codes(body.get("codes")))
    now = time.time()
    with db.write() as conn:
        item = _item(conn, study_uid)
        _may_write(item, author)
        draft = conn.execute(select(Report).where(Report.study_uid == study_uid, Report.status == "draft")).first()
        if draft is not None and draft.author != author:
            raise Conflict(f"{draft.author} has a draft of this study")
        if draft is None:
            version = (conn.execute(select(func.max(Report.version)).where(Report.study_uid == study_uid))
                       .scalar() or 0) + 1
            conn.execute(insert(Report).values(study_uid=study_uid, version=version, status="draft", author=author,
                                               findings=findings, impression=impression, codes=codes,
                                               created_at=now, sr_sop_uid=""))
        else:
            conn.execute(update(Report).where(Report.id == draft.id)
                         .values(findings=findings, impression=impression, codes=codes))
        if item.state == "claimed":
            conn.execute(update(ReadingItem).where(ReadingItem.id == item.id)
                         .values(state="preliminary", updated_at=now))
    return [v for v in versions(db, study_uid) if v["status"] == "draft"][0]


def _evidence(conn: Connection, study_uid: str) -> list[Dataset]:
    """The study's instances as highdicom wants its evidence: the first with the patient
    and study attributes from its stored DICOM JSON (only that one JSON is read), the rest
    with their UIDs only. Earlier report SRs are not evidence."""
    rows = conn.execute(
        select(Instance.id, Instance.sop_class_uid, Instance.sop_instance_uid, Series.series_uid)
        .join(Series, Series.id == Instance.series_fk).join(Study, Study.id == Series.study_fk)
        .where(Study.study_uid == study_uid, Instance.sop_class_uid != BasicTextSRStorage)
        .order_by(Instance.id)).all()
    if not rows:
        raise NotFound(f"study {study_uid} holds no instances")
    first_json = conn.execute(select(Instance.dicom_json).where(Instance.id == rows[0].id)).scalar_one()
    evidence = []
    for i, row in enumerate(rows):
        ds = header_dataset(first_json) if i == 0 else Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = row.sop_class_uid, row.sop_instance_uid
        ds.SeriesInstanceUID, ds.StudyInstanceUID = row.series_uid, study_uid
        evidence.append(ds)
    return evidence


def _previous_srs(conn: Connection, study_uid: str) -> list[Dataset]:
    uids = conn.execute(select(Report.sr_sop_uid).where(Report.study_uid == study_uid,
                                                        Report.status.in_(SIGNED))).scalars().all()
    rows = conn.execute(select(Instance.sop_class_uid, Instance.sop_instance_uid, Series.series_uid)
                        .join(Series, Series.id == Instance.series_fk)
                        .where(Instance.sop_instance_uid.in_(uids))).all() if uids else []
    previous = []
    for row in rows:
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = row.sop_class_uid, row.sop_instance_uid
        ds.SeriesInstanceUID, ds.StudyInstanceUID = row.series_uid, study_uid
        previous.append(ds)
    return previous


def sign(archive: Archive, study_uid: str, author: str, caller: Caller = SYSTEM) -> dict[str, Any]:
    """Sign the author's draft (see module doc); the signed version as JSON. ``caller``
    needs the ``report`` scope to store the SR (pacs/access.py)."""
    with archive.db.read() as conn:
        draft = conn.execute(select(Report).where(Report.study_uid == study_uid, Report.status == "draft")).first()
        if draft is None or draft.author != author:
            raise Conflict(f"{author} has no draft of this study to sign")
        item = _item(conn, study_uid)
        evidence, previous = _evidence(conn, study_uid), _previous_srs(conn, study_uid)
    status = "amended" if item.state in SIGNED else "final"
    content = ReportContent(author, draft.findings, draft.impression, json.loads(draft.codes))
    sr = build_report_sr(evidence, content, version=draft.version, previous=previous)
    archive.ingest_dataset(sr, source="report", caller=caller)
    now = time.time()
    with archive.db.write() as conn:
        done = conn.execute(update(Report).where(Report.id == draft.id, Report.status == "draft")
                            .values(status=status, signed_at=now, sr_sop_uid=sr.SOPInstanceUID)).rowcount
        if not done:
            raise Conflict("the draft was signed meanwhile")
        conn.execute(update(ReadingItem).where(ReadingItem.study_uid == study_uid)
                     .values(state=status, assigned_to=author, updated_at=now))
        append_event(conn, EventType.REPORT_SIGNED, study_uid=study_uid, sop_instance_uid=sr.SOPInstanceUID,
                     payload={"version": draft.version, "status": status})
        if archive.settings.emr_fhir_url:
            resource = emr.diagnostic_report(
                study_uid=study_uid, patient_id=str(sr.PatientID), patient_name=str(sr.PatientName),
                accession=str(sr.get("AccessionNumber", "")), status=status, author=author,
                findings=draft.findings, impression=draft.impression, codes=json.loads(draft.codes),
                signed_at=now, sr_sop_uid=sr.SOPInstanceUID)
            emr.enqueue_resource(conn, archive.settings.emr_fhir_url, resource,
                                 f"report:{study_uid}:{draft.version}")
    return [v for v in versions(archive.db, study_uid) if v["version"] == draft.version][0]
