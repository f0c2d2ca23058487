"""C-MOVE SCP against real peers: pynetdicom and dcmtk storescp destinations, movescu."""

from __future__ import annotations

import subprocess
import select
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelMove as PatientRootMove,
    StudyRootQueryRetrieveInformationModelMove as StudyRootMove,
)

from pacs import aes
from pacs.server import DIMSE

from .dcmtk import dcmtk_tool, needs_dcmtk
from .factory import dataset_part
from .query_cases import build_datasets
from .retrieve_peers import (
    UNCOMPRESSED,
    DcmtkStoreSCP,
    StoreSCP,
    failed_uids,
    jpeg_lossless_without_decoder,
    same_pixels,
    sample,
    store,
    store_file,
    study_of_cts,
)
from .servers import ThreadedServer, free_port


def c_move(server: ThreadedServer, keys: dict[str, Any], destination: str, model=StudyRootMove,
           calling: str = "WORKSTATION", on_response=None, on_associated=None) -> list[tuple[Dataset, Dataset | None]]:
    """Send one C-MOVE (Message ID 11); return every (status, identifier) response."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
    assert assoc.is_established
    if on_associated is not None:
        on_associated(assoc)
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    responses = []
    for status, ident in assoc.send_c_move(identifier, destination, model, msg_id=11):
        responses.append((status, ident))
        if on_response is not None:
            on_response(assoc, status)
    assoc.release()
    return responses


@pytest.fixture
def dest(server: ThreadedServer):
    scp = StoreSCP().start().register(server)
    yield scp
    scp.stop()


@pytest.fixture
def uncompressed_dest(server: ThreadedServer):
    scp = StoreSCP(ae_title="PLAIN", syntaxes=UNCOMPRESSED).start().register(server)
    yield scp
    scp.stop()


def test_study_move_bytes_as_stored(server: ThreadedServer, dest: StoreSCP) -> None:
    study, _, datasets = study_of_cts(4)
    stored = {ds.SOPInstanceUID: store(server, ds) for ds in datasets}
    responses = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, "DEST")
    final, _ = responses[-1]
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (4, 0)
    pending = [s for s, _ in responses if s.Status == 0xFF00]
    assert [s.NumberOfRemainingSuboperations for s in pending] == [3, 2, 1, 0]
    assert set(dest.received) == set(stored)
    for uid, data in stored.items():
        assert dest.received[uid].data == dataset_part(data)


def test_levels_send_exactly_the_named_instances(server: ThreadedServer, dest: StoreSCP) -> None:
    datasets, labels = build_datasets()
    by_label: dict[str, set[str]] = {}
    for ds in datasets:
        store(server, ds)
        for key in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID):
            by_label.setdefault(key, set()).add(ds.SOPInstanceUID)
    one, two = sorted(by_label[labels["S1"]])[:2]
    cases = [
        ({"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}, PatientRootMove, by_label["P1"]),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": labels["S3"]}, StudyRootMove, by_label[labels["S3"]]),
        ({"QueryRetrieveLevel": "STUDY", "PatientID": "P1", "StudyInstanceUID": labels["S2"]}, PatientRootMove,
         by_label[labels["S2"]]),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": [labels["S4"], labels["S5"]]}, StudyRootMove,
         by_label[labels["S4"]] | by_label[labels["S5"]]),
        ({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": labels["S3"], "SeriesInstanceUID": labels["S3.PT"]},
         StudyRootMove, by_label[labels["S3.PT"]]),
        ({"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": labels["S1"], "SeriesInstanceUID": labels["S1.CT"],
          "SOPInstanceUID": [one, two]}, StudyRootMove, {one, two}),
    ]
    for keys, model, expected in cases:
        dest.received.clear()
        final, _ = c_move(server, {**keys, "PatientName": "ignored*"}, "DEST", model)[-1]
        assert final.Status == 0x0000, keys
        assert final.NumberOfCompletedSuboperations == len(expected)
        assert set(dest.received) == expected, keys


def test_unknown_destination_says_how_to_register(server: ThreadedServer) -> None:
    study, _, datasets = study_of_cts(1)
    store(server, datasets[0])
    [(status, ident)] = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, "NOWHERE")
    assert status.Status == 0xA801 and not ident
    assert str(status.ErrorComment) == "unknown move destination NOWHERE: pacs ae add NOWHERE HOST PORT"
    assert "NumberOfFailedSuboperations" not in status


def test_unreachable_destination(server: ThreadedServer) -> None:
    study, _, datasets = study_of_cts(1)
    store(server, datasets[0])
    aes.add_ae(server.archive.db, "GONE", "127.0.0.1", free_port())
    [(status, _)] = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, "GONE")
    assert status.Status == 0xA801
    assert str(status.ErrorComment).startswith("cannot reach GONE at 127.0.0.1:")


def test_destination_rejecting_the_association(server: ThreadedServer) -> None:
    study, _, datasets = study_of_cts(1)
    store(server, datasets[0])
    scp = StoreSCP(require_called_aet=True).start()  # answers only to the called AE title DEST
    aes.add_ae(server.archive.db, "ALIAS", "127.0.0.1", scp.port)
    try:
        [(status, _)] = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, "ALIAS")
    finally:
        scp.stop()
    assert status.Status == 0xA801
    assert "association rejected" in str(status.ErrorComment)


def test_destination_accepting_no_context_fails_every_instance(server: ThreadedServer) -> None:
    study, _, datasets = study_of_cts(2)
    for ds in datasets:
        store(server, ds)
    scp = StoreSCP(sop_classes=["1.2.840.10008.5.1.4.1.1.4"]).start().register(server)  # MR only
    try:
        final, ident = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, "DEST")[-1]
    finally:
        scp.stop()
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 2
    assert failed_uids(ident) == {ds.SOPInstanceUID for ds in datasets}
    assert scp.received == {}


def test_never_stored_uid_moves_nothing(server: ThreadedServer, dest: StoreSCP) -> None:
    [(status, _)] = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3.4.5.6.7"}, "DEST")
    assert status.Status == 0x0000
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (0, 0)
    assert dest.received == {}


@pytest.mark.parametrize("keys, model, reason", [
    ({"StudyInstanceUID": "1.2.3"}, StudyRootMove, "QueryRetrieveLevel"),
    ({"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}, StudyRootMove, "not in this information model"),
    ({"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.2.3"}, StudyRootMove, "StudyInstanceUID"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, StudyRootMove, "wildcards"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"},
     StudyRootMove, "below the STUDY level"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3"}, PatientRootMove, "PatientID"),
])
def test_invalid_identifier_a900_with_comment(server: ThreadedServer, dest: StoreSCP, keys, model, reason) -> None:
    [(status, ident)] = c_move(server, keys, "DEST", model)
    assert status.Status == 0xA900 and not ident
    assert reason in str(status.ErrorComment)


def test_policy_refuses_move(server: ThreadedServer, dest: StoreSCP) -> None:
    aes.add_ae(server.archive.db, "NOMOVE", "127.0.0.1", 104, denied=["move"])
    [(status, _)] = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3"}, "DEST",
                           calling="NOMOVE")
    assert status.Status == 0x0124
    assert "MOVE" in str(status.ErrorComment).upper()


def test_compressed_sent_as_stored_when_accepted(server: ThreadedServer, dest: StoreSCP) -> None:
    data = store_file(server, sample("JPEG 2000"))
    ds = dcmread(sample("JPEG 2000"), stop_before_pixels=True)
    final, _ = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ds.StudyInstanceUID}, "DEST")[-1]
    assert final.Status == 0x0000
    got = dest.received[ds.SOPInstanceUID]
    assert got.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert got.data == dataset_part(data)


@pytest.mark.parametrize("name", ["JPEG 2000", "RLE", "JPEG-LS", "Deflated"])
def test_transcoded_for_an_uncompressed_only_destination(server: ThreadedServer, uncompressed_dest: StoreSCP,
                                                          name: str) -> None:
    path = sample(name)
    store_file(server, path)
    original = dcmread(path, stop_before_pixels=True)
    final, _ = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": original.StudyInstanceUID},
                      "PLAIN")[-1]
    assert final.Status == 0x0000
    got = uncompressed_dest.received[original.SOPInstanceUID]
    assert got.transfer_syntax in UNCOMPRESSED
    received = got.dataset()
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert same_pixels(received, path)


def test_instance_without_decoder_fails_alone(server: ThreadedServer, uncompressed_dest: StoreSCP) -> None:
    study, _, datasets = study_of_cts(2)
    store(server, datasets[0])
    undecodable = jpeg_lossless_without_decoder(study)
    store(server, undecodable)
    final, ident = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, "PLAIN")[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    assert failed_uids(ident) == {undecodable.SOPInstanceUID}
    assert set(uncompressed_dest.received) == {datasets[0].SOPInstanceUID}


def test_cancel_mid_move(server: ThreadedServer) -> None:
    study, _, datasets = study_of_cts(12)
    for ds in datasets:
        store(server, ds)
    dimse = server._runner.app[DIMSE]  # type: ignore[union-attr]
    holder: dict[str, Any] = {}

    def on_store(count: int) -> None:
        if count == 3:  # cancel while the third sub-operation is in flight
            holder["assoc"].send_c_cancel(11, query_model=StudyRootMove)
            # The server reads the C-CANCEL before the next sub-operation; hold this
            # C-STORE's answer until the cancel is waiting on the server's socket.
            sockets = [a.sock for a in list(dimse._associations) if a.requestor.ae_title == "WORKSTATION"]
            assert select.select(sockets, [], [], 10)[0]

    scp = StoreSCP(on_store=on_store).start().register(server)
    try:
        responses = c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, "DEST",
                           on_associated=lambda assoc: holder.setdefault("assoc", assoc))
    finally:
        scp.stop()
    final, ident = responses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfCompletedSuboperations == 3
    assert final.NumberOfRemainingSuboperations == 9
    assert len(scp.received) == 3


def test_pending_responses_then_success(server: ThreadedServer) -> None:
    study, _, datasets = study_of_cts(2)
    for ds in datasets:
        store(server, ds)
    scp = StoreSCP().start().register(server)
    try:
        seen = []
        c_move(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, "DEST",
               on_response=lambda assoc, status: seen.append(status.Status))
    finally:
        scp.stop()
    assert seen == [0xFF00, 0xFF00, 0x0000]


@needs_dcmtk("movescu")
@needs_dcmtk("storescp")
@pytest.mark.dcmtk
def test_dcmtk_movescu_to_storescp(server: ThreadedServer, tmp_path: Path) -> None:
    study, _, datasets = study_of_cts(3)
    stored = {ds.SOPInstanceUID: store(server, ds) for ds in datasets}
    j2k = sample("JPEG 2000")
    j2k_uid = str(dcmread(j2k, stop_before_pixels=True).SOPInstanceUID)
    j2k_ds = dcmread(j2k)
    j2k_ds.StudyInstanceUID, j2k_ds.PatientID = study, "PID1"  # one move carries both kinds
    if "IssuerOfPatientID" in j2k_ds:
        del j2k_ds.IssuerOfPatientID
    stored_j2k = store(server, j2k_ds)
    scp = DcmtkStoreSCP(tmp_path / "received").wait_ready()
    aes.add_ae(server.archive.db, scp.ae_title, "127.0.0.1", scp.port)
    try:
        proc = subprocess.run(
            [dcmtk_tool("movescu"), "-S", "-aec", "PACS", "-aet", "WORKSTATION", "-aem", scp.ae_title,
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
             "127.0.0.1", str(server.dimse_port)],
            capture_output=True, text=True, timeout=120)
    finally:
        scp.stop()
    assert proc.returncode == 0, proc.stderr
    files = scp.files()
    assert set(files) == {*stored, j2k_uid}
    for uid, data in stored.items():  # storescp's default: uncompressed only
        assert dataset_part(files[uid]) == dataset_part(data)
    transcoded = dcmread(BytesIO(files[j2k_uid]))
    assert not transcoded.file_meta.TransferSyntaxUID.is_compressed
    assert same_pixels(transcoded, stored_j2k)
