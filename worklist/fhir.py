"""FHIR intake: an R4 ``ServiceRequest`` becomes a worklist item (``POST /fhir/ServiceRequest``).

The resource is parsed and validated with the ``fhir.resources`` R4B models (R4B shares
R4's ServiceRequest and Patient structure), then mapped (docs/worklist.md has the table):

* ``subject``: a contained Patient (``#id``: identifier, name, birthDate, gender) or a
  reference with ``identifier`` (+ ``display`` as the name) -> patient keys;
* ``identifier`` typed ``ACSN`` (v2-0203) -> Accession Number; typed ``PLAC`` -> Requested
  Procedure ID; system ``urn:dicom:uid`` (value ``urn:oid:...``) -> Study Instance UID;
* ``code``: the coding of the DICOM system (:data:`DCM`) -> Modality, any other coding
  -> Requested Procedure Code Sequence, ``code.text`` -> description; ``orderDetail``
  may carry the DICOM modality coding too;
* ``occurrenceDateTime`` (or ``occurrencePeriod.start``) -> scheduled start;
* ``performer``: a reference whose ``identifier.system`` is :data:`AE_SYSTEM` -> Scheduled
  Station AE Title (its ``display`` -> Station Name); a Practitioner reference's
  ``display`` -> Scheduled Performing Physician;
* ``requester.display`` -> Referring Physician; ``priority`` -> Requested Procedure Priority.

Invalid resources are answered 400 with an OperationOutcome (FHIR R4 3.1.0.5.2 ``http``:
errors come as OperationOutcome), built with the same model library.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from pacs.errors import PacsError

from .items import InvalidWorklistItem, parse_item

DCM = "http://dicom.nema.org/resources/ontology/DCM"
AE_SYSTEM = "urn:dicom:ae"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: FHIR request priority -> Requested Procedure Priority (0040,1003).
PRIORITY = {"stat": "STAT", "asap": "HIGH", "urgent": "HIGH", "routine": "ROUTINE"}
GENDER = {"male": "M", "female": "F", "other": "O", "unknown": ""}
#: Coding system URI -> Coding Scheme Designator (PS3.16 Table 8-1).
SCHEMES = {"http://loinc.org": "LN", "http://snomed.info/sct": "SCT", DCM: "DCM",
           "http://www.radlex.org": "RADLEX", "http://radlex.org": "RADLEX"}
#: DICOM modality defined terms (PS3.3 C.7.3.1.1.1) accepted from a DCM coding.
MODALITIES = {"CR", "CT", "MR", "US", "NM", "PT", "XA", "RF", "DX", "MG", "IO", "PX", "OT", "ES", "SC",
              "XC", "OP", "OPT", "IVUS", "OCT", "BMD", "ECG", "HD", "SR", "DOC", "RTIMAGE"}
ORDER_INTENTS = {"order", "original-order", "reflex-order", "filler-order", "instance-order"}


def operation_outcome(exc: PacsError) -> dict[str, Any]:
    """The OperationOutcome (one issue per reason) answering a refused request."""
    reasons = getattr(exc, "reasons", None) or [exc.reason]
    code = {404: "not-found", 409: "conflict", 503: "transient"}.get(exc.http_status, "invalid")
    outcome = OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": code, "diagnostics": reason} for reason in reasons]})
    return outcome.model_dump(mode="json", exclude_none=True)


def parse_service_request(body: Any) -> ServiceRequest:
    """The validated resource; :class:`InvalidWorklistItem` naming every problem otherwise."""
    if not isinstance(body, dict) or body.get("resourceType") != "ServiceRequest":
        raise InvalidWorklistItem(["body must be a FHIR ServiceRequest resource (resourceType ServiceRequest)"])
    try:
        return ServiceRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidWorklistItem([
            f"{'.'.join(str(p) for p in err['loc']) or 'ServiceRequest'}: {err['msg']}" for err in exc.errors()
        ]) from None


def _pn(family: str | None, given: list[str] | None) -> str:
    return "^".join(p for p in [family or "", " ".join(given or [])]).rstrip("^")


def _patient_fields(sr: ServiceRequest) -> dict[str, Any]:
    subject = sr.subject
    reference = subject.reference or ""
    if reference.startswith("#"):
        patient = next((r for r in sr.contained or [] if isinstance(r, Patient) and r.id == reference[1:]), None)
        if patient is None:
            raise InvalidWorklistItem([f"subject: contained resource {reference} is not a Patient"])
        if not patient.identifier or not patient.identifier[0].value:
            raise InvalidWorklistItem(["subject: the contained Patient needs an identifier"])
        name = patient.name[0] if patient.name else None
        return {"patient_id": patient.identifier[0].value,
                "patient_name": (name.text if name and not name.family else _pn(name.family, name.given)) if name else "",
                "patient_birth_date": patient.birthDate.isoformat() if patient.birthDate else "",
                "patient_sex": GENDER.get(patient.gender or "unknown", "")}
    if subject.identifier is None or not subject.identifier.value:
        raise InvalidWorklistItem(["subject needs a contained Patient (#id) or an identifier"])
    display = subject.display or ""
    if "^" not in display and "," in display:  # "Doe, John" -> DOE^John order of PN
        family, _, given = display.partition(",")
        display = f"{family.strip()}^{given.strip()}"
    return {"patient_id": subject.identifier.value, "patient_name": display}


def _identifiers(sr: ServiceRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for ident in sr.identifier or []:
        codes = {c.code for c in (ident.type.coding or [])} if ident.type else set()
        if "ACSN" in codes:
            fields["accession_number"] = ident.value or ""
        elif "PLAC" in codes:
            fields["requested_procedure_id"] = ident.value or ""
        elif ident.system == "urn:dicom:uid" and ident.value:
            fields["study_instance_uid"] = ident.value.removeprefix("urn:oid:")
    return fields


def _codes(sr: ServiceRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    concepts = [sr.code] if sr.code else []
    concepts += list(sr.orderDetail or [])
    for concept in concepts:
        for coding in concept.coding or []:
            if coding.system == DCM and (coding.code or "").upper() in MODALITIES:
                fields.setdefault("modality", coding.code.upper())
            elif concept is sr.code and "requested_procedure_code" not in fields and coding.code:
                scheme = SCHEMES.get(coding.system or "", (coding.system or "")[-16:])
                fields["requested_procedure_code"] = {"code": coding.code, "scheme": scheme,
                                                      "meaning": (coding.display or "")[:64]}
    if sr.code is not None:
        text = sr.code.text or (fields.get("requested_procedure_code") or {}).get("meaning", "")
        if text:
            fields["requested_procedure_description"] = text[:64]
    return fields


def _performers(sr: ServiceRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for performer in sr.performer or []:
        ident = performer.identifier
        if ident is not None and ident.system == AE_SYSTEM and ident.value:
            fields["scheduled_station_ae"] = ident.value
            if performer.display:
                fields["scheduled_station_name"] = performer.display[:16]
        elif (performer.type == "Practitioner" or "Practitioner/" in (performer.reference or "")) and performer.display:
            fields["performing_physician_name"] = performer.display
    return fields


def item_fields(sr: ServiceRequest) -> dict[str, Any]:
    """The ``/api/worklist/items`` body the resource maps to (validated by parse_item)."""
    reasons = []
    if sr.status != "active":
        reasons.append(f"status: only an active ServiceRequest can be scheduled (got {sr.status})")
    if sr.priority and sr.priority not in PRIORITY:
        reasons.append(f"priority: must be one of {', '.join(PRIORITY)}")
    if sr.intent not in ORDER_INTENTS:
        reasons.append(f"intent: must be an order ({', '.join(sorted(ORDER_INTENTS))})")
    if reasons:
        raise InvalidWorklistItem(reasons)
    fields: dict[str, Any] = {**_patient_fields(sr), **_identifiers(sr), **_codes(sr), **_performers(sr)}
    start = sr.occurrenceDateTime or (sr.occurrencePeriod.start if sr.occurrencePeriod else None)
    if start is not None:
        fields["scheduled_start"] = start.isoformat()
    if sr.priority:
        fields["priority"] = PRIORITY[sr.priority]
    if sr.requester is not None and sr.requester.display:
        fields["referring_physician_name"] = sr.requester.display
    return fields


def service_request_values(body: Any) -> dict[str, str]:
    """Column values of the worklist item a ServiceRequest JSON body describes."""
    fields = item_fields(parse_service_request(body))
    missing = {"modality": "code/orderDetail: a coding with system " + DCM + " giving the modality",
               "scheduled_start": "occurrenceDateTime (or occurrencePeriod.start) is required"}
    reasons = [text for name, text in missing.items() if name not in fields]
    if reasons:
        raise InvalidWorklistItem(reasons)
    return parse_item(fields)
