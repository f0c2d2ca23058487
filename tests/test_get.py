"""C-GET SCP against real peers: pynetdicom and dcmtk getscu, over the requesting association."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelGet as PatientRootGet,
    StudyRootQueryRetrieveInformationModelGet as StudyRootGet,
)

from pacs import aes

from .dcmtk import dcmtk_tool, needs_dcmtk
from .factory import dataset_part
from .retrieve_peers import (
    UNCOMPRESSED,
    Received,
    failed_uids,
    jpeg_lossless_without_decoder,
    received_from_event,
    same_pixels,
    sample,
    store,
    store_file,
    study_of_cts,
)
from .servers import ThreadedServer

CT_ELE = [(CTImageStorage, [ExplicitVRLittleEndian])]


def c_get(server: ThreadedServer, keys: dict[str, Any], storage: list[tuple[str, list[str]]],
          model=StudyRootGet, calling: str = "WORKSTATION",
          on_store: Callable[[Any, int], None] | None = None) -> tuple[list[tuple[Dataset, Any]], dict[str, Received]]:
    """One C-GET (Message ID 21) proposing ``storage`` contexts with the SCP role; the
    responses and what arrived."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    for sop_class, syntaxes in storage:
        ae.add_requested_context(sop_class, syntaxes)
    roles = [build_role(c, scp_role=True) for c in dict.fromkeys(c for c, _ in storage)]
    received: dict[str, Received] = {}

    def handle(event) -> int:  # type: ignore[no-untyped-def]
        uid, got = received_from_event(event)
        received[uid] = got
        if on_store is not None:
            on_store(event.assoc, len(received))
        return 0x0000

    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, handle)])
    assert assoc.is_established
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    responses = list(assoc.send_c_get(identifier, model, msg_id=21))
    assoc.release()
    return responses, received


def test_study_get_bytes_as_stored(server: ThreadedServer) -> None:
    study, _, datasets = study_of_cts(3)
    stored = {ds.SOPInstanceUID: store(server, ds) for ds in datasets}
    responses, received = c_get(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, CT_ELE)
    final, _ = responses[-1]
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (3, 0)
    assert [s.NumberOfRemainingSuboperations for s, _ in responses[:-1]] == [2, 1, 0]
    assert set(received) == set(stored)
    for uid, data in stored.items():
        assert received[uid].data == dataset_part(data)


def test_series_and_image_levels(server: ThreadedServer) -> None:
    study, series, datasets = study_of_cts(3)
    _, other_series, others = study_of_cts(2)
    for ds in others:
        ds.StudyInstanceUID = study
    for ds in datasets + others:
        store(server, ds)
    _, received = c_get(server, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": study,
                                 "SeriesInstanceUID": other_series}, CT_ELE)
    assert set(received) == {ds.SOPInstanceUID for ds in others}
    _, received = c_get(server, {"QueryRetrieveLevel": "IMAGE", "PatientID": "PID1", "StudyInstanceUID": study,
                                 "SeriesInstanceUID": series, "SOPInstanceUID": datasets[1].SOPInstanceUID},
                        CT_ELE, model=PatientRootGet)
    assert set(received) == {datasets[1].SOPInstanceUID}


def test_compressed_as_stored_when_proposed(server: ThreadedServer) -> None:
    path = sample("JPEG 2000")
    data = store_file(server, path)
    ds = dcmread(path, stop_before_pixels=True)
    responses, received = c_get(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ds.StudyInstanceUID},
                                [(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID]), (ds.SOPClassUID, UNCOMPRESSED)])
    assert responses[-1][0].Status == 0x0000
    got = received[ds.SOPInstanceUID]
    assert got.transfer_syntax == ds.file_meta.TransferSyntaxUID and got.data == dataset_part(data)


@pytest.mark.parametrize("name, syntaxes", [("JPEG 2000", UNCOMPRESSED), ("RLE", UNCOMPRESSED),
                                            ("JPEG-LS", [UNCOMPRESSED[1]])])
def test_transcoded_when_only_uncompressed_proposed(server: ThreadedServer, name: str, syntaxes) -> None:
    path = sample(name)
    store_file(server, path)
    original = dcmread(path, stop_before_pixels=True)
    responses, received = c_get(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": original.StudyInstanceUID},
                                [(original.SOPClassUID, syntaxes)])
    assert responses[-1][0].Status == 0x0000
    got = received[original.SOPInstanceUID]
    assert got.transfer_syntax in syntaxes
    decoded = got.dataset()
    assert decoded.SOPInstanceUID == original.SOPInstanceUID
    assert same_pixels(decoded, path)


def test_unsendable_instances_fail_alone(server: ThreadedServer) -> None:
    study, _, datasets = study_of_cts(2)
    for ds in datasets:
        store(server, ds)
    undecodable = jpeg_lossless_without_decoder(study)
    store(server, undecodable)
    responses, received = c_get(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, CT_ELE)
    final, ident = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert failed_uids(ident) == {undecodable.SOPInstanceUID}
    assert set(received) == {ds.SOPInstanceUID for ds in datasets}


def test_no_storage_context_for_the_class(server: ThreadedServer) -> None:
    path = sample("RLE")  # an MR; the requestor offers CT storage only
    store_file(server, path)
    original = dcmread(path, stop_before_pixels=True)
    responses, received = c_get(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": original.StudyInstanceUID},
                                CT_ELE)
    final, ident = responses[-1]
    assert final.Status == 0xA702  # every sub-operation failed
    assert final.NumberOfFailedSuboperations == 1
    assert failed_uids(ident) == {original.SOPInstanceUID}
    assert received == {}


def test_never_stored_uid_gets_nothing(server: ThreadedServer) -> None:
    responses, received = c_get(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3.4.5.6.7"}, CT_ELE)
    [(final, _)] = responses
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 0
    assert received == {}


@pytest.mark.parametrize("keys, reason", [
    ({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.3"}, "SeriesInstanceUID"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, "needs a value"),
    ({"QueryRetrieveLevel": "FRAME", "StudyInstanceUID": "1.2.3"}, "QueryRetrieveLevel"),
])
def test_invalid_identifier_a900_with_comment(server: ThreadedServer, keys, reason) -> None:
    responses, _ = c_get(server, keys, CT_ELE)
    [(final, ident)] = responses
    assert final.Status == 0xA900 and not ident
    assert reason in str(final.ErrorComment)
    assert "NumberOfFailedSuboperations" not in final


def test_policy_refuses_get(server: ThreadedServer) -> None:
    aes.add_ae(server.archive.db, "NOGET", "127.0.0.1", 104, denied=["get"])
    responses, _ = c_get(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3"}, CT_ELE,
                         calling="NOGET")
    assert responses[-1][0].Status == 0x0124


def test_cancel_mid_get(server: ThreadedServer) -> None:
    study, _, datasets = study_of_cts(10)
    for ds in datasets:
        store(server, ds)

    def on_store(assoc, count: int) -> None:  # type: ignore[no-untyped-def]
        if count == 3:  # sent before this C-STORE-RSP, on the same association
            assoc.send_c_cancel(21, query_model=StudyRootGet)

    responses, received = c_get(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}, CT_ELE,
                                on_store=on_store)
    final, _ = responses[-1]
    assert final.Status == 0xFE00
    assert (final.NumberOfCompletedSuboperations, final.NumberOfRemainingSuboperations) == (3, 7)
    assert len(received) == 3


@needs_dcmtk("getscu")
@pytest.mark.dcmtk
def test_dcmtk_getscu(server: ThreadedServer, tmp_path: Path) -> None:
    study, _, datasets = study_of_cts(3)
    stored = {ds.SOPInstanceUID: store(server, ds) for ds in datasets}
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.run(
        [dcmtk_tool("getscu"), "-S", "-aec", "PACS", "-aet", "WORKSTATION", "+B", "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.dimse_port)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p.read_bytes() for p in out.iterdir()}
    assert set(files) == set(stored)
    for uid, data in stored.items():
        assert dataset_part(files[uid]) == dataset_part(data)


def test_more_suboperations_than_the_counts_hold_are_refused() -> None:
    """The counts are US: a retrieve of more than 65,535 instances fails with a comment."""
    from types import SimpleNamespace

    from pacs.dimse import command
    from pacs.dimse.suboperations import run_suboperations

    answers, closed = [], []
    request = SimpleNamespace(command=SimpleNamespace(field=command.C_GET_RQ),
                              respond=lambda status, **kw: answers.append((status, kw)))
    sender = SimpleNamespace(send=lambda item: 0, close=lambda: closed.append(True))
    run_suboperations(request, [object()] * 65536, sender)  # type: ignore[arg-type]
    assert [(status.code, "65536 instances match" in status.comment) for status, _ in answers] == [(0xC416, True)]
    assert closed == [True]
