"""The findings document an AI engine posts to ``POST /api/ai/results`` (docs/ai.md has
the JSON schema), parsed into typed values. Anything malformed is an
:class:`~pacs.errors.InvalidQuery` (400) naming the offending field; nothing is stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pacs.errors import InvalidQuery

MAX_FINDINGS = 1000
MAX_MEASUREMENTS = 50
MAX_POINTS = 1000


@dataclass(frozen=True)
class Code:
    """A coded concept, systems as in FHIR (``http://snomed.info/sct``, ``http://loinc.org``,
    ``http://dicom.nema.org/resources/ontology/DCM``, ...)."""

    system: str
    code: str
    display: str


@dataclass(frozen=True)
class Measurement:
    code: Code
    value: float
    unit: str  # UCUM (e.g. "mm2", "[hnsf'U]")
    derivation: Code | None = None


@dataclass(frozen=True)
class Location:
    sop_instance_uid: str
    frame: int | None = None
    point: tuple[float, float] | None = None
    region: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Finding:
    code: Code
    label: str
    probability: float | None = None
    critical: bool = False
    location: Location | None = None
    measurements: tuple[Measurement, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Findings:
    study_uid: str
    model_name: str
    model_version: str
    findings: tuple[Finding, ...]

    @property
    def critical(self) -> list[Finding]:
        return [f for f in self.findings if f.critical]


def _text(value: Any, where: str, limit: int = 64) -> str:
    if not isinstance(value, str) or not 0 < len(value.strip()) <= limit:
        raise InvalidQuery(f"{where} must be text of 1-{limit} characters")
    return value.strip()


def _uid(value: Any, where: str) -> str:
    text = _text(value, where)
    if not all(part.isdigit() and (part == "0" or not part.startswith("0")) for part in text.split(".")):
        raise InvalidQuery(f"{where} must be a UID (digits and dots)")
    return text


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidQuery(f"{where} must be a finite number")
    return float(value)


def _code(value: Any, where: str) -> Code:
    if not isinstance(value, dict) or set(value) - {"system", "code", "display"}:
        raise InvalidQuery(f'{where} must be {{"system", "code", "display"}}')
    code = _text(value.get("code"), f"{where}.code", 16)
    display = _text(value.get("display") or code, f"{where}.display")
    return Code(_text(value.get("system"), f"{where}.system", 256), code, display)


def _xy(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidQuery(f"{where} must be [column, row] in pixels")
    x, y = (_number(v, where) for v in value)
    return x, y


def _location(value: Any, where: str) -> Location | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"sop_instance_uid", "frame", "point", "region"}:
        raise InvalidQuery(f"{where} must be {{sop_instance_uid, frame?, point? | region?}}")
    frame = value.get("frame")
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 1):
        raise InvalidQuery(f"{where}.frame must be a frame number from 1")
    point = _xy(value["point"], f"{where}.point") if value.get("point") is not None else None
    region: tuple[tuple[float, float], ...] = ()
    if value.get("region") is not None:
        raw = value["region"]
        if point is not None or not isinstance(raw, list) or not 3 <= len(raw) <= MAX_POINTS:
            raise InvalidQuery(f"{where}.region must be 3-{MAX_POINTS} [column, row] points (and no point)")
        region = tuple(_xy(p, f"{where}.region") for p in raw)
    return Location(_uid(value.get("sop_instance_uid"), f"{where}.sop_instance_uid"), frame, point, region)


def _measurement(value: Any, where: str) -> Measurement:
    if not isinstance(value, dict) or set(value) - {"code", "value", "unit", "derivation"}:
        raise InvalidQuery(f"{where} must be {{code, value, unit, derivation?}}")
    derivation = _code(value["derivation"], f"{where}.derivation") if value.get("derivation") else None
    return Measurement(_code(value.get("code"), f"{where}.code"), _number(value.get("value"), f"{where}.value"),
                       _text(value.get("unit"), f"{where}.unit", 16), derivation)


def _finding(value: Any, where: str) -> Finding:
    allowed = {"code", "label", "probability", "critical", "location", "measurements"}
    if not isinstance(value, dict) or set(value) - allowed:
        raise InvalidQuery(f"{where} must be an object with {', '.join(sorted(allowed))}")
    probability = value.get("probability")
    if probability is not None:
        probability = _number(probability, f"{where}.probability")
        if not 0 <= probability <= 1:
            raise InvalidQuery(f"{where}.probability must be between 0 and 1")
    critical = value.get("critical", False)
    if not isinstance(critical, bool):
        raise InvalidQuery(f"{where}.critical must be true or false")
    raw = value.get("measurements") or []
    if not isinstance(raw, list) or len(raw) > MAX_MEASUREMENTS:
        raise InvalidQuery(f"{where}.measurements must be a list of at most {MAX_MEASUREMENTS}")
    code = _code(value.get("code"), f"{where}.code")
    return Finding(code, _text(value.get("label") or code.display, f"{where}.label"), probability, critical,
                   _location(value.get("location"), f"{where}.location"),
                   tuple(_measurement(m, f"{where}.measurements[{i}]") for i, m in enumerate(raw)))


def parse(body: Any) -> Findings:
    """The typed findings of a request body (see module doc)."""
    if not isinstance(body, dict) or set(body) - {"study_uid", "model", "findings", "event_id"}:
        raise InvalidQuery("body must be {study_uid, model: {name, version}, findings: [...], event_id?}")
    model = body.get("model")
    if not isinstance(model, dict):
        raise InvalidQuery('model must be {"name", "version"}')
    raw = body.get("findings")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_FINDINGS:
        raise InvalidQuery(f"findings must be a list of 1-{MAX_FINDINGS} findings")
    return Findings(_uid(body.get("study_uid"), "study_uid"), _text(model.get("name"), "model.name"),
                    _text(model.get("version"), "model.version"),
                    tuple(_finding(f, f"findings[{i}]") for i, f in enumerate(raw)))
