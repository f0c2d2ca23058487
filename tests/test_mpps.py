"""MPPS SCP (PS3.4 F.7): pynetdicom N-CREATE / N-SET, the worklist item follows."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from sqlalchemy import select

from pacs import aes
from pacs.events import read_changes
from worklist import items
from worklist.models import PerformedProcedureStep

from .servers import ThreadedServer

STUDY = "1.2.826.0.1.3680043.8.498.77"
ORDER = {"patient_id": "P1", "patient_name": "Doe^John", "accession_number": "ACC7", "modality": "CT",
         "scheduled_station_ae": "CT1", "scheduled_start": "2026-12-04T08:30:00", "step_id": "SPS7",
         "study_instance_uid": STUDY}


@pytest.fixture
def scheduled(server: ThreadedServer) -> dict[str, Any]:
    return items.create_item(server.archive.db, items.parse_item(ORDER))


@pytest.fixture
def assoc(server: ThreadedServer) -> Iterator[Association]:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MPPS)
    association = ae.associate("127.0.0.1", server.dimse_port, ae_title="PACS")
    assert association.is_established
    yield association
    association.release()


def in_progress(study: str = STUDY, accession: str = "ACC7", step_id: str = "SPS7") -> Dataset:
    ds = Dataset()
    step = Dataset()
    step.StudyInstanceUID, step.AccessionNumber, step.ScheduledProcedureStepID = study, accession, step_id
    step.RequestedProcedureID = accession
    ds.ScheduledStepAttributesSequence = Sequence([step])
    ds.PatientName, ds.PatientID = "Doe^John", "P1"
    ds.PerformedProcedureStepID = "PPS7"
    ds.PerformedStationAETitle = "CT1"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261204", "083500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = Sequence()
    return ds


def completed(status: str = "COMPLETED") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = "20261204", "084500"
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77.1"
    series.PerformingPhysicianName = ""
    series.ProtocolName = "Chest"
    series.OperatorsName = ""
    series.SeriesDescription = "Axial"
    series.RetrieveAETitle = ""
    images = []
    for n in (1, 2):
        image = Dataset()
        image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        image.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.1.{n}"
        images.append(image)
    series.ReferencedImageSequence = Sequence(images)
    ds.PerformedSeriesSequence = Sequence([series])
    return ds


def item_status(server: ThreadedServer, item_id: int) -> tuple[str, str]:
    item = items.get_item(server.archive.db, item_id)
    return item["status"], item["mpps_uid"]


def stored(server: ThreadedServer, uid: str) -> Any:
    with server.archive.db.read() as conn:
        return conn.execute(select(PerformedProcedureStep.__table__)
                            .where(PerformedProcedureStep.sop_instance_uid == uid)).first()


def test_in_progress_then_completed(server: ThreadedServer, scheduled: dict[str, Any], assoc: Association) -> None:
    uid = "1.2.826.0.1.3680043.8.498.77.900"
    status, _ = assoc.send_n_create(in_progress(), MPPS, uid)
    assert status.Status == 0x0000
    assert item_status(server, scheduled["id"]) == ("IN_PROGRESS", uid)
    status, _ = assoc.send_n_set(completed(), MPPS, uid)
    assert status.Status == 0x0000
    assert item_status(server, scheduled["id"]) == ("COMPLETED", uid)
    row = stored(server, uid)
    assert (row.status, row.study_uid, row.worklist_item_fk, row.calling_ae) == ("COMPLETED", STUDY,
                                                                                  scheduled["id"], "CT1")
    body = Dataset.from_json(row.dicom_json)
    assert (body.PerformedProcedureStepEndTime, body.PerformedProcedureStepID, body.SOPInstanceUID) == (
        "084500", "PPS7", uid)
    assert len(body.PerformedSeriesSequence[0].ReferencedImageSequence) == 2
    events = [(e.type, e.study_uid, e.payload) for e in read_changes(server.archive.db, 0, 100)]
    assert events[1:] == [
        ("MppsInProgress", STUDY, {"mpps": uid, "worklist_items": [scheduled["id"]], "calling_ae": "CT1"}),
        ("MppsCompleted", STUDY, {"mpps": uid, "series": [
            {"series_uid": "1.2.826.0.1.3680043.8.498.77.1", "instances": 2}]}),
    ]
    assert "Doe" not in json.dumps([e[2] for e in events])  # no patient data in the event log


def test_change_after_completed_is_refused(server: ThreadedServer, scheduled: dict[str, Any],
                                           assoc: Association) -> None:
    uid = "1.2.826.0.1.3680043.8.498.77.901"
    assert assoc.send_n_create(in_progress(), MPPS, uid)[0].Status == 0x0000
    assert assoc.send_n_set(completed(), MPPS, uid)[0].Status == 0x0000
    change = Dataset()
    change.CommentsOnThePerformedProcedureStep = "late edit"
    status, _ = assoc.send_n_set(change, MPPS, uid)
    assert status.Status == 0x0110
    assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert status.ErrorID == 0xA710
    assert "CommentsOnThePerformedProcedureStep" not in Dataset.from_json(stored(server, uid).dicom_json)


def test_discontinued(server: ThreadedServer, scheduled: dict[str, Any], assoc: Association) -> None:
    uid = "1.2.826.0.1.3680043.8.498.77.902"
    assert assoc.send_n_create(in_progress(), MPPS, uid)[0].Status == 0x0000
    stop = Dataset()
    stop.PerformedProcedureStepStatus = "DISCONTINUED"
    assert assoc.send_n_set(stop, MPPS, uid)[0].Status == 0x0000
    assert item_status(server, scheduled["id"]) == ("DISCONTINUED", uid)
    assert [e.type for e in read_changes(server.archive.db, 0, 100)][-1] == "MppsDiscontinued"


def test_unknown_instance(server: ThreadedServer, assoc: Association) -> None:
    status, _ = assoc.send_n_set(completed(), MPPS, "1.2.826.0.1.3680043.8.498.77.999")
    assert status.Status == 0x0112


def test_duplicate_create(server: ThreadedServer, scheduled: dict[str, Any], assoc: Association) -> None:
    uid = "1.2.826.0.1.3680043.8.498.77.903"
    assert assoc.send_n_create(in_progress(), MPPS, uid)[0].Status == 0x0000
    status, _ = assoc.send_n_create(in_progress(), MPPS, uid)
    assert status.Status == 0x0111
    assert [e.type for e in read_changes(server.archive.db, 0, 100)].count("MppsInProgress") == 1


def test_generated_instance_uid_and_unscheduled_step(server: ThreadedServer, assoc: Association) -> None:
    status, _ = assoc.send_n_create(in_progress(study="1.2.3.999", accession="NONE"), MPPS)
    assert status.Status == 0x0000
    with server.archive.db.read() as conn:
        rows = conn.execute(select(PerformedProcedureStep.__table__)).all()
    assert len(rows) == 1 and rows[0].worklist_item_fk is None and rows[0].study_uid == "1.2.3.999"
    assert rows[0].sop_instance_uid.startswith("1.2.826.0.1.3680043.8.498.")


@pytest.mark.parametrize("change, code", [
    ({"PerformedProcedureStepStatus": "COMPLETED"}, 0x0106),
    ({"ScheduledStepAttributesSequence": None}, 0x0120),
    ({"PerformedProcedureStepID": None}, 0x0120),
])
def test_invalid_create(server: ThreadedServer, scheduled: dict[str, Any], assoc: Association,
                        change: dict[str, Any], code: int) -> None:
    ds = in_progress()
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    status, _ = assoc.send_n_create(ds, MPPS, "1.2.826.0.1.3680043.8.498.77.904")
    assert status.Status == code
    assert stored(server, "1.2.826.0.1.3680043.8.498.77.904") is None
    assert item_status(server, scheduled["id"]) == ("SCHEDULED", "")


def test_set_of_a_create_only_attribute(server: ThreadedServer, scheduled: dict[str, Any],
                                        assoc: Association) -> None:
    uid = "1.2.826.0.1.3680043.8.498.77.905"
    assert assoc.send_n_create(in_progress(), MPPS, uid)[0].Status == 0x0000
    change = Dataset()
    change.PatientName = "Other^Name"
    status, _ = assoc.send_n_set(change, MPPS, uid)
    assert status.Status == 0x0105
    assert status.AttributeIdentifierList == 0x00100010
    bad = Dataset()
    bad.PerformedProcedureStepStatus = "DONE"
    assert assoc.send_n_set(bad, MPPS, uid)[0].Status == 0x0106
    assert stored(server, uid).status == "IN PROGRESS"


def test_denied_by_ae_policy(server: ThreadedServer, scheduled: dict[str, Any]) -> None:
    aes.add_ae(server.archive.db, "CT1", "127.0.0.1", 104, denied=["mpps"])
    ae = AE(ae_title="CT1")
    ae.add_requested_context(MPPS)
    association = ae.associate("127.0.0.1", server.dimse_port)
    status, _ = association.send_n_create(in_progress(), MPPS, "1.2.826.0.1.3680043.8.498.77.906")
    association.release()
    assert status.Status == 0x0124
    assert item_status(server, scheduled["id"]) == ("SCHEDULED", "")
