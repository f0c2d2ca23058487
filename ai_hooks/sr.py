"""AI findings as a DICOM Comprehensive SR (PS3.3 A.35.3) holding a TID 1500 "Measurement
Report" (PS3.16), built with highdicom.

* Observation context: the engine as a **device observer** (TID 1004: UID derived from the
  model name and version, name = model name, model name = "<name> <version>"): the SR
  says it was made by an algorithm, not a person.
* One measurement group per finding (TID 1501 image-level, or TID 1410 planar ROI when
  the finding has a point or region): tracking identifier = the finding's label (and a
  new UID), finding type = the finding's code, algorithm identification (TID 4019) = the
  model name and version, the probability as a measurement (local code ``99PACS``
  ``AIPROB`` "AI probability", UCUM ``1``) followed by the engine's measurements (UCUM units,
  optional derivation such as SCT 373098007 "Mean").
* A point becomes a SCOORD POINT, a region a closed POLYLINE, on the referenced image
  (and frame, for multi-frame images); a location without geometry references the
  image as the group's source.

The SR is not a diagnosis: Completion Flag COMPLETE, Preliminary Flag PRELIMINARY,
Verification Flag UNVERIFIED.
"""

from __future__ import annotations

from typing import Any, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from worklist.sr import scheme_of

from .findings import Code, Finding, Findings, Measurement

#: Series number of AI result SRs (next to report SRs, 9901).
AI_SERIES_NUMBER = 9902
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
PROBABILITY = hd.sr.CodedConcept("AIPROB", "99PACS", "AI probability")
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
_warmed = False


def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.code, scheme_of(code.system), code.display)


def _unit(unit: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(unit, "UCUM", unit)


def _measurement(m: Measurement, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=coded(m.code), value=m.value, unit=_unit(m.unit), algorithm_id=algorithm,
                             derivation=coded(m.derivation) if m.derivation else None)


def _region(finding: Finding, image: dict[str, Any]) -> hd.sr.ImageRegion | None:
    loc = finding.location
    if loc is None or (loc.point is None and not loc.region):
        return None
    frames = [loc.frame or 1] if (image.get("frames") or 1) > 1 else None
    source = hd.sr.SourceImageForRegion(image["sop_class_uid"], loc.sop_instance_uid, referenced_frame_numbers=frames)
    if loc.point is not None:
        return hd.sr.ImageRegion("POINT", np.array([loc.point], dtype=float), source)
    points = list(loc.region) + [loc.region[0]]  # a closed polyline repeats its first point
    return hd.sr.ImageRegion("POLYLINE", np.array(points, dtype=float), source)


def measurement_group(finding: Finding, algorithm: hd.sr.AlgorithmIdentification,
                      images: dict[str, dict[str, Any]]) -> Any:
    """The TID 1501 or TID 1410 group of one finding."""
    measurements = []
    if finding.probability is not None:
        measurements.append(hd.sr.Measurement(name=PROBABILITY, value=finding.probability, unit=UNITLESS,
                                              algorithm_id=algorithm))
    measurements += [_measurement(m, algorithm) for m in finding.measurements]
    common = dict(tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=finding.label),
                  finding_type=coded(finding.code), algorithm_id=algorithm, measurements=measurements or None)
    loc = finding.location
    image = images.get(loc.sop_instance_uid, {}) if loc else {}
    region = _region(finding, image) if loc else None
    if region is not None:
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)
    sources = None
    if loc is not None:
        frames = [loc.frame] if loc.frame and (image.get("frames") or 1) > 1 else None
        sources = [hd.sr.SourceImageForMeasurementGroup(image["sop_class_uid"], loc.sop_instance_uid, frames)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=sources, **common)


def device_observer(findings: Findings) -> hd.sr.ObservationContext:
    """TID 1004 device observer context of the engine (see module doc)."""
    uid = generate_uid(entropy_srcs=[findings.model_name, findings.model_version])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uid, name=findings.model_name, model_name=f"{findings.model_name} {findings.model_version}"[:64])
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device))


def build_findings_sr(evidence: Sequence[Dataset], findings: Findings, images: dict[str, dict[str, Any]]) -> Dataset:
    """The Comprehensive SR of ``findings``. ``evidence``: the study's first instance (with
    patient and study attributes) and every referenced image; ``images``: SOP Instance
    UID → {"sop_class_uid", "frames"} of the referenced images."""
    algorithm = hd.sr.AlgorithmIdentification(name=findings.model_name, version=findings.model_version)
    report = hd.sr.MeasurementReport(
        observation_context=device_observer(findings), procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[measurement_group(f, algorithm, images) for f in findings.findings])
    return hd.sr.ComprehensiveSR(
        evidence=list(evidence), content=report, series_instance_uid=generate_uid(),
        series_number=AI_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=findings.model_name, is_complete=True, is_final=False, is_verified=False,
        series_description=f"AI: {findings.model_name} {findings.model_version}"[:64])


def warm_up() -> None:
    """Build one throw-away SR: highdicom's first build pays ~0.4 s of lazy set-up (code
    dictionaries, validators), which the first engine to post findings should not wait for."""
    global _warmed
    if _warmed:
        return
    _warmed = True
    from .findings import parse

    ds = Dataset()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "WARMUP", "WARM^UP", "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    for keyword in ("StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDate", "StudyTime"):
        setattr(ds, keyword, "")
    findings = parse({"study_uid": ds.StudyInstanceUID, "model": {"name": "warm-up", "version": "0"},
                      "findings": [{"code": {"system": "http://snomed.info/sct", "code": "38266002"},
                                    "probability": 0.5, "location": {"sop_instance_uid": ds.SOPInstanceUID,
                                                                     "point": [1, 1]}}]})
    build_findings_sr([ds], findings, {ds.SOPInstanceUID: {"sop_class_uid": ds.SOPClassUID, "frames": 1}})
