"""DICOM push deliveries: C-STORE of a study (or series) to an AE of the registry, as an
outbox transport (``OutboxSender.transports``, channel ``ai-push:<id>``).

The outbox gives the push its delivery semantics: claimed once across processes,
retried with back-off and jitter, dead after ``outbox_max_attempts``, redelivered on
demand. The push itself reuses the C-MOVE machinery: :meth:`pacs.archive.Archive.plan_retrieve` for the
instances, :func:`pacs.dimse.move.propose_contexts` for the presentation contexts, the
lean Storage SCU (:class:`pacs.dimse.scu.StoreAssociation`, PS3.4 B.2 C-STORE) and
:func:`pacs.dimse.suboperations.payload` (as stored, else transcoded). A subscription
with ``deidentify`` sends each instance de-identified after the transfer syntax is chosen
(PS3.15 E.1 Basic Application Level Confidentiality Profile, :mod:`pacs.deidentify`),
under its remapped SOP Instance UID.

Outcome, as an HTTP-like status for the outbox: 200 every instance stored (success or
warning, PS3.4 B.2.3); 503 the AE cannot be reached or rejects the association, or some
C-STOREs failed (retried: a resend of what was stored is harmless); 404 the AE is no
longer registered and 410 the study or the subscription is gone (dead at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Iterator

from pacs import aes, deidentify
from pacs.access import SYSTEM
from pacs.archive import Archive
from pacs.dimse.move import propose_contexts
from pacs.dimse.pdu import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from pacs.dimse.scu import AssociationError, StoreAssociation
from pacs.dimse.suboperations import STORE_WARNINGS, payload
from pacs.errors import PacsError
from pacs.outbox import Message
from pacs.query import Level, Query
from pacs.query.matchers import make_matcher
from pacs.retrieve import RetrieveItem

from .subscriptions import PUSH_CHANNEL, deidentify_of

log = logging.getLogger(__name__)
SUCCESS = 0x0000


def _payload(archive: Archive, item: RetrieveItem, accepted: dict[str, list[str]],
             remap: deidentify.UidRemapper | None) -> tuple[str, str, Iterator[bytes]]:
    """(transfer syntax, SOP Instance UID, dataset bytes) of one C-STORE: the object as
    :func:`payload` gives it, de-identified when ``remap`` is given (PS3.15 E.1)."""
    syntax, chunks = payload(archive, item, accepted)
    if remap is None:
        return syntax, item.sop_instance_uid, chunks
    data = deidentify.deidentify_dataset_bytes(b"".join(chunks), syntax, remap)
    return syntax, remap(item.sop_instance_uid), iter([data])


def push(archive: Archive, message: Message) -> int:
    """Send the message's study (or series) to its AE; an HTTP-like status (module doc)."""
    target = json.loads(message.body)
    title = message.target_url.removeprefix("dicom://")
    entry = aes.get_ae(archive.db, title)
    if entry is None:
        return 404
    deidentified = deidentify_of(archive.db, int(message.channel.removeprefix(PUSH_CHANNEL)))
    if deidentified is None:  # the subscription was deleted: its deliveries are dead
        return 410
    remap = deidentify.remapper_for(archive) if deidentified else None
    matchers = [make_matcher("StudyInstanceUID", [target["study_uid"]])]
    if target.get("series_uid"):
        matchers.append(make_matcher("SeriesInstanceUID", [target["series_uid"]]))
    items = archive.plan_retrieve(Query(Level.IMAGE, matchers), caller=SYSTEM)  # the subscription's push
    if not items:
        return 410
    settings = archive.settings
    store = StoreAssociation(settings.ae_title, title, propose_contexts(items), max_pdu=settings.max_pdu_size,
                             connect_timeout=30.0, dimse_timeout=settings.dimse_timeout,
                             implementation_uid=IMPLEMENTATION_CLASS_UID,
                             implementation_version=IMPLEMENTATION_VERSION)
    try:
        store.connect(entry.host, entry.port)
    except AssociationError as exc:
        log.info("AI push to %s refused: %s", title, exc)
        return 503
    accepted: dict[str, list[str]] = {}
    by_key = {}
    for context in store.accepted:
        accepted.setdefault(context.abstract_syntax, []).append(context.transfer_syntax)
        by_key.setdefault((context.abstract_syntax, context.transfer_syntax), context)
    failed = 0
    try:
        for msg_id, item in enumerate(items, start=1):
            try:
                syntax, sop, chunks = _payload(archive, item, accepted, remap)
                code, _ = store.store(by_key[(item.sop_class_uid, syntax)], sop, chunks, msg_id=msg_id & 0xFFFF)
            except PacsError as exc:
                log.info("AI push of one instance to %s failed: %s", title, exc.reason)
                code = -1
            if code != SUCCESS and code not in STORE_WARNINGS:
                failed += 1
    except AssociationError as exc:  # the association broke midway: retry it all later
        log.info("AI push to %s broken: %s", title, exc)
        return 503
    finally:
        store.release()
    log.info("AI push to %s: %d of %d instances stored", title, len(items) - failed, len(items))
    return 200 if not failed else 503


def transport(archive: Archive):  # type: ignore[no-untyped-def]
    """The outbox transport of ``ai-push:`` messages."""
    async def send(message: Message) -> int:
        return await asyncio.to_thread(push, archive, message)

    return send
