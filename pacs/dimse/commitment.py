"""Storage Commitment Push Model SCP (PS3.4 Annex J; SOP Class 1.2.840.10008.1.20.1).

* :func:`handle_n_action` (N-ACTION-RQ): validates the request (PS3.4 J.3.2),
  records it and answers at once (J.3.2.1.3: success means "received", not "committed").
* :class:`CommitmentWorker` (a thread started and stopped with the DIMSE server): claims
  due requests (:mod:`pacs.commitment`), checks each referenced instance in the index, and
  sends the N-EVENT-REPORT (J.3.3) on a **new** association to the requesting AE, found in
  the AE registry. On that association we are the association requestor but the SCP of
  the SOP class, so we propose SCP/SCU Role Selection with SCP-role 1, SCU-role 0 (PS3.7
  D.3.3.4); the modality accepts it and acts as SCU (J.3.3.1.3 note). Unreachable peers
  are retried with exponential back-off; after ``PACS_COMMITMENT_MAX_ATTEMPTS`` the request
  ends ``failed``.

Logs carry the calling AE, Transaction UID and counts only, never patient identifiers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel

from .. import aes, commitment
from . import command as cmd
from .status import Status, status_dataset
from ..errors import PacsError, StorageUnavailable
from ..uids import lenient_uid
from . import policy

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from .service import DimseRequest

    from ..archive import Archive

log = logging.getLogger(__name__)

#: The well-known Storage Commitment Push Model SOP Instance (PS3.4 J.3.5).
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID (J.3.2.1)
EVENT_ALL_COMMITTED, EVENT_FAILURES_EXIST = 1, 2  # Event Type IDs (J.3.3.1)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_ACTION = 0x0123
RESOURCE_LIMITATION = 0x0213

#: Transfer syntaxes for the commitment messages (no pixel data: uncompressed only).
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
MAX_BACKOFF_SECONDS = 3600.0


class InvalidRequest(PacsError):
    """The N-ACTION's Action Information is not a valid commitment request (0x0115)."""

    dimse_status = INVALID_ARGUMENT_VALUE


def parse_request(info: Dataset) -> tuple[str, list[tuple[str, str]]]:
    """Transaction UID and (SOP Class UID, SOP Instance UID) pairs of an N-ACTION's Action
    Information (PS3.4 Table J.3-1); raises :class:`InvalidRequest` naming what is wrong."""
    transaction = str(info.get("TransactionUID", "") or "").rstrip("\x00 ")
    if not transaction:
        raise InvalidRequest("TransactionUID missing")
    if not lenient_uid(transaction):
        raise InvalidRequest("TransactionUID is not a valid UID")
    sequence = info.get("ReferencedSOPSequence")
    if not sequence:
        raise InvalidRequest("ReferencedSOPSequence missing or empty")
    items: list[tuple[str, str]] = []
    for number, item in enumerate(sequence, 1):
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").rstrip("\x00 ")
        sop = str(item.get("ReferencedSOPInstanceUID", "") or "").rstrip("\x00 ")
        if not lenient_uid(sop_class) or not lenient_uid(sop):
            raise InvalidRequest(f"item {number}: Referenced SOP Class/Instance UID missing or invalid")
        items.append((sop_class, sop))
    return transaction, items


def handle_n_action(request: DimseRequest, worker: CommitmentWorker | None = None) -> None:
    """N-ACTION of the Storage Commitment Push Model (PS3.4 J.3.2; statuses PS3.7 10.1.4.1.10, C.4).

    0x0000 request recorded (the result follows by N-EVENT-REPORT); 0x0124 the AE policy
    refuses the caller; 0x0118 another SOP class; 0x0112 not the well-known SOP Instance;
    0x0123 Action Type ID other than 1; 0x0115 Transaction UID or Referenced SOP Sequence
    missing or invalid; 0x0110 the Action Information cannot be decoded; 0x0213 the index is
    unavailable. Every failure carries an Error Comment.
    """
    action_type = request.command.us(cmd.ACTION_TYPE_ID)
    request.respond(_n_action_status(request, action_type, worker), extra={cmd.ACTION_TYPE_ID: action_type})


def _n_action_status(request: DimseRequest, action_type: int | None, worker: CommitmentWorker | None) -> Status:
    archive = request.archive
    try:
        refused = policy.refusal(request, archive, "commitment")
    except StorageUnavailable as exc:
        return status_dataset(RESOURCE_LIMITATION, exc.reason)
    if refused is not None:
        return refused
    if request.command.sop_class != StorageCommitmentPushModel:
        return status_dataset(NO_SUCH_SOP_CLASS, "only Storage Commitment Push Model supports N-ACTION")
    if request.command.text(cmd.REQUESTED_SOP_INSTANCE) != WELL_KNOWN_INSTANCE:
        return status_dataset(NO_SUCH_SOP_INSTANCE, f"Requested SOP Instance must be {WELL_KNOWN_INSTANCE}")
    if action_type != REQUEST_STORAGE_COMMITMENT:
        return status_dataset(NO_SUCH_ACTION, "Action Type ID must be 1 (request storage commitment)")
    calling = request.calling_ae
    try:
        transaction, items = parse_request(request.identifier())
    except InvalidRequest as exc:
        log.info("storage commitment request from %s refused: %s", calling, exc.reason)
        return status_dataset(exc.dimse_status, exc.reason)
    except Exception as exc:  # pydicom raises on first access to a malformed element
        log.info("storage commitment request from %s undecodable: %s", calling, type(exc).__name__)
        return status_dataset(PROCESSING_FAILURE, "Action Information cannot be decoded")
    try:
        _, created = commitment.record_request(archive.db, transaction, calling, items)
    except StorageUnavailable as exc:
        return status_dataset(RESOURCE_LIMITATION, exc.reason)
    log.info("storage commitment %s from %s: %d instance(s)%s", transaction, calling, len(items),
             "" if created else " (re-sent while pending)")
    if worker is not None:
        worker.wake()
    return status_dataset(SUCCESS)


def build_event_report(
    transaction_uid: str, result: commitment.CommitmentResult, retrieve_ae: str
) -> tuple[int, Dataset]:
    """Event Type ID and Event Information of the result (PS3.4 J.3.3.1, Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if result.committed:
        referenced = []
        for sop_class, sop in result.committed:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop
            item.RetrieveAETitle = retrieve_ae
            referenced.append(item)
        ds.ReferencedSOPSequence = Sequence(referenced)
    if not result.failed:
        return EVENT_ALL_COMMITTED, ds
    failed = []
    for sop_class, sop, reason in result.failed:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop
        item.FailureReason = reason
        failed.append(item)
    ds.FailedSOPSequence = Sequence(failed)
    return EVENT_FAILURES_EXIST, ds


class DeliveryError(Exception):
    """The report could not be delivered (peer unreachable, context refused, failure status)."""


@dataclass(frozen=True)
class Timeouts:
    acse: float = 10.0
    dimse: float = 30.0
    network: float = 30.0

    @property
    def lease(self) -> float:
        """How long a claimed request stays ours: longer than any one delivery."""
        return self.acse + self.dimse + self.network + 30.0


class CommitmentWorker:
    """Sends the results of recorded commitment requests, in a background thread."""

    def __init__(self, archive: Archive, *, poll_interval: float = 2.0, timeouts: Timeouts | None = None) -> None:
        self.archive = archive
        self.poll_interval = poll_interval
        self.timeouts = timeouts or Timeouts()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._assoc: Association | None = None

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="commitment-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for due requests now (called after a request is recorded)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the delivery in progress (aborted after ``timeout`` s), then stop."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        thread.join(timeout)
        assoc = self._assoc
        if thread.is_alive() and assoc is not None:
            assoc.abort()
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                wait = self.run_once()
            except StorageUnavailable as exc:
                log.warning("storage commitment worker: %s; retrying", exc.reason)
                wait = self.poll_interval
            except Exception:
                log.exception("storage commitment worker failed; retrying")
                wait = self.poll_interval
            self._wake.wait(max(0.0, min(self.poll_interval, wait)))
            self._wake.clear()

    # -- work ---------------------------------------------------------------------
    def run_once(self, now: float | None = None) -> float:
        """Deliver every due request; returns seconds until the next known due one."""
        db = self.archive.db
        while not self._stopping.is_set():
            claimed = commitment.claim_due(db, time.time() if now is None else now, self.timeouts.lease)
            if not claimed:
                break
            for request in claimed:
                self._process(request)
        due = commitment.next_due(db)
        return self.poll_interval if due is None else due - time.time()

    def _process(self, request: commitment.ClaimedRequest) -> None:
        db = self.archive.db
        settings = self.archive.settings
        peer = aes.get_ae(db, request.calling_ae)
        if peer is None:
            log.warning("storage commitment %s from %s: calling AE is not in the registry (pacs ae add); "
                        "no report can be sent", request.transaction_uid, request.calling_ae)
            commitment.mark_failed(db, request, "calling AE not registered: no address to send the report to")
            return
        result = commitment.evaluate(db, request.items)
        event_type, info = build_event_report(request.transaction_uid, result, settings.ae_title)
        try:
            self._send(peer, event_type, info)
        except DeliveryError as exc:
            self._retry_or_fail(request, str(exc))
            return
        commitment.mark_sent(db, request)
        log.info("storage commitment %s reported to %s: %d committed, %d failed (attempt %d)",
                 request.transaction_uid, peer.ae_title, len(result.committed), len(result.failed),
                 request.attempts)

    def _retry_or_fail(self, request: commitment.ClaimedRequest, error: str) -> None:
        settings = self.archive.settings
        if request.attempts >= settings.commitment_max_attempts:
            log.warning("storage commitment %s to %s failed after %d attempts: %s",
                        request.transaction_uid, request.calling_ae, request.attempts, error)
            commitment.mark_failed(self.archive.db, request, error)
            return
        delay = min(MAX_BACKOFF_SECONDS, settings.commitment_retry_seconds * 2 ** (request.attempts - 1))
        log.info("storage commitment %s to %s: attempt %d failed (%s); retry in %.1f s",
                 request.transaction_uid, request.calling_ae, request.attempts, error, delay)
        commitment.schedule_retry(self.archive.db, request, error, time.time() + delay)

    def _send(self, peer: aes.AEEntry, event_type: int, info: Dataset) -> None:
        """One association to ``peer`` carrying the N-EVENT-REPORT; raises DeliveryError."""
        ae = AE(ae_title=self.archive.settings.ae_title)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (
            self.timeouts.acse, self.timeouts.dimse, self.timeouts.network)
        ae.add_requested_context(StorageCommitmentPushModel, TRANSFER_SYNTAXES)
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role])
        if not assoc.is_established:
            raise DeliveryError(f"association to {peer.ae_title} at {peer.host}:{peer.port} not established")
        self._assoc = assoc
        try:
            status = self._report(assoc, event_type, info)
        finally:
            self._assoc = None
            if assoc.is_established:
                assoc.release()
        if status is None:
            raise DeliveryError(f"no N-EVENT-REPORT response from {peer.ae_title}")
        if status != SUCCESS:
            raise DeliveryError(f"{peer.ae_title} answered the N-EVENT-REPORT with 0x{status:04X}")

    @staticmethod
    def _report(assoc: Association, event_type: int, info: Dataset) -> int | None:
        accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == StorageCommitmentPushModel]
        if not accepted:
            raise DeliveryError("peer refused the Storage Commitment Push Model context")
        if not accepted[0].as_scp:
            # The peer ignored the role proposal; PS3.4 J.3.3 wants it, but a peer that accepted
            # the context will usually take the report, so send it anyway.
            log.debug("peer did not grant the SCP role for storage commitment; sending anyway")
        status: Any
        status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        return int(status.Status) if status and "Status" in status else None
