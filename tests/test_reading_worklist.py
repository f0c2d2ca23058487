"""The reading worklist (worklist/reading.py): studies enter once on StudyStable or
MppsCompleted through the event consumer, ordered by the order's priority; claims are
exclusive; filters and the REST API answer exactly; two processes apply each event once."""

from __future__ import annotations

import threading
import time
from typing import Any

import aiohttp
import pytest
from sqlalchemy import insert

from pacs.archive import Archive
from pacs.consumers import consume
from pacs.errors import Conflict, InvalidQuery, NotFound
from pacs.events import EventType, append_event
from pacs.settings import Settings
from worklist import reading
from worklist.models import WorklistItem

from .factory import make_ct, short_uid, to_bytes
from .servers import ThreadedServer


def _study(archive: Archive, *, modality: str = "CT", instances: int = 1, study: str | None = None,
           patient: str = "P1", date: str = "20260101") -> str:
    study = study or short_uid()
    for i in range(instances):
        ds = make_ct(patient_id=patient, study=study, seed=i)
        ds.Modality, ds.StudyDate = modality, date
        archive.ingest_bytes(to_bytes(ds), source="test")
    return study


def _order(archive: Archive, study: str, priority: str) -> None:
    with archive.db.write() as conn:
        conn.execute(insert(WorklistItem).values(status="SCHEDULED", priority=priority, patient_id="P1",
                                                 study_uid=study, accession_number="A1"))


def _stable_and_consume(archive: Archive) -> int:
    archive.sweep_stable(now=time.time() + 3600)
    return consume(archive.db, reading.CONSUMER)


def _uids(items: list[dict[str, Any]]) -> list[str]:
    return [i["study_uid"] for i in items]


def test_studies_enter_once_in_priority_order(archive: Archive) -> None:
    routine = _study(archive, instances=2)
    stat = _study(archive, modality="MR", patient="P2")
    _order(archive, stat, "STAT")
    assert _stable_and_consume(archive) > 0
    assert consume(archive.db, reading.CONSUMER) == 0  # caught up: nothing applied twice
    items, total = reading.list_items(archive.db, reading.Filters())
    assert total == 2 and _uids(items) == [stat, routine]
    first = items[0]
    assert (first["state"], first["priority"], first["priority_label"], first["priority_reason"]) == \
        ("unread", 1, "STAT", "order: STAT")
    assert (first["modalities"], first["num_instances"], first["entered_by"]) == (["MR"], 1, "StudyStable")
    assert (items[1]["priority_label"], items[1]["priority_reason"], items[1]["num_instances"]) == ("ROUTINE", "", 2)


def test_new_images_refresh_but_keep_state(archive: Archive) -> None:
    study = _study(archive)
    _stable_and_consume(archive)
    reading.claim(archive.db, study, "alice")
    _study(archive, study=study, instances=3)  # three more instances after it was listed
    _stable_and_consume(archive)
    item = reading.get_item(archive.db, study)
    assert (item["state"], item["assigned_to"], item["num_instances"]) == ("claimed", "alice", 4)


def test_mpps_completed_enters_before_stability(archive: Archive) -> None:
    study = _study(archive)
    with archive.db.write() as conn:
        append_event(conn, EventType.MPPS_COMPLETED, study_uid=study)
    consume(archive.db, reading.CONSUMER)
    assert reading.get_item(archive.db, study)["entered_by"] == "MppsCompleted"


def test_claim_is_exclusive(archive: Archive) -> None:
    study = _study(archive)
    _stable_and_consume(archive)
    winners: list[str] = []
    losers: list[str] = []

    def try_claim(name: str) -> None:
        try:
            reading.claim(archive.db, study, name)
            winners.append(name)
        except Conflict:
            losers.append(name)

    threads = [threading.Thread(target=try_claim, args=(f"r{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(winners) == 1 and len(losers) == 7
    assert reading.claim(archive.db, study, winners[0])["assigned_to"] == winners[0]  # idempotent for the holder
    with pytest.raises(Conflict, match=f"claimed by {winners[0]}"):
        reading.release(archive.db, study, losers[0])
    assert reading.release(archive.db, study, winners[0])["state"] == "unread"
    assert reading.claim(archive.db, study, losers[0])["assigned_to"] == losers[0]


def test_filters(archive: Archive) -> None:
    ct = _study(archive, modality="CT", date="20260105")
    mr = _study(archive, modality="MR", date="20260210")
    _order(archive, mr, "HIGH")
    _stable_and_consume(archive)
    reading.claim(archive.db, ct, "alice")

    def uids(**kw: Any) -> list[str]:
        return _uids(reading.list_items(archive.db, reading.Filters(**kw))[0])

    assert uids(modality="MR") == [mr] and uids(modality="ct") == [ct] and uids(modality="C") == []
    assert uids(state="claimed") == [ct] and uids(assigned_to="alice") == [ct]
    assert uids(priority=2) == [mr]
    assert uids(date_from="20260201") == [mr] and uids(date_to="20260131") == [ct]
    assert uids(limit=1) == [mr] and uids(limit=1, offset=1) == [ct]
    for bad in ({"state": "read"}, {"priority": 7}, {"date_from": "2026-01-01"}, {"limit": 0}):
        with pytest.raises(InvalidQuery):
            reading.Filters(**bad)
    with pytest.raises(NotFound):
        reading.get_item(archive.db, "1.2.3.4")


def test_two_processes_apply_each_event_once(archive: Archive, settings: Settings) -> None:
    for _ in range(20):
        _study(archive)
    archive.sweep_stable(now=time.time() + 3600)
    other = Archive(settings, migrate=False)
    errors: list[BaseException] = []

    def run(arc: Archive) -> None:
        try:
            while consume(arc.db, reading.CONSUMER, batch=3):
                pass
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in (archive, other, archive, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    other.close()
    while consume(archive.db, reading.CONSUMER):  # whatever a lost compare-and-set left
        pass
    assert not errors
    assert reading.list_items(archive.db, reading.Filters())[1] == 20


def test_raise_priority_only_up(archive: Archive) -> None:
    study = _study(archive)
    _stable_and_consume(archive)
    with archive.db.write() as conn:
        assert reading.raise_priority(conn, study, 1, "AI: chest-xray-triage 1.2: pneumothorax")
        assert not reading.raise_priority(conn, study, 2, "lower")
        assert not reading.raise_priority(conn, "1.2.3.999", 1, "not held")
    item = reading.get_item(archive.db, study)
    assert (item["priority_label"], item["priority_reason"]) == ("STAT", "AI: chest-xray-triage 1.2: pneumothorax")


def test_critical_finding_lists_a_study_before_it_is_stable(archive: Archive) -> None:
    study = _study(archive, modality="CR")
    with archive.db.write() as conn:
        assert reading.raise_priority(conn, study, 1, "AI: cxr 3: pneumothorax")
    item = reading.get_item(archive.db, study)
    assert (item["state"], item["priority_label"], item["entered_by"], item["modalities"]) == \
        ("unread", "STAT", "priority", ["CR"])
    _stable_and_consume(archive)  # stability later refreshes it and keeps the priority
    assert reading.get_item(archive.db, study)["priority_reason"] == "AI: cxr 3: pneumothorax"


async def test_rest_api(server: ThreadedServer) -> None:
    archive = server.archive
    assert archive is not None
    study = _study(archive)
    archive.sweep_stable(now=time.time() + 3600)
    url = f"{server.base_url}/api/reading-worklist"
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 20
        while True:  # the server's consumer loop picks the event up
            async with session.get(url) as resp:
                assert resp.status == 200
                body = await resp.json()
            if body["total"] or time.monotonic() > deadline:
                break
            await __import__("asyncio").sleep(0.05)
        assert body["total"] == 1 and _uids(body["items"]) == [study]
        async with session.post(f"{url}/{study}/claim", json={"radiologist": "alice"}) as resp:
            assert resp.status == 200 and (await resp.json())["assigned_to"] == "alice"
        async with session.post(f"{url}/{study}/claim", json={"radiologist": "bob"}) as resp:
            assert resp.status == 409 and "alice" in (await resp.json())["error"]
        async with session.post(f"{url}/{study}/claim", data=b"nope") as resp:
            assert resp.status == 400
        async with session.get(f"{url}?state=claimed&assigned_to=alice") as resp:
            assert _uids((await resp.json())["items"]) == [study]
        async with session.get(f"{url}?colour=red") as resp:
            assert resp.status == 400 and "colour" in (await resp.json())["error"]
        async with session.get(f"{url}?limit=-1") as resp:
            assert resp.status == 400
        async with session.get(f"{url}/1.2.3") as resp:
            assert resp.status == 404
        async with session.post(f"{url}/{study}/release", json={"radiologist": "alice"}) as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "unread"
