"""DELETE of a study, a series or an instance over DICOMweb.

PS3.18 defines no delete transaction for the Studies Service (its transactions are
Retrieve, Store and Search, PS3.18 10.3); like dcm4chee-arc, Azure and Google Cloud
Healthcare we offer ``DELETE`` on the WADO-RS resource paths of PS3.18 10.4.1.1 as an
extension, behind the ``allow_delete`` setting (default off):

* off: ``405 Method Not Allowed`` with a reason and an ``Allow`` header (added by
  :func:`dicomweb.cors.cors_headers`) that omits DELETE; nothing is deleted;
* on: the one archive delete (:meth:`pacs.archive.Archive.delete`) removes the index
  rows, fixes the study / series aggregates, appends ``StudyDeleted`` / ``SeriesDeleted``
  / ``InstanceDeleted`` events in the same transaction and then removes the objects;
  ``204 No Content``; ``404`` when the resource is not held; ``400`` for a malformed UID.
"""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from pacs.auth import caller_of
from pacs.errors import NotFound, PacsError
from pacs.web import ARCHIVE, run_blocking

from .wado import not_found, path_uids, target_query

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{sop}"


class DeleteNotAllowed(PacsError):
    """DELETE is switched off (setting ``allow_delete``): 405 (RFC 9110 15.5.6)."""

    http_status = 405


async def delete_resource(request: web.Request) -> web.Response:
    """DELETE a study, series or instance: 204, 404 when not held, 405 when disabled."""
    archive = request.app[ARCHIVE]
    if not archive.settings.allow_delete:
        raise DeleteNotAllowed("DELETE is disabled on this server (setting allow_delete)")
    uids = path_uids(dict(request.match_info))
    target_query(uids)  # malformed UIDs: InvalidQuery (400), as in QIDO-RS and WADO-RS
    try:
        await run_blocking(lambda: archive.delete(uids["StudyInstanceUID"], uids.get("SeriesInstanceUID"),
                                                  uids.get("SOPInstanceUID"), caller=caller_of(request)))
    except NotFound:
        raise not_found(uids) from None
    return web.Response(status=204)


#: Delete routes (an extension of PS3.18): method, path under /dicom-web, handler.
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Any]], ...] = (
    ("DELETE", _STUDY, delete_resource),
    ("DELETE", _SERIES, delete_resource),
    ("DELETE", _INSTANCE, delete_resource),
)
