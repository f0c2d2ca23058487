"""Storage Commitment Push Model SCP (PS3.4 Annex J) against a real pynetdicom modality.

The modality stores instances, asks for commitment by N-ACTION and listens for the
N-EVENT-REPORT that the archive sends on a new association, proposing the SCP role.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel, Verification
from sqlalchemy import func, select

from pacs import aes, commitment
from pacs.archive import Archive
from pacs.dimse.commitment import WELL_KNOWN_INSTANCE
from pacs.index.models import CommitmentRequest
from pacs.settings import Settings

from .factory import ROOT, make_ct
from .servers import ThreadedServer, free_port, wait_until

TIMEOUT = 20.0



class Modality:
    """A modality: C-STORE and N-ACTION as SCU, and a listener taking the N-EVENT-REPORT
    as SCU of the Storage Commitment SOP class (it accepts the archive's SCP role proposal)."""

    def __init__(self, ae_title: str = "MODALITY1") -> None:
        self.ae_title = ae_title
        self.ae = AE(ae_title=ae_title)
        self.ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        self.ae.add_requested_context(StorageCommitmentPushModel)
        self.ae.add_requested_context(Verification)
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        self.reports: list[dict] = []
        self.received = threading.Event()
        self.server = None

    def listen(self, port: int = 0) -> int:
        handlers = [(evt.EVT_N_EVENT_REPORT, self._on_report)]
        self.server = self.ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        return int(self.server.server_address[1])

    def _on_report(self, event) -> tuple[int, None]:  # type: ignore[no-untyped-def]
        context = next(cx for cx in event.assoc.accepted_contexts
                       if cx.abstract_syntax == StorageCommitmentPushModel)
        self.reports.append({
            "event_type": event.event_type,
            "info": Dataset(event.event_information),
            "class_uid": event.request.AffectedSOPClassUID,
            "instance_uid": event.request.AffectedSOPInstanceUID,
            "from_ae": event.assoc.requestor.ae_title,
            "we_are_scu": context.as_scu, "we_are_scp": context.as_scp,
        })
        self.received.set()
        return 0x0000, None

    def register(self, archive: Archive, port: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        aes.add_ae(archive.db, self.ae_title, "127.0.0.1", port, "test modality", **kwargs)

    def store(self, server: ThreadedServer, datasets: list[Dataset]) -> None:
        assoc = self.ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
        assert assoc.is_established
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()

    def request(self, server: ThreadedServer, info: Dataset, action_type: int = 1,
                instance_uid: str = WELL_KNOWN_INSTANCE) -> Dataset:
        """Send an N-ACTION; return its response status dataset."""
        assoc = self.ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
        assert assoc.is_established
        status, _ = assoc.send_n_action(info, action_type, StorageCommitmentPushModel, instance_uid)
        assoc.release()
        assert status is not None and "Status" in status
        return status

    def wait_report(self, timeout: float = TIMEOUT) -> dict:
        assert self.received.wait(timeout), "no N-EVENT-REPORT received"
        return self.reports[-1]

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
        self.ae.shutdown()


def action_info(transaction: str, items: list[tuple[str, str]]) -> Dataset:
    info = Dataset()
    info.TransactionUID = transaction
    refs = []
    for sop_class, sop in items:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop
        refs.append(item)
    info.ReferencedSOPSequence = refs
    return info


def refs(sequence) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in sequence]


def row_count(archive: Archive) -> int:
    with archive.db.read() as conn:
        return int(conn.execute(select(func.count(CommitmentRequest.id))).scalar())


@pytest.fixture
def modality() -> Iterator[Modality]:
    mod = Modality()
    yield mod
    mod.close()


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    return settings.replace(commitment_retry_seconds=0.2, commitment_max_attempts=3)


@pytest.fixture
def fast_server(fast_settings: Settings) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(fast_settings).start()
    yield srv
    srv.stop()


def test_some_stored_some_not(server: ThreadedServer, modality: Modality, caplog) -> None:
    caplog.set_level(logging.INFO)
    stored = [make_ct(seed=1), make_ct(seed=2)]
    modality.store(server, stored)
    modality.register(server.archive, modality.listen())
    missing = generate_uid(ROOT)
    transaction = generate_uid(ROOT)
    status = modality.request(server, action_info(
        transaction, [(CTImageStorage, stored[0].SOPInstanceUID), (CTImageStorage, missing)]))
    assert status.Status == 0x0000

    report = modality.wait_report()
    assert report["event_type"] == 2
    assert report["class_uid"] == StorageCommitmentPushModel
    assert report["instance_uid"] == WELL_KNOWN_INSTANCE
    assert report["from_ae"] == "PACS"
    assert (report["we_are_scu"], report["we_are_scp"]) == (True, False)  # roles per PS3.4 J.3.3
    info = report["info"]
    assert info.TransactionUID == transaction
    assert refs(info.ReferencedSOPSequence) == [(CTImageStorage, stored[0].SOPInstanceUID)]
    assert info.ReferencedSOPSequence[0].RetrieveAETitle == "PACS"
    assert refs(info.FailedSOPSequence) == [(CTImageStorage, missing)]
    assert info.FailedSOPSequence[0].FailureReason == 0x0112
    row = wait_until(lambda: (r := commitment.get_request(server.archive.db, transaction))
                     and r["status"] == "sent" and r, what="status sent")
    assert row["attempts"] == 1
    assert len(modality.reports) == 1
    assert "Doe" not in caplog.text and "PID1" not in caplog.text  # no patient identifiers


def test_all_stored_is_event_type_1(server: ThreadedServer, modality: Modality) -> None:
    stored = [make_ct(seed=3), make_ct(seed=4)]
    modality.store(server, stored)
    modality.register(server.archive, modality.listen())
    items = [(CTImageStorage, ds.SOPInstanceUID) for ds in stored]
    transaction = generate_uid(ROOT)
    assert modality.request(server, action_info(transaction, items)).Status == 0x0000
    report = modality.wait_report()
    assert report["event_type"] == 1
    assert report["info"].TransactionUID == transaction
    assert refs(report["info"].ReferencedSOPSequence) == items
    assert "FailedSOPSequence" not in report["info"]


def test_n_action_with_role_proposal_accepted_as_scu(server: ThreadedServer) -> None:
    """A requestor proposing both roles (some modalities do) is granted SCU only: the report
    never comes on this association (PS3.4 J.3.3)."""
    ae = AE(ae_title="MODALITY2")
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS", ext_neg=[role])
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    assert (context.as_scu, context.as_scp) == (True, False)
    info = action_info(generate_uid(ROOT), [(CTImageStorage, generate_uid(ROOT))])
    status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
    assoc.release()
    assert status.Status == 0x0000
    assert row_count(server.archive) == 1


def test_class_instance_conflict(server: ThreadedServer, modality: Modality) -> None:
    ds = make_ct(seed=5)
    modality.store(server, [ds])
    modality.register(server.archive, modality.listen())
    assert modality.request(server, action_info(generate_uid(ROOT), [(MRImageStorage, ds.SOPInstanceUID)])).Status == 0
    report = modality.wait_report()
    assert report["event_type"] == 2
    assert "ReferencedSOPSequence" not in report["info"]
    assert report["info"].FailedSOPSequence[0].FailureReason == 0x0119


@pytest.mark.parametrize(("mutate", "action_type", "expected", "comment"), [
    (lambda info: delattr(info, "TransactionUID"), 1, 0x0115, "TransactionUID missing"),
    (lambda info: setattr(info, "TransactionUID", "1.2.abc"), 1, 0x0115, "TransactionUID"),
    (lambda info: delattr(info, "ReferencedSOPSequence"), 1, 0x0115, "ReferencedSOPSequence"),
    (lambda info: setattr(info.ReferencedSOPSequence[0], "ReferencedSOPInstanceUID", "x.1"), 1, 0x0115, "item 1"),
    (lambda info: delattr(info.ReferencedSOPSequence[0], "ReferencedSOPClassUID"), 1, 0x0115, "item 1"),
    (lambda info: None, 2, 0x0123, "Action Type ID"),
])
def test_malformed_request_refused(server: ThreadedServer, modality: Modality, mutate, action_type: int,
                                   expected: int, comment: str) -> None:
    info = action_info(generate_uid(ROOT), [(CTImageStorage, generate_uid(ROOT))])
    mutate(info)
    status = modality.request(server, info, action_type=action_type)
    assert status.Status == expected
    assert comment in str(status.ErrorComment)
    assert row_count(server.archive) == 0


def test_wrong_requested_instance_refused(server: ThreadedServer, modality: Modality) -> None:
    info = action_info(generate_uid(ROOT), [(CTImageStorage, generate_uid(ROOT))])
    status = modality.request(server, info, instance_uid="1.2.3.4")
    assert status.Status == 0x0112
    assert row_count(server.archive) == 0


def test_unregistered_ae_ends_failed(server: ThreadedServer, modality: Modality, caplog) -> None:
    caplog.set_level(logging.INFO)
    transaction = generate_uid(ROOT)
    assert modality.request(server, action_info(transaction, [(CTImageStorage, generate_uid(ROOT))])).Status == 0
    row = wait_until(lambda: (r := commitment.get_request(server.archive.db, transaction))
                     and r["status"] == "failed" and r, what="status failed")
    assert "not registered" in row["last_error"]
    assert "not in the registry" in caplog.text
    # The server keeps serving.
    assoc = modality.ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_retried_until_peer_listens_then_delivered_once(fast_server: ThreadedServer, modality: Modality) -> None:
    ds = make_ct(seed=6)
    modality.store(fast_server, [ds])
    port = free_port()  # nobody listens here yet
    modality.register(fast_server.archive, port)
    transaction = generate_uid(ROOT)
    assert modality.request(fast_server, action_info(transaction, [(CTImageStorage, ds.SOPInstanceUID)])).Status == 0
    first = wait_until(lambda: (r := commitment.get_request(fast_server.archive.db, transaction))
                       and r["last_error"] and r, what="a failed first attempt")
    assert first["status"] == "pending"
    assert "not established" in first["last_error"]
    modality.listen(port)
    report = modality.wait_report()
    assert report["event_type"] == 1
    row = wait_until(lambda: (r := commitment.get_request(fast_server.archive.db, transaction))
                     and r["status"] == "sent" and r, what="status sent")
    assert row["attempts"] >= 2 and row["last_error"] == ""
    assert len(modality.reports) == 1


def test_gives_up_after_max_attempts(fast_server: ThreadedServer, modality: Modality) -> None:
    modality.register(fast_server.archive, free_port())
    transaction = generate_uid(ROOT)
    assert modality.request(fast_server, action_info(transaction, [(CTImageStorage, generate_uid(ROOT))])).Status == 0
    row = wait_until(lambda: (r := commitment.get_request(fast_server.archive.db, transaction))
                     and r["status"] == "failed" and r, what="status failed")
    assert row["attempts"] == 3
    assert "not established" in row["last_error"]


def test_policy_can_deny_commitment(server: ThreadedServer, modality: Modality) -> None:
    modality.register(server.archive, modality.listen(), denied=["commitment"])
    status = modality.request(server, action_info(generate_uid(ROOT), [(CTImageStorage, generate_uid(ROOT))]))
    assert status.Status == 0x0124
    assert "commitment" in str(status.ErrorComment)
    assert row_count(server.archive) == 0


def test_resent_request_while_pending_is_recorded_once(archive: Archive) -> None:
    items = [(CTImageStorage, generate_uid(ROOT))]
    first, created = commitment.record_request(archive.db, "1.2.3", "MOD", items)
    again, created_again = commitment.record_request(archive.db, "1.2.3", "MOD", items)
    assert created and not created_again and first == again
    assert row_count(archive) == 1


def test_concurrent_claims_never_overlap(archive: Archive, tmp_path: Path) -> None:
    """Four claimers on one database (as four server processes would be): every request
    is claimed exactly once."""
    for n in range(40):
        commitment.record_request(archive.db, f"1.2.3.{n}", "MOD", [(CTImageStorage, f"1.2.4.{n}")], now=100.0)
    others = [Archive(archive.settings, migrate=False) for _ in range(3)]
    claimed: list[list[int]] = []
    barrier = threading.Barrier(4)

    def claim(arc: Archive) -> None:
        barrier.wait()
        mine: list[int] = []
        while batch := commitment.claim_due(arc.db, now=200.0, lease_seconds=60.0, limit=5):
            mine.extend(r.id for r in batch)
        claimed.append(mine)

    threads = [threading.Thread(target=claim, args=(arc,)) for arc in [archive, *others]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for arc in others:
        arc.close()
    ids = [i for mine in claimed for i in mine]
    assert len(ids) == 40 and len(set(ids)) == 40
    # Claimed rows are leased: nothing is due until the lease ends, then all are.
    assert commitment.claim_due(archive.db, now=250.0, lease_seconds=60.0) == []
    assert len(commitment.claim_due(archive.db, now=261.0, lease_seconds=60.0, limit=100)) == 40
