"""Reports and imaging studies to the EMR as FHIR R4 resources (fhir.resources' R4B
models, validated on construction), through the outbox (pacs/outbox.py).

Each resource has a logical id derived from the Study Instance UID, and is sent as
``PUT {PACS_EMR_FHIR_URL}/{type}/{id}`` (FHIR update-as-create): the first report
creates the DiagnosticReport, an amendment sends a new version of the same resource, and
the ImagingStudy is updated whenever the study becomes stable again. The outbox retries
while the EMR is down; nothing is lost.

* **DiagnosticReport** (signed report): status ``final`` / ``amended``, category RAD,
  code LOINC 18748-4, subject by patient identifier, ``imagingStudy`` reference, the
  radiologist as results interpreter, ``conclusion`` (impression), ``conclusionCode``
  (coded diagnoses) and the whole text as ``presentedForm`` (text/plain, base64).
* **ImagingStudy** (on ``StudyStable``): identifier ``urn:dicom:uid``, subject, started,
  modalities, counts, and each series with its instances (UID, SOP class, number).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from sqlalchemy import Connection, select

from pacs import outbox
from pacs.consumers import Consumer
from pacs.events import ChangeEvent, EventType
from pacs.index.models import Instance, Patient, Series, Study

DCM = "http://dicom.nema.org/resources/ontology/DCM"
CHANNEL = "fhir"
FHIR_JSON = "application/fhir+json"


def resource_id(kind: str, study_uid: str) -> str:
    """A FHIR logical id (``[A-Za-z0-9\\-.]{1,64}``) for ``kind`` of a study."""
    return f"pacs-{kind}-{hashlib.sha256(study_uid.encode()).hexdigest()[:40]}"


def _instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def _started(date: str, time_: str) -> str | None:
    """A FHIR dateTime from DICOM DA and TM (no time zone: date only unless both present)."""
    if len(date) != 8 or not date.isdigit():
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    hhmmss = time_.split(".")[0]
    if len(hhmmss) >= 6 and hhmmss[:6].isdigit():
        return f"{day}T{hhmmss[:2]}:{hhmmss[2:4]}:{hhmmss[4:6]}Z"
    return day


def _subject(patient_id: str, patient_name: str) -> dict[str, Any]:
    return {"identifier": {"value": patient_id}, "display": patient_name.replace("^", " ").strip() or None}


def diagnostic_report(*, study_uid: str, patient_id: str, patient_name: str, accession: str, status: str,
                      author: str, findings: str, impression: str, codes: list[dict[str, str]],
                      signed_at: float, sr_sop_uid: str) -> DiagnosticReport:
    """The DiagnosticReport of a signed report version (see module doc)."""
    text = f"FINDINGS:\n{findings}\n\nIMPRESSION:\n{impression}\n"
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": resource_id("report", study_uid),
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{sr_sop_uid}"}],
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4",
                             "display": "Diagnostic imaging study"}]},
        "subject": _subject(patient_id, patient_name),
        "issued": _instant(signed_at),
        "resultsInterpreter": [{"display": author}],
        "imagingStudy": [{"reference": f"ImagingStudy/{resource_id('study', study_uid)}"}],
        "conclusion": impression or None,
        "conclusionCode": [{"coding": [{"system": c["system"], "code": c["code"], "display": c.get("display")}]}
                           for c in codes] or None,
        "presentedForm": [{"contentType": "text/plain; charset=utf-8", "language": "en",
                           "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                           "title": "Radiology report"}],
    }
    if accession:
        resource["basedOn"] = [{"identifier": {"type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}, "value": accession},
            "type": "ServiceRequest"}]
    return DiagnosticReport.model_validate(_drop_none(resource))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def imaging_study(conn: Connection, study_uid: str) -> ImagingStudy | None:
    """The ImagingStudy of a held study, from the index (None when not held)."""
    study = conn.execute(
        select(Study.id, Study.study_date, Study.study_time, Study.study_description, Study.accession_number,
               Study.num_series, Study.num_instances, Study.modalities, Patient.patient_id, Patient.patient_name)
        .join(Patient, Patient.id == Study.patient_fk).where(Study.study_uid == study_uid)).first()
    if study is None:
        return None
    rows = conn.execute(
        select(Series.series_uid, Series.series_number, Series.modality, Series.series_description,
               Instance.sop_instance_uid, Instance.sop_class_uid, Instance.instance_number)
        .join(Instance, Instance.series_fk == Series.id).where(Series.study_fk == study.id)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)).all()
    series: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = series.setdefault(r.series_uid, {
            "uid": r.series_uid, "number": r.series_number, "description": r.series_description or None,
            "modality": {"system": DCM, "code": r.modality or "OT"}, "instance": []})
        entry["instance"].append({"uid": r.sop_instance_uid, "number": r.instance_number,
                                  "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{r.sop_class_uid}"}})
    for entry in series.values():
        entry["numberOfInstances"] = len(entry["instance"])
    resource = {
        "resourceType": "ImagingStudy", "id": resource_id("study", study_uid), "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "subject": _subject(study.patient_id, study.patient_name),
        "started": _started(study.study_date, study.study_time),
        "modality": [{"system": DCM, "code": m} for m in study.modalities.split("\\") if m] or None,
        "description": study.study_description or None,
        "numberOfSeries": len(series), "numberOfInstances": len(rows),
        "series": list(series.values()) or None,
    }
    return ImagingStudy.model_validate(_drop_none(resource))


def enqueue_resource(conn: Connection, emr_url: str, resource: Any, key: str) -> int | None:
    """``PUT {emr}/{type}/{id}`` of ``resource`` through the outbox, in the caller's
    transaction; ``key`` is the message's idempotency key."""
    url = f"{emr_url.rstrip('/')}/{resource.get_resource_type()}/{resource.id}"
    return outbox.enqueue(conn, channel=CHANNEL, target_url=url, method="PUT", content_type=FHIR_JSON,
                          body=resource.model_dump_json(exclude_none=True), idempotency_key=key)


def imaging_study_consumer(emr_url: str) -> Consumer:
    """Publishes the ImagingStudy of each study that becomes stable (once per event)."""
    def publish(conn: Connection, event: ChangeEvent) -> None:
        resource = imaging_study(conn, event.study_uid)
        if resource is not None:
            enqueue_resource(conn, emr_url, resource, f"imagingstudy:{event.study_uid}:{event.id}")

    return Consumer("emr-imagingstudy", frozenset({EventType.STUDY_STABLE}), publish)
