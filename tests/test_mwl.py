"""Modality Worklist SCP (PS3.4 K.6): pynetdicom and dcmtk findscu -W as the modality."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWLFind

from pacs import aes
from pacs.dimse import command, pdu
from pacs.dimse.scu import StoreAssociation
from worklist import items

from .dcmtk import dcmtk_tool, needs_dcmtk
from .servers import ThreadedServer

ORDERS: dict[str, dict[str, Any]] = {
    "CT_A": {"patient_id": "P1", "patient_name": "Müller^Anna", "patient_birth_date": "1970-02-03",
             "patient_sex": "F", "accession_number": "A1", "modality": "CT", "scheduled_station_ae": "CT1",
             "scheduled_start": "2026-12-04T08:30:00", "requested_procedure_id": "RP1",
             "requested_procedure_description": "CT chest",
             "requested_procedure_code": {"code": "24627-2", "scheme": "LN", "meaning": "CT Chest"},
             "step_id": "SPS1", "step_description": "Chest w/o contrast", "scheduled_station_name": "CTROOM",
             "performing_physician_name": "Tech^Tom", "referring_physician_name": "Ref^Rita",
             "study_instance_uid": "1.2.826.0.1.3680043.8.498.1", "priority": "STAT"},
    "CT_B": {"patient_id": "P2", "patient_name": "Doe^John", "accession_number": "A2", "modality": "CT",
             "scheduled_station_ae": "CT1", "scheduled_start": "2026-12-04T14:00:00"},
    "CT_C": {"patient_id": "P3", "patient_name": "Roe^Jane", "accession_number": "A3", "modality": "CT",
             "scheduled_station_ae": "CT2", "scheduled_start": "2026-12-05T09:00:00"},
    "MR_D": {"patient_id": "P4", "patient_name": "Doe^Jim", "accession_number": "A4", "modality": "MR",
             "scheduled_station_ae": "MR1", "scheduled_start": "2026-12-04T11:00:00"},
    "CANCELLED": {"patient_id": "P5", "patient_name": "Doe^Gone", "accession_number": "A5", "modality": "CT",
                  "scheduled_station_ae": "CT1", "scheduled_start": "2026-12-04T12:00:00"},
    "STARTED": {"patient_id": "P6", "patient_name": "Doe^Busy", "accession_number": "A6", "modality": "CT",
                "scheduled_station_ae": "CT1", "scheduled_start": "2026-12-04T13:00:00"},
}


@pytest.fixture
def loaded(server: ThreadedServer) -> ThreadedServer:
    db = server.archive.db
    for label, order in ORDERS.items():
        item = items.create_item(db, items.parse_item(order))
        if label == "CANCELLED":
            items.cancel_item(db, item["id"])
        if label == "STARTED":
            items.update_item(db, item["id"], {"status": "IN_PROGRESS"})
    return server


def mwl_find(server: ThreadedServer, keys: dict[str, Any], step: dict[str, Any] | None = None,
             calling: str = "CT1") -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(MWLFind)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
    assert assoc.is_established
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    if step is not None:
        item = Dataset()
        for keyword, value in step.items():
            setattr(item, keyword, value)
        identifier.ScheduledProcedureStepSequence = Sequence([item])
    responses = [(int(status.Status), ident) for status, ident in assoc.send_c_find(identifier, MWLFind)]
    assoc.release()
    return responses


def accessions(responses: list[tuple[int, Dataset | None]]) -> list[str]:
    assert responses[-1][0] == 0x0000, responses[-1]
    assert all(status == 0xFF00 for status, _ in responses[:-1])
    return [str(ds.AccessionNumber) for _, ds in responses[:-1]]


@pytest.mark.parametrize("keys, step, expected", [
    ({}, {"ScheduledStationAETitle": "CT1"}, ["A1", "A2"]),
    ({}, {"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStatus": "STARTED"}, ["A6"]),
    ({}, {"Modality": "CT", "ScheduledProcedureStepStartDate": "20261204"}, ["A1", "A2"]),
    ({}, {"ScheduledProcedureStepStartDate": "20261204-20261205"}, ["A1", "A4", "A2", "A3"]),
    ({}, {"ScheduledProcedureStepStartDate": "20261205-"}, ["A3"]),
    ({}, {"ScheduledProcedureStepStartTime": "0800-1130"}, ["A1", "A4", "A3"]),
    ({}, {"Modality": "MR"}, ["A4"]),
    ({"PatientName": "mULLer*"}, None, ["A1"]),  # case- and accent-insensitive, as the index
    ({"PatientName": "DOE^J*"}, None, ["A4", "A2"]),  # by scheduled start
    ({"PatientID": "P3"}, None, ["A3"]),
    ({"AccessionNumber": "A4"}, None, ["A4"]),
    ({"RequestedProcedureID": "RP1"}, None, ["A1"]),
    ({"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1"}, None, ["A1"]),
    ({"AccessionNumber": "A5"}, None, []),  # cancelled: never returned
    ({}, {"ScheduledStationAETitle": "XR9"}, []),
])
def test_matching(loaded: ThreadedServer, keys: dict[str, Any], step: dict[str, Any] | None,
                  expected: list[str]) -> None:
    keys = {"AccessionNumber": "", **keys}
    step = {"ScheduledProcedureStepStartDate": "", "ScheduledProcedureStepStartTime": "", **(step or {})}
    found = accessions(mwl_find(loaded, keys, step))
    assert found == expected


def test_returned_keys(loaded: ThreadedServer) -> None:
    keys = {"SpecificCharacterSet": "", "AccessionNumber": "", "ReferringPhysicianName": "", "PatientName": "",
            "PatientID": "P1", "PatientBirthDate": "", "PatientSex": "", "StudyInstanceUID": "",
            "RequestedProcedureID": "", "RequestedProcedureDescription": "", "RequestedProcedurePriority": "",
            "RequestedProcedureCodeSequence": Sequence(), "ReferencedStudySequence": Sequence(),
            "PatientWeight": "", "AdmissionID": ""}
    step = {"ScheduledStationAETitle": "", "ScheduledProcedureStepStartDate": "",
            "ScheduledProcedureStepStartTime": "", "Modality": "", "ScheduledPerformingPhysicianName": "",
            "ScheduledProcedureStepDescription": "", "ScheduledStationName": "", "ScheduledProcedureStepID": "",
            "ScheduledProcedureStepStatus": ""}
    responses = mwl_find(loaded, keys, step)
    assert [s for s, _ in responses] == [0xFF00, 0x0000]
    ds = responses[0][1]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Anna"
    values = {k: str(ds[k].value) for k in ("AccessionNumber", "ReferringPhysicianName", "PatientID",
                                            "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                                            "RequestedProcedureID", "RequestedProcedureDescription",
                                            "RequestedProcedurePriority")}
    assert values == {"AccessionNumber": "A1", "ReferringPhysicianName": "Ref^Rita", "PatientID": "P1",
                      "PatientBirthDate": "19700203", "PatientSex": "F",
                      "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1", "RequestedProcedureID": "RP1",
                      "RequestedProcedureDescription": "CT chest", "RequestedProcedurePriority": "STAT"}
    code = ds.RequestedProcedureCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("24627-2", "LN", "CT Chest")
    assert len(ds.ReferencedStudySequence) == 0
    assert "PatientWeight" in ds and ds.PatientWeight is None and "AdmissionID" in ds  # asked, not held: empty
    sps = ds.ScheduledProcedureStepSequence
    assert len(sps) == 1
    got = {k: str(sps[0][k].value) for k in step}
    assert got == {"ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDate": "20261204",
                   "ScheduledProcedureStepStartTime": "083000", "Modality": "CT",
                   "ScheduledPerformingPhysicianName": "Tech^Tom",
                   "ScheduledProcedureStepDescription": "Chest w/o contrast", "ScheduledStationName": "CTROOM",
                   "ScheduledProcedureStepID": "SPS1", "ScheduledProcedureStepStatus": "SCHEDULED"}
    assert set(sps[0].dir()) == set(step)  # only the requested keys


def test_zero_length_sequence_returns_the_whole_step(loaded: ThreadedServer) -> None:
    responses = mwl_find(loaded, {"AccessionNumber": "A2", "ScheduledProcedureStepSequence": Sequence()})
    step = responses[0][1].ScheduledProcedureStepSequence[0]
    assert (step.ScheduledStationAETitle, step.Modality, step.ScheduledProcedureStepStartTime) == ("CT1", "CT", "140000")


@pytest.mark.parametrize("keys, reason", [
    ({"ScheduledProcedureStepSequence": Sequence([Dataset(), Dataset()])}, "one item"),
    ({"PatientBirthDate": "1970-02"}, "dates are YYYYMMDD"),
    ({"StudyInstanceUID": "1.2.abc"}, "not a UID"),
])
def test_invalid_identifier_is_a900(loaded: ThreadedServer, keys: dict[str, Any], reason: str) -> None:
    responses = mwl_find(loaded, keys)
    assert len(responses) == 1
    status, _ = responses[0]
    assert status == 0xA900


def test_invalid_identifier_error_comment(loaded: ThreadedServer) -> None:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MWLFind)
    assoc = ae.associate("127.0.0.1", loaded.dimse_port)
    identifier = Dataset()
    identifier.PatientBirthDate = "1970-02"
    status, _ = next(iter(assoc.send_c_find(identifier, MWLFind)))
    assoc.release()
    assert status.Status == 0xA900
    assert "dates are YYYYMMDD" in str(status.ErrorComment)


def test_denied_by_ae_policy(loaded: ThreadedServer) -> None:
    aes.add_ae(loaded.archive.db, "CT9", "127.0.0.1", 104, denied=["mwl"])
    responses = mwl_find(loaded, {"AccessionNumber": ""}, calling="CT9")
    assert [s for s, _ in responses] == [0x0124]
    aes.add_ae(loaded.archive.db, "CT8", "127.0.0.1", 104, denied=["find", "store"])  # MWL is its own permission
    assert mwl_find(loaded, {"AccessionNumber": ""}, calling="CT8")[-1][0] == 0x0000


def test_cancel_stops_pending_responses(server: ThreadedServer) -> None:
    """A C-CANCEL-RQ sent with the request is honoured before the next pending response
    (raw client, as in test_find: pynetdicom would cancel too late)."""
    db = server.archive.db
    for i in range(150):
        items.create_item(db, items.parse_item({"patient_id": f"P{i}", "modality": "CT",
                                                "scheduled_start": "2026-12-04T08:00:00"}))
    client = StoreAssociation("CT1", "PACS", [(str(MWLFind), [ExplicitVRLittleEndian])],
                              max_pdu=1 << 20, connect_timeout=10, dimse_timeout=30, implementation_uid="1.2.3.4")
    client.connect("127.0.0.1", server.dimse_port)
    identifier = struct.pack("<HH2sH", 0x0010, 0x0020, b"LO", 0)  # PatientID, universal
    find = command.encode_command({command.AFFECTED_SOP_CLASS: str(MWLFind), command.COMMAND_FIELD: command.C_FIND_RQ,
                                   command.MESSAGE_ID: 7, command.PRIORITY: 0, command.DATASET_TYPE: 0})
    cancel = command.encode_command({command.COMMAND_FIELD: command.C_CANCEL_RQ, command.MESSAGE_ID_RESPONDED: 7,
                                     command.DATASET_TYPE: command.NO_DATASET})
    cid = client.accepted[0].context_id
    client._sock.sendall(pdu.p_data_header(cid, 3, len(find)) + find + pdu.p_data_header(cid, 2, len(identifier))
                         + identifier + pdu.p_data_header(cid, 3, len(cancel)) + cancel)
    statuses: list[int] = []
    while not statuses or statuses[-1] in (0xFF00, 0xFF01):
        _, body = client._read_pdu()
        for _, flags, value in pdu.iter_pdvs(body):
            if flags == 3:
                statuses.append(command.Command.decode(value).us(command.STATUS))
    client.release()
    assert statuses[-1] == 0xFE00
    assert statuses.count(0xFF00) < 150


@needs_dcmtk("findscu")
@pytest.mark.dcmtk
def test_dcmtk_findscu_worklist(loaded: ThreadedServer, tmp_path: Path) -> None:
    proc = subprocess.run(
        [dcmtk_tool("findscu"), "-W", "-aet", "CT1", "-aec", "PACS", "-X", "-od", str(tmp_path),
         "-k", "AccessionNumber", "-k", "PatientName", "-k", "PatientID", "-k", "StudyInstanceUID",
         "-k", "RequestedProcedureID",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT1",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261204",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
         "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
         "127.0.0.1", str(loaded.dimse_port)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    answers = [dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    got = sorted((str(a.AccessionNumber), str(a.PatientName), str(a.PatientID), str(a.RequestedProcedureID),
                  str(a.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime)) for a in answers)
    assert got == [("A1", "Müller^Anna", "P1", "RP1", "083000"), ("A2", "Doe^John", "P2", "A2", "140000")]
    first = next(a for a in answers if a.AccessionNumber == "A1")
    assert first.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1"
