"""C-FIND SCP: the shared matching table through pynetdicom and dcmtk findscu."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PatientRootFind,
    StudyRootQueryRetrieveInformationModelFind as StudyRootFind,
)

from .dcmtk import dcmtk_tool, needs_dcmtk
from pydicom.uid import ExplicitVRLittleEndian

from pacs.dimse import command, pdu
from pacs.dimse.scu import StoreAssociation

from .factory import make_ct, to_bytes
from .query_cases import STUDY_CASES, build_datasets
from .servers import ThreadedServer


@pytest.fixture
def loaded(server: ThreadedServer) -> tuple[ThreadedServer, dict[str, str]]:
    datasets, labels = build_datasets()
    for ds in datasets:
        server.archive.ingest_bytes(to_bytes(ds), source="test")
    return server, labels


def c_find(server: ThreadedServer, keys: dict[str, object], model=StudyRootFind) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.dimse_port)
    assert assoc.is_established
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    responses = [(status.Status, ident) for status, ident in assoc.send_c_find(identifier, model)]
    assoc.release()
    return responses


def _labels(labels: dict[str, str], uids: list[str]) -> set[str]:
    reverse = {v: k for k, v in labels.items()}
    return {reverse.get(u, u) for u in uids}


@pytest.mark.parametrize("keys, expected", STUDY_CASES, ids=[str(c[0]) for c in STUDY_CASES])
def test_study_matching_table(loaded, keys: dict[str, str], expected: set[str]) -> None:
    server, labels = loaded
    identifier = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", **keys}
    responses = c_find(server, identifier)
    assert responses[-1] == (0x0000, None)
    pending = [ident for status, ident in responses if status == 0xFF00]
    assert _labels(labels, [str(i.StudyInstanceUID) for i in pending]) == expected


def test_study_uid_list(loaded) -> None:
    server, labels = loaded
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": [labels["S1"], labels["S3"]]}
    pending = [i for s, i in c_find(server, keys) if s == 0xFF00]
    assert _labels(labels, [str(i.StudyInstanceUID) for i in pending]) == {"S1", "S3"}


def test_returned_keys_and_computed_attributes(loaded) -> None:
    server, labels = loaded
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": labels["S3"], "PatientName": "",
            "PatientID": "", "StudyDate": "", "AccessionNumber": "", "ModalitiesInStudy": "",
            "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "", "StudyComments": ""}
    [(status, ident), (final, _)] = c_find(server, keys)
    assert (status, final) == (0xFF00, 0x0000)
    assert str(ident.PatientName) == "Müller^Jürgen"
    assert ident.SpecificCharacterSet == "ISO_IR 192"
    assert (ident.PatientID, ident.StudyDate, ident.AccessionNumber) == ("P2", "20251231", "B_1%")
    assert list(ident.ModalitiesInStudy) == ["CT", "PT"]
    assert (ident.NumberOfStudyRelatedSeries, ident.NumberOfStudyRelatedInstances) == (2, 2)
    assert "StudyComments" in ident and ident.StudyComments in ("", None)  # asked, not held
    assert ident.QueryRetrieveLevel == "STUDY" and ident.RetrieveAETitle == "PACS"
    assert "SeriesDescription" not in ident  # only what was asked


def test_series_and_image_levels(loaded) -> None:
    server, labels = loaded
    series = [i for s, i in c_find(server, {
        "QueryRetrieveLevel": "SERIES", "StudyInstanceUID": labels["S3"], "SeriesInstanceUID": "",
        "Modality": "PT", "NumberOfSeriesRelatedInstances": ""}) if s == 0xFF00]
    assert [str(i.SeriesInstanceUID) for i in series] == [labels["S3.PT"]]
    assert series[0].NumberOfSeriesRelatedInstances == 1
    images = [i for s, i in c_find(server, {
        "QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": labels["S1"], "SeriesInstanceUID": labels["S1.CT"],
        "SOPInstanceUID": "", "InstanceNumber": "2"}) if s == 0xFF00]
    assert len(images) == 1 and images[0].InstanceNumber == 2


def test_patient_root_patient_level(loaded) -> None:
    server, _ = loaded
    pending = [i for s, i in c_find(server, {
        "QueryRetrieveLevel": "PATIENT", "PatientID": "", "PatientName": "doe*",
        "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedInstances": ""},
        model=PatientRootFind) if s == 0xFF00]
    by_id = {str(i.PatientID): i for i in pending}
    assert set(by_id) == {"P1", "P4"}
    assert (by_id["P1"].NumberOfPatientRelatedStudies, by_id["P1"].NumberOfPatientRelatedInstances) == (2, 5)


@pytest.mark.parametrize(
    "keys, model, reason",
    [
        ({"PatientID": "P1"}, StudyRootFind, "QueryRetrieveLevel"),
        ({"QueryRetrieveLevel": "SERIES", "Modality": "CT"}, StudyRootFind, "needs StudyInstanceUID"),
        ({"QueryRetrieveLevel": "STUDY", "Modality": "CT"}, StudyRootFind, "below the STUDY level"),
        ({"QueryRetrieveLevel": "PATIENT", "PatientID": ""}, StudyRootFind, "not in this information model"),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2026-01"}, StudyRootFind, "YYYYMMDD"),
        ({"QueryRetrieveLevel": "STUDY", "PatientID": "X"}, PatientRootFind, "needs PatientID"),
        ({"QueryRetrieveLevel": "STUDY", "StudyComments": "x"}, StudyRootFind, "not supported"),
    ],
)
def test_invalid_identifiers_get_a900(loaded, keys, model, reason) -> None:
    server, _ = loaded
    if keys.get("PatientID") == "X":
        keys = {"QueryRetrieveLevel": "STUDY", "StudyDate": "20260101"}
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.dimse_port)
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    responses = list(assoc.send_c_find(identifier, model))
    assoc.release()
    assert len(responses) == 1
    status, ident = responses[0]
    assert status.Status == 0xA900 and ident is None
    assert reason in str(status.ErrorComment)


def test_cancel_stops_pending_responses(loaded) -> None:
    """A C-CANCEL-RQ waiting on the socket is honoured before the next pending response.

    The request and its cancel go out in one write (a raw client: pynetdicom's SCU reads
    responses in another thread and would only cancel after the server, which sends
    200 responses in a few ms, had finished)."""
    server, _ = loaded
    for i in range(200):
        server.archive.ingest_bytes(to_bytes(make_ct(rows=4, columns=4, seed=i)), source="test")
    client = StoreAssociation("WORKSTATION", "PACS", [(str(StudyRootFind), [ExplicitVRLittleEndian])],
                              max_pdu=1 << 20, connect_timeout=10, dimse_timeout=30, implementation_uid="1.2.3.4")
    client.connect("127.0.0.1", server.dimse_port)
    identifier = b"".join(struct.pack("<HH2sH", 0x0008, e, vr, len(v)) + v
                          for e, vr, v in ((0x0052, b"CS", b"STUDY "),))
    identifier += struct.pack("<HH2sH", 0x0020, 0x000D, b"UI", 0)
    find = command.encode_command({command.AFFECTED_SOP_CLASS: str(StudyRootFind), command.COMMAND_FIELD: command.C_FIND_RQ,
                                   command.MESSAGE_ID: 7, command.PRIORITY: 0, command.DATASET_TYPE: 0})
    cancel = command.encode_command({command.COMMAND_FIELD: command.C_CANCEL_RQ, command.MESSAGE_ID_RESPONDED: 7,
                                     command.DATASET_TYPE: command.NO_DATASET})
    cid = client.accepted[0].context_id
    client._sock.sendall(pdu.p_data_header(cid, 3, len(find)) + find + pdu.p_data_header(cid, 2, len(identifier))
                         + identifier + pdu.p_data_header(cid, 3, len(cancel)) + cancel)
    statuses = []
    while not statuses or statuses[-1] in (0xFF00, 0xFF01):
        _, body = client._read_pdu()
        for _, flags, value in pdu.iter_pdvs(body):
            if flags == 3:
                statuses.append(command.Command.decode(value).us(command.STATUS))
    client.release()
    assert statuses[-1] == 0xFE00  # cancelled, not completed
    assert statuses.count(0xFF00) < 200


@needs_dcmtk("findscu")
@pytest.mark.dcmtk
def test_dcmtk_findscu(loaded, tmp_path: Path) -> None:
    server, labels = loaded
    proc = subprocess.run(
        [dcmtk_tool("findscu"), "-S", "-aec", "PACS", "-X", "-od", str(tmp_path),
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=doe*", "-k", "StudyInstanceUID",
         "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(server.dimse_port)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    answers = [dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    assert _labels(labels, [str(a.StudyInstanceUID) for a in answers]) == {"S1", "S2", "S5"}
    counts = {_labels(labels, [str(a.StudyInstanceUID)]).pop(): int(a.NumberOfStudyRelatedInstances) for a in answers}
    assert counts == {"S1": 3, "S2": 2, "S5": 1}


def test_find_denied_by_ae_policy(loaded) -> None:
    from pacs import aes

    server, _ = loaded
    aes.add_ae(server.archive.db, "WORKSTATION", "127.0.0.1", 104, denied=["find"])
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootFind)
    assoc = ae.associate("127.0.0.1", server.dimse_port)
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", ""
    responses = list(assoc.send_c_find(identifier, StudyRootFind))
    assoc.release()
    assert len(responses) == 1
    assert responses[0][0].Status == 0x0124
    assert responses[0][0].ErrorComment == "calling AE not allowed to query"
    assert responses[0][1] is None


def raw_find(server: ThreadedServer, identifier: bytes) -> list[tuple[int, str]]:
    """One C-FIND whose identifier bytes (Explicit VR Little Endian) go out exactly as
    given, through the raw SCU (pynetdicom would parse them first): (status, comment)s."""
    client = StoreAssociation("WORKSTATION", "PACS", [(str(StudyRootFind), [ExplicitVRLittleEndian])],
                              max_pdu=1 << 20, connect_timeout=10, dimse_timeout=30, implementation_uid="1.2.3.4")
    client.connect("127.0.0.1", server.dimse_port)
    find = command.encode_command({command.AFFECTED_SOP_CLASS: str(StudyRootFind), command.COMMAND_FIELD: command.C_FIND_RQ,
                                   command.MESSAGE_ID: 1, command.PRIORITY: 0, command.DATASET_TYPE: 0})
    cid = client.accepted[0].context_id
    client._sock.sendall(pdu.p_data_header(cid, 3, len(find)) + find + pdu.p_data_header(cid, 2, len(identifier))
                         + identifier)
    answers: list[tuple[int, str]] = []
    while not answers or answers[-1][0] in (0xFF00, 0xFF01):
        _, body = client._read_pdu()
        for _, flags, value in pdu.iter_pdvs(body):
            if flags == 3:
                response = command.Command.decode(value)
                answers.append((response.us(command.STATUS), response.text(command.ERROR_COMMENT)))
    client.release()
    return answers


def _explicit(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


@pytest.mark.parametrize("bad, comment", [
    (_explicit(0x0028, 0x0009, b"UL", b"123456789"), "element (0028,0009) cannot be decoded"),  # 9 bytes of UL
    (_explicit(0x0008, 0x0005, b"AT", b"true"), "data set cannot be decoded"),  # a tag as the character set
    (_explicit(0x0008, 0x0005, b"CS", b"*\x00*\x00"), "data set cannot be decoded"),
])
def test_undecodable_identifier_gets_a900_and_the_association_goes_on(loaded, bad: bytes, comment: str) -> None:
    """Regression (fuzz run): an element pydicom cannot decode was answered 0xC000
    "internal error" (and logged as a failure of the server); it is an invalid identifier."""
    server, labels = loaded
    elements = [bad, _explicit(0x0008, 0x0052, b"CS", b"STUDY "), _explicit(0x0020, 0x000D, b"UI", b"")]
    answers = raw_find(server, b"".join(sorted(elements, key=lambda e: struct.unpack("<HH", e[:4]))))
    assert len(answers) == 1 and answers[0][0] == 0xA900
    assert answers[0][1].startswith(comment)
    responses = c_find(server, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": labels["S1"]})
    assert [status for status, _ in responses] == [0xFF00, 0x0000]
