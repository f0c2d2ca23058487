"""A signed report as a DICOM Basic Text SR in its study (PS3.3 A.35.1), built with highdicom.

Content follows TID 2000 "Basic Diagnostic Imaging Report" (PS3.16): the root container
"Diagnostic Imaging Report" (LOINC 18748-4) with the observer's name, a "Findings"
section (DCM 121070) holding the findings text, and an "Impressions" section
(DCM 121072) holding the impression text and the coded diagnoses. Only TEXT, CODE, PNAME
and CONTAINER items are used, which is what Basic Text SR allows.

highdicom offers Enhanced and Comprehensive SR classes but no Basic Text SR one; its
common SR base class takes the SOP class, so :class:`BasicTextSR` passes Basic Text SR
Storage to it (a private class of highdicom: pinned by the dependency range).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import highdicom as hd
from highdicom.sr.sop import _SR
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage, generate_uid

DIAGNOSTIC_IMAGING_REPORT = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic Imaging Report")
FINDINGS = hd.sr.CodedConcept("121070", "DCM", "Findings")
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
IMPRESSIONS = hd.sr.CodedConcept("121072", "DCM", "Impressions")
IMPRESSION = hd.sr.CodedConcept("121073", "DCM", "Impression")
OBSERVER_NAME = hd.sr.CodedConcept("121008", "DCM", "Person Observer Name")
#: Series number of report SRs in a study (well apart from the modality's series).
REPORT_SERIES_NUMBER = 9901
#: FHIR code systems → DICOM coding scheme designators (PS3.16 Table 8-1).
SCHEMES = {"http://snomed.info/sct": "SCT", "http://loinc.org": "LN", "http://radlex.org": "RADLEX",
           "http://hl7.org/fhir/sid/icd-10": "I10", "http://dicom.nema.org/resources/ontology/DCM": "DCM"}


class BasicTextSR(_SR):
    """Basic Text SR Storage (1.2.840.10008.5.1.4.1.1.88.11), see module doc."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(sop_class_uid=BasicTextSRStorage, **kwargs)


@dataclass(frozen=True)
class ReportContent:
    """What the radiologist wrote: free text and optional coded diagnoses
    ([{"system", "code", "display"}], systems as in FHIR)."""

    author: str
    findings: str
    impression: str
    codes: Sequence[dict[str, str]] = field(default_factory=list)


def scheme_of(system: str) -> str:
    """The DICOM coding scheme designator of a FHIR code system URI (or the URI's tail)."""
    return SCHEMES.get(system, system.rstrip("/").rsplit("/", 1)[-1][:16].upper() or "99LOCAL")


def content_tree(report: ReportContent) -> hd.sr.ContainerContentItem:
    """The TID 2000 content tree of ``report``."""
    root = hd.sr.ContainerContentItem(name=DIAGNOSTIC_IMAGING_REPORT, template_id="2000")
    findings = hd.sr.ContainerContentItem(name=FINDINGS, relationship_type="CONTAINS")
    findings.ContentSequence = [hd.sr.TextContentItem(FINDING, report.findings or "None.", "CONTAINS")]
    impressions = hd.sr.ContainerContentItem(name=IMPRESSIONS, relationship_type="CONTAINS")
    items: list[Any] = [hd.sr.TextContentItem(IMPRESSION, report.impression or "None.", "CONTAINS")]
    for code in report.codes:
        value = hd.sr.CodedConcept(code["code"], scheme_of(code["system"]), code.get("display") or code["code"])
        items.append(hd.sr.CodeContentItem(IMPRESSION, value, "CONTAINS"))
    impressions.ContentSequence = items
    root.ContentSequence = [
        hd.sr.PnameContentItem(OBSERVER_NAME, report.author.replace(" ", "^", 1), "HAS OBS CONTEXT"),
        findings, impressions,
    ]
    return root


def build_report_sr(evidence: Sequence[Dataset], report: ReportContent, *, version: int,
                    previous: Sequence[Dataset] = (), series_uid: str | None = None) -> Dataset:
    """The Basic Text SR of a signed report version, in the study of ``evidence`` (the
    study's instances: at least their patient, study, series and SOP attributes).
    ``previous``: the SRs of earlier signed versions (Predecessor Documents Sequence)."""
    return BasicTextSR(
        evidence=list(evidence), content=content_tree(report), series_instance_uid=series_uid or generate_uid(),
        series_number=REPORT_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=version,
        manufacturer="pacs", is_complete=True, is_final=True, is_verified=True,
        verifying_observer_name=report.author.replace(" ", "^", 1), verifying_organization="Radiology",
        previous_versions=list(previous) or None, series_description="Radiology report",
    )
