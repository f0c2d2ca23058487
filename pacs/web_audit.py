"""The HTTP side of the audit trail (:mod:`pacs.audit`): the middleware that records every
request touching patient data, and ``GET /api/audit``.

The middleware is the outermost one, so it sees the final status (after the error
middleware) and the principal the authentication middleware put on the request
(``request["principal"]``; none: ``anonymous``). What it records comes from the route and
the URL only (path parameters, the QIDO ``StudyInstanceUID`` and ``PatientID`` keys), never
from a body. Any request answered 401 is recorded as ``login-failure``, whatever its path (door ``rest``
when the path is not one of the audited ones).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from .audit import EQUAL_FILTERS, AuditTrail, InvalidAuditQuery, Record, patient_of_study, search
from .web import ARCHIVE, run_blocking

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_PAGE = 1000

#: (pattern on the route's canonical path, door, action for GET/HEAD, action for other methods);
#: first match wins; paths no rule matches are not audited (health, metrics, admin, static files).
_RULES: tuple[tuple[re.Pattern[str], str, str, str], ...] = tuple(
    (re.compile(pattern), door, read, other) for pattern, door, read, other in (
        (r"^/dicom-web/(studies|series|instances)$", "dicomweb", "query", "store"),
        (r"^/dicom-web/studies/\{study\}/(series|instances)$", "dicomweb", "query", "store"),
        (r"^/dicom-web/studies/\{study\}/series/\{series\}/instances$", "dicomweb", "query", "store"),
        (r"^/dicom-web/.*/metadata$", "dicomweb", "view-metadata", "store"),
        (r"^/dicom-web/.+|^/wado$", "dicomweb", "retrieve", "store"),
        (r"^/api/worklist(/|$)", "rest", "worklist-query", "worklist-update"),
        (r"^/fhir/", "rest", "fhir-query", "fhir-create"),
        (r"^/api/reading-worklist/\{study\}/claim$", "rest", "reading-claim", "reading-claim"),
        (r"^/api/reading-worklist/\{study\}/release$", "rest", "reading-release", "reading-release"),
        (r"^/api/reading-worklist(/|$)", "rest", "reading-query", "reading-update"),
        (r"^/api/reports/\{study\}/sign$", "rest", "report-sign", "report-sign"),
        (r"^/api/reports/\{study\}/draft$", "rest", "report-draft", "report-draft"),
        (r"^/api/reports(/|$)", "rest", "report-view", "report-update"),
        (r"^/api/ai/results(/|$)", "rest", "ai-result-view", "ai-result"),
        (r"^/api/ai/deliveries/\{id\}/redeliver$", "rest", "ai-delivery", "ai-delivery"),
    )
)
_STUDY_KEYS = ("StudyInstanceUID", "0020000D", "studyUID", "study")
_PATIENT_KEYS = ("PatientID", "00100020")
#: Request key a handler may set to the study UIDs it touched when the URL names none.
AUDIT_STUDIES = "audit_studies"


def classify(method: str, path: str) -> tuple[str, str] | None:
    """(door, action) of a request on route ``path`` (its pattern), None when not audited."""
    if method == "OPTIONS":
        return None
    if method == "DELETE" and path.startswith("/dicom-web/"):
        return "dicomweb", "delete"
    for pattern, door, read, other in _RULES:
        if pattern.match(path):
            return door, read if method in ("GET", "HEAD") else other
    return None


def actor_of(principal: Any) -> tuple[str, str]:
    """(actor, credential) of the principal the authentication middleware set: its
    subject and its token id or kind; ``("anonymous", "anonymous")`` without one (as the authentication middleware names it)."""
    if principal is None:
        return "anonymous", "anonymous"
    get = principal.get if isinstance(principal, dict) else lambda name: getattr(principal, name, None)
    actor = next((str(v) for v in (get(n) for n in ("subject", "sub", "user", "name")) if v), "unknown")
    token = next((v for v in (get(n) for n in ("token_id", "jti")) if v), None)
    kind = next((str(v) for v in (get(n) for n in ("kind", "method", "type")) if v), "")
    credential = f"{kind}:{token}" if token and kind else str(token) if token else kind
    return actor, credential


def _subjects(request: web.Request) -> tuple[str, str, str]:
    """(patient id, study uid, details) named by the handler (``request["audit_studies"]``,
    e.g. STOW-RS), the path or the query string (never read from the body)."""
    noted = request.get(AUDIT_STUDIES) or []
    study = noted[0] if noted else request.match_info.get("study", "")
    details = "studies=" + ",".join(noted) if len(noted) > 1 else ""
    query = request.query
    if not study:
        study = next((query[k] for k in _STUDY_KEYS if query.get(k)), "")
    patient = next((query[k] for k in _PATIENT_KEYS if query.get(k)), "")
    return patient, study.split(",")[0].strip(), details


def _route_path(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    return resource.canonical if resource is not None else request.path


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record the request once answered (see the module doc); errors stay the handler's."""
    path = _route_path(request)
    status, patient, body = 500, "", None
    if request.method == "DELETE" and request.match_info.get("study") and request.app[ARCHIVE].audit.enabled:
        # rare: name the patient before the study goes
        patient = await _patient_before_delete(request)
    try:
        response = await handler(request)
        status = response.status
        body = getattr(response, "body", None) if status >= 400 else None
        return response
    except web.HTTPException as exc:
        status, body = exc.status, exc.body
        raise
    finally:
        kind = classify(request.method, path)
        if status == 401:  # whatever the path: an authentication failure
            kind = (kind[0] if kind is not None else "rest", "login-failure")
        if kind is not None:
            _record(request, path, kind, status, patient, body)


async def _patient_before_delete(request: web.Request) -> str:
    try:
        return await run_blocking(patient_of_study, request.app[ARCHIVE].db, request.match_info["study"])
    except Exception:
        return ""


def _record(request: web.Request, path: str, kind: tuple[str, str], status: int, patient: str = "",
            body: Any = None) -> None:
    try:
        trail: AuditTrail = request.app[ARCHIVE].audit
        actor, credential = actor_of(request.get("principal"))
        named, study, details = _subjects(request)
        patient = patient or named
        trail.record(Record(
            door=kind[0], action=kind[1], status=status, actor=actor, credential=credential,
            outcome="success" if status < 400 else "failure",
            reason="" if status < 400 else _reason(status, body),
            source=request.remote or "", route=f"{request.method} {path}", patient_id=patient, study_uid=study,
            details=details))
    except Exception:  # the audit never fails the request
        log.warning("audit record failed", exc_info=True)


def _reason(status: int, body: Any) -> str:
    """``404 Not Found``, with the server's own ``{"error": ...}`` text when it sent one
    (the error middleware's and the authentication middleware's answers)."""
    try:
        reason = f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        reason = str(status)
    if isinstance(body, (bytes, bytearray)) and len(body) < 4096 and body[:1] == b"{":
        try:
            error = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            error = None
        if isinstance(error, str) and error:
            reason += ": " + error
    return reason


# -- GET /api/audit ----------------------------------------------------------------------------
def _time(request: web.Request, name: str) -> float | None:
    """``since``/``until``: epoch seconds or an ISO 8601 date-time (UTC when no offset)."""
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidAuditQuery(f"{name} must be epoch seconds or an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _int(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or int(raw) > high:
        raise InvalidAuditQuery(f"{name} must be an integer from 0 to {high}")
    return int(raw)


async def list_audit(request: web.Request) -> web.Response:
    """``GET /api/audit``: events oldest first; filters ``since``, ``until``, ``actor``,
    ``action``, ``patient_id``, ``study_uid``, ``outcome``, ``door``; paging ``limit``
    (1-1000, default 100), ``offset`` or ``after`` (an event id: the next page)."""
    unknown = set(request.query) - set(EQUAL_FILTERS) - {"since", "until", "limit", "offset", "after"}
    if unknown:
        raise InvalidAuditQuery(f"unknown parameters: {', '.join(sorted(unknown))[:200]}")
    filters = {name: request.query[name] for name in EQUAL_FILTERS if request.query.get(name)}
    limit = max(1, _int(request, "limit", 100, MAX_PAGE))
    paging = {"since": _time(request, "since"), "until": _time(request, "until"), "limit": limit,
              "after_id": _int(request, "after", 0, 2**62), "offset": _int(request, "offset", 0, 2**31)}
    archive = request.app[ARCHIVE]
    await run_blocking(archive.audit.flush, 2.0)  # what happened before this request is listed
    rows = await run_blocking(lambda: search(archive.db, filters, **paging))
    return web.json_response({"events": rows, "last": rows[-1]["id"] if rows else None,
                              "done": len(rows) < limit})


def setup_audit_routes(app: web.Application) -> None:
    app.router.add_get("/api/audit", list_audit)
