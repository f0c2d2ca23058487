"""Retrieve Capabilities (PS3.18 8.9) and the Capabilities Description (PS3.18 Annex H).

``OPTIONS /dicom-web`` (the Base URI of the service, PS3.18 8.2 / 8.9.1.1) answers a
WADL document ([WADL], ``application/vnd.sun.wadl+xml``, the default) or the same tree
as JSON (``application/json``) when the Accept header prefers it. The description is
generated from :func:`dicomweb.routes.route_table` at request time, so routes other
modules add appear without an edit here; DELETE routes appear only while the
``allow_delete`` setting is on. An OPTIONS carrying ``Access-Control-Request-Method``
is a browser's CORS preflight and is answered by :func:`dicomweb.cors.preflight`.

Method ids follow the transaction names of PS3.18 Table H-1 (``SearchForStudies``,
``RetrieveSeriesMetadata``, ``StoreStudyInstances``, ...), derived from the route path;
a handler may name its response media types in a ``wadl_media_types`` attribute.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from pacs.errors import NotAcceptable
from pacs.query import Level
from pacs.query.attributes import MATCHABLE
from pacs.web import ARCHIVE

from . import accept
from .cors import is_preflight, preflight
from .wado import base_url

WADL = "application/vnd.sun.wadl+xml"
JSON = "application/json"
WADL_NS = "http://wadl.dev.java.net/2009/02"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'
OCTET_MULTIPART = 'multipart/related; type="application/octet-stream"'
#: Search parameters other than attribute matches (PS3.18 Table 8.3.4-1).
SEARCH_PARAMS = ("includefield", "fuzzymatching", "limit", "offset", "emptyvaluematching",
                 "multiplevaluematching")
#: WADO-URI request parameters (PS3.18 9.1.2) named in the description.
WADO_URI_PARAMS = ("requestType", "studyUID", "seriesUID", "objectUID", "contentType", "transferSyntax",
                   "frameNumber", "rows", "columns", "windowCenter", "windowWidth", "imageQuality")
_LEVEL_NAMES = {"studies": "Study", "series": "Series", "instances": "Instance"}
_SEARCH_LEVEL = {"studies": Level.STUDY, "series": Level.SERIES, "instances": Level.IMAGE}
#: Modifier segment -> (transaction name pattern, response media types) (PS3.18 10.4.1).
_MODIFIERS = {
    "metadata": ("Retrieve{}Metadata", (accept.DICOM_JSON,)),
    "rendered": ("RetrieveRendered{}", ("image/jpeg", "image/png")),
    "thumbnail": ("Retrieve{}Thumbnail", ("image/jpeg", "image/png")),
    "bulkdata": ("Retrieve{}Bulkdata", (OCTET_MULTIPART,)),
    "pixeldata": ("Retrieve{}PixelData", (OCTET_MULTIPART,)),
}


@dataclass
class Method:
    """One WADL method: HTTP method, transaction id, query parameters, representations."""

    name: str
    id: str
    query: tuple[str, ...] = ()
    request_types: tuple[str, ...] = ()
    response_types: tuple[str, ...] = ()
    status: int = 200


@dataclass
class Resource:
    """One WADL resource (a path segment) with its methods and child resources."""

    path: str
    methods: list[Method] = field(default_factory=list)
    children: dict[str, "Resource"] = field(default_factory=dict)


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace("-", "_").split("_"))


def _describe(method: str, path: str, handler: Callable[..., Any]) -> Method:
    """The transaction of a route (PS3.18 Table H-1 names), from its path's shape."""
    segments = [s for s in path.split("/") if s]
    static = [s for s in segments if not s.startswith("{")]
    levels = [_LEVEL_NAMES[s] for s in static if s in _LEVEL_NAMES]
    own = getattr(handler, "wadl_media_types", None)
    if method == "DELETE":
        return Method(method, "Delete" + (levels[-1] if levels else "Resource"), status=204)
    if method == "POST":
        tx = "StoreStudyInstances" if len(segments) > 1 else "StoreInstances"
        return Method(method, tx, request_types=(DICOM_MULTIPART,), response_types=(accept.DICOM_JSON,))
    if method != "GET" or not segments:
        return Method(method, _camel(handler.__name__), response_types=tuple(own or ()))
    last = segments[-1]
    if segments == ["wado"]:  # WADO-URI (PS3.18 9), served under the DICOMweb root too
        return Method(method, "RetrieveWADOURI", query=WADO_URI_PARAMS,
                      response_types=tuple(own or (accept.DICOM, "image/jpeg", "image/png")))
    if last in _SEARCH_LEVEL:  # a collection: Search (PS3.18 10.6)
        names = [_LEVEL_NAMES[s] for s in static[:-1]]
        plural = {"studies": "Studies", "series": "Series", "instances": "Instances"}[last]
        level = _SEARCH_LEVEL[last]
        keys = tuple(k for k, a in MATCHABLE.items() if a.level.depth <= level.depth)
        return Method(method, "SearchFor" + "".join(names) + plural, query=SEARCH_PARAMS + keys,
                      response_types=(accept.DICOM_JSON,))
    return _retrieve(method, segments, levels, own)


def _retrieve(method: str, segments: list[str], levels: list[str], own: Any) -> Method:
    """A WADO-RS retrieve transaction (PS3.18 10.4.1)."""
    level = levels[-1] if levels else ""
    modifier = next((s for s in reversed(segments) if not s.startswith("{") and s not in _LEVEL_NAMES), None)
    if "frames" in segments:
        if modifier in ("rendered", "thumbnail"):
            tx = "RetrieveRenderedFrames" if modifier == "rendered" else "RetrieveFramesThumbnail"
            return Method(method, tx, response_types=tuple(own or _MODIFIERS[modifier][1]))
        return Method(method, "RetrieveFrames", response_types=tuple(own or (OCTET_MULTIPART,)))
    if modifier is None:
        return Method(method, "Retrieve" + level, response_types=tuple(own or (DICOM_MULTIPART,)))
    if modifier in _MODIFIERS:
        pattern, types = _MODIFIERS[modifier]
        return Method(method, pattern.format(level), response_types=tuple(own or types))
    if modifier == "bulk":  # our BulkDataURIs (PS3.18 10.4.1.1.5 Retrieve Bulkdata)
        return Method(method, "RetrieveBulkdata", response_types=tuple(own or (OCTET_MULTIPART,)))
    return Method(method, "Retrieve" + _camel(modifier), response_types=tuple(own or ()))


def build_tree(routes: list[tuple[str, str, Callable[..., Any]]], allow_delete: bool) -> Resource:
    """The resource tree of the route table (PS3.18 Annex H): one node per path segment."""
    root = Resource("")
    for method, path, handler in routes:
        if method == "OPTIONS" or (method == "DELETE" and not allow_delete):
            continue
        node = root
        for segment in (s for s in path.split("/") if s):
            node = node.children.setdefault(segment, Resource(segment))
        node.methods.append(_describe(method, path, handler))
    return root


# -- WADL ------------------------------------------------------------------------------
def _wadl_method(parent: ET.Element, method: Method) -> None:
    element = ET.SubElement(parent, "method", name=method.name, id=method.id)
    request = ET.SubElement(element, "request")
    for name in method.query:
        ET.SubElement(request, "param", name=name, style="query", type="xs:string")
    if method.response_types:
        accept_param = ET.SubElement(request, "param", name="Accept", style="header",
                                     default=method.response_types[0])
        for media in method.response_types:
            ET.SubElement(accept_param, "option", value=media)
    for media in method.request_types:
        ET.SubElement(request, "representation", mediaType=media)
    response = ET.SubElement(element, "response", status=str(method.status))
    for media in method.response_types:
        ET.SubElement(response, "representation", mediaType=media)


def _wadl_resource(parent: ET.Element, node: Resource) -> None:
    element = ET.SubElement(parent, "resource", path=node.path)
    if node.path.startswith("{"):
        ET.SubElement(element, "param", name=node.path.strip("{}"), style="template",
                      type="xs:string", required="true")
    for method in node.methods:
        _wadl_method(element, method)
    for child in node.children.values():
        _wadl_resource(element, child)


def to_wadl(tree: Resource, base: str) -> bytes:
    """The WADL document: one ``application`` with one ``resources`` whose ``base`` is
    the service's base URL (PS3.18 Annex H)."""
    application = ET.Element("application", {"xmlns": WADL_NS, "xmlns:xs": XSD_NS})
    resources = ET.SubElement(application, "resources", base=base + "/")
    for child in tree.children.values():
        _wadl_resource(resources, child)
    ET.indent(application)
    return ET.tostring(application, encoding="utf-8", xml_declaration=True)


# -- JSON ------------------------------------------------------------------------------
def _json_method(method: Method) -> dict[str, Any]:
    request: dict[str, Any] = {"param": [{"name": n, "style": "query"} for n in method.query]}
    if method.response_types:
        request["param"].append({"name": "Accept", "style": "header", "default": method.response_types[0],
                                 "option": list(method.response_types)})
    if method.request_types:
        request["representation"] = [{"mediaType": m} for m in method.request_types]
    return {"name": method.name, "id": method.id, "request": request,
            "response": [{"status": method.status,
                          "representation": [{"mediaType": m} for m in method.response_types]}]}


def _json_resource(node: Resource) -> dict[str, Any]:
    body: dict[str, Any] = {"path": node.path}
    if node.path.startswith("{"):
        body["param"] = [{"name": node.path.strip("{}"), "style": "template", "required": True}]
    body["method"] = [_json_method(m) for m in node.methods]
    body["resource"] = [_json_resource(c) for c in node.children.values()]
    return body


def to_json(tree: Resource, base: str) -> bytes:
    """The same tree as JSON: element names as keys, repeated elements as arrays."""
    doc = {"application": {"resources": {"base": base + "/",
                                         "resource": [_json_resource(c) for c in tree.children.values()]}}}
    return json.dumps(doc, indent=1).encode("utf-8")


def choose(header: str | None) -> str:
    """WADL or JSON by the Accept header (PS3.18 8.9.1.3); no header or ``*/*``: WADL."""
    if not (header or "").strip():
        return WADL
    for media in accept.parse_accept(header):
        if media.media_type in (WADL, "application/xml", "text/xml", "application/*", "*/*"):
            return WADL
        if media.media_type in (JSON, accept.DICOM_JSON):
            return JSON
    raise NotAcceptable(f"the capabilities are answered as {WADL} or {JSON} only")


async def retrieve_capabilities(request: web.Request) -> web.Response:
    """OPTIONS on the Base URI (PS3.18 8.9): 200 with the Capabilities Description; a
    CORS preflight (``Access-Control-Request-Method``) is answered as such."""
    if is_preflight(request):
        return await preflight(request)
    from .routes import route_table  # routes imports this module

    media = choose(request.headers.get("Accept"))
    tree = build_tree(route_table(), request.app[ARCHIVE].settings.allow_delete)
    base = base_url(request)
    body = to_wadl(tree, base) if media == WADL else to_json(tree, base)
    return web.Response(body=body, headers={"Content-Type": media, "Allow": "OPTIONS"})


#: The capabilities route: OPTIONS on the Base URI, with and without the final slash.
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Any]], ...] = (
    ("OPTIONS", "", retrieve_capabilities),
    ("OPTIONS", "/", retrieve_capabilities),
)
