"""AI engine hooks (ai_hooks/) against a real server: subscriptions, signed webhook
notifications from the event log with retries in order, study-scoped tokens, DICOM push
to dcmtk storescp, the delivery log, and two servers on one database delivering once."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from ai_hooks import tokens
from pacs import aes
from pacs.settings import Settings
from sample_data import generate_ct_series

from .ai_support import Receiver, until
from .servers import ThreadedServer
from .dcmtk import needs_dcmtk
from .retrieve_peers import DcmtkStoreSCP, to_bytes
from .servers import free_port

SECRET = "s3cret-for-the-test-engine-0123456789"


@pytest.fixture
def ai_settings(settings: Settings) -> Settings:
    return replace(settings, http_port=free_port(), stable_seconds=0.3, stability_check_interval=0.05,
                   outbox_retry_seconds=0.05, outbox_poll_seconds=0.05, outbox_max_attempts=4,
                   outbox_timeout_seconds=5)


@pytest.fixture
def ai_server(ai_settings: Settings) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(ai_settings).start()
    yield srv
    srv.stop()


def ingest_ct(server: ThreadedServer, seed: int, count: int = 2, size: int = 64) -> str:
    """Store a small CT series; its Study Instance UID."""
    study = ""
    for ds in generate_ct_series(count, seed=seed, rows=size, columns=size):
        server.archive.ingest_bytes(to_bytes(ds), source="test", calling_ae="CT1")
        study = str(ds.StudyInstanceUID)
    return study


async def api(session: aiohttp.ClientSession, method: str, url: str, body: Any = None,
              status: int = 200) -> Any:
    async with session.request(method, url, json=body) as resp:
        text = await resp.text()
        assert resp.status == status, text
        return json.loads(text) if text else None


def webhook(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "trigger": "study_stable", "filter": {"modalities": ["CT"]},
            "delivery": {"type": "webhook", "url": url, "secret": SECRET}, **extra}


async def test_subscription_crud_and_validation(ai_server: ThreadedServer) -> None:
    base = ai_server.base_url + "/api/ai/subscriptions"
    async with aiohttp.ClientSession() as s:
        created = await api(s, "POST", base, {"name": "triage", "delivery": {"type": "webhook",
                                                                              "url": "http://x/hook"}}, 201)
        assert created["trigger"] == "study_stable" and created["filter"] == {}
        assert len(created["delivery"]["secret"]) >= 16  # generated, shown once
        sid = created["id"]
        shown = await api(s, "GET", f"{base}/{sid}")
        assert "secret" not in shown["delivery"] and shown["channel"] == f"ai:{sid}"
        await api(s, "POST", base, {"name": "triage", "delivery": {"type": "webhook", "url": "http://y"}}, 409)
        for bad in ({"name": "b", "trigger": "soon", "delivery": {"type": "webhook", "url": "http://x"}},
                    {"name": "b", "delivery": {"type": "webhook", "url": "ftp://x"}},
                    {"name": "b", "delivery": {"type": "dicom_push", "ae_title": "NOBODY"}},
                    {"name": "b", "filter": {"modalities": "CT"}, "delivery": {"type": "webhook", "url": "http://x"}},
                    {"name": "", "delivery": {"type": "webhook", "url": "http://x"}}):
            answer = await api(s, "POST", base, bad, 400)
            assert answer["error"]
        changed = await api(s, "PUT", f"{base}/{sid}", {
            "name": "triage", "trigger": "series_stable", "filter": {"modalities": ["cr"],
                                                                     "study_description": "*chest*"},
            "delivery": {"type": "webhook", "url": "http://x/other"}})
        assert changed["trigger"] == "series_stable" and changed["filter"]["modalities"] == ["CR"]
        assert changed["delivery"] == {"type": "webhook", "url": "http://x/other"}
        assert [x["id"] for x in (await api(s, "GET", base))["subscriptions"]] == [sid]
        await api(s, "DELETE", f"{base}/{sid}", status=204)
        await api(s, "GET", f"{base}/{sid}", status=404)
        await api(s, "GET", f"{base}/abc", status=400)


async def test_webhook_signed_retried_in_order_and_token_scoped(ai_server: ThreadedServer) -> None:
    receiver = await Receiver(SECRET, script=[503, 503]).start()
    try:
        async with aiohttp.ClientSession() as s:
            sub = await api(s, "POST", ai_server.base_url + "/api/ai/subscriptions",
                            webhook("ct-engine", receiver.url), 201)
            other = await api(s, "POST", ai_server.base_url + "/api/ai/subscriptions",
                              {**webhook("mr-only", receiver.url), "filter": {"modalities": ["MR"]}}, 201)
            first = ingest_ct(ai_server, seed=1)
            await until(lambda: receiver.received, what="first attempt")
            second = ingest_ct(ai_server, seed=2)
            await until(lambda: len(receiver.accepted()) == 2, what="two notifications delivered")
            notes = receiver.json_accepted()
            # in order, each once, after two refused attempts of the first
            assert [n["study_uid"] for n in notes] == [first, second]
            assert [r["status"] for r in receiver.received] == [503, 503, 200, 200]
            assert all(r["verified"] for r in receiver.received)
            keys = [r["headers"]["Idempotency-Key"] for r in receiver.received]
            assert keys[0] == keys[1] == keys[2] != keys[3]
            note = notes[0]
            assert note["event_type"] == "StudyStable" and note["subscription"] == {"id": sub["id"], "name": "ct-engine"}
            assert note["summary"]["modalities"] == ["CT"] and note["summary"]["instances"] == 2
            assert note["dicomweb"]["study"] == f"{ai_server.base_url}/dicom-web/studies/{first}"
            assert note["results_url"] == f"{ai_server.base_url}/api/ai/results"
            raw = receiver.accepted()[0]["body"].decode()
            ds = next(generate_ct_series(1, seed=1, rows=64, columns=64))
            assert str(ds.PatientID) not in raw and str(ds.PatientName).split("^")[0] not in raw  # patient-free
            log = await api(s, "GET", ai_server.base_url + f"/api/ai/deliveries?subscription={sub['id']}")
            assert [(d["status"], d["attempts"], d["last_status"]) for d in log["deliveries"]] == [
                ("delivered", 3, 200), ("delivered", 1, 200)]
            assert (await api(s, "GET", ai_server.base_url + f"/api/ai/deliveries?subscription={other['id']}"))[
                "deliveries"] == []
            # every attempt is in the audit trail (door outbox), with its outcome and study
            audit = await api(s, "GET", ai_server.base_url + "/api/audit?door=outbox&action=ai-delivery")
            p1, p2 = (str(next(generate_ct_series(1, seed=n, rows=64, columns=64)).PatientID) for n in (1, 2))
            assert [(e["status"], e["outcome"], e["reason"], e["study_uid"], e["actor"], e["patient_id"])
                    for e in audit["events"]] == [
                (503, "failure", "HTTP 503", first, f"ai:{sub['id']}", p1),
                (503, "failure", "HTTP 503", first, f"ai:{sub['id']}", p1),
                (200, "success", "", first, f"ai:{sub['id']}", p1),
                (200, "success", "", second, f"ai:{sub['id']}", p2)]
            # redeliver on demand: the same message, same key
            mid = log["deliveries"][0]["id"]
            await api(s, "POST", ai_server.base_url + f"/api/ai/deliveries/{mid}/redeliver")
            await until(lambda: len(receiver.accepted()) == 3, what="redelivery")
            assert receiver.received[-1]["headers"]["Idempotency-Key"] == keys[0]
            await api(s, "POST", ai_server.base_url + "/api/ai/deliveries/999999/redeliver", status=404)
            await check_token_scope(s, ai_server, note["access_token"], first, second)
            fresh = receiver.received[-1]["headers"]["X-PACS-Access-Token"]  # minted at (re)delivery
            key = tokens.signing_key(ai_server.archive.db)
            assert tokens.verify(key, fresh).study_uid == first
            assert tokens.verify(key, fresh).expires_at >= tokens.verify(key, note["access_token"]).expires_at
    finally:
        await receiver.stop()


async def check_token_scope(s: aiohttp.ClientSession, server: ThreadedServer, token: str, own: str, other: str) -> None:
    root = server.base_url + "/dicom-web"
    auth = {"Authorization": f"Bearer {token}"}
    async with s.get(f"{root}/studies/{own}/metadata", headers=auth) as resp:
        assert resp.status == 200
        assert {item["0020000D"]["Value"][0] for item in await resp.json()} == {own}
    async with s.get(f"{root}/studies/{own}", headers={**auth, "Accept": 'multipart/related; type="application/dicom"'}) as resp:
        assert resp.status == 200 and len(await resp.read()) > 2 * 64 * 64 * 2
    async with s.get(f"{root}/studies?StudyInstanceUID={own}", headers=auth) as resp:
        assert resp.status == 200 and len(await resp.json()) == 1
    for url in (f"{root}/studies/{other}/metadata", f"{root}/studies", f"{root}/series?StudyInstanceUID={other}"):
        async with s.get(url, headers=auth) as resp:
            assert resp.status == 403, url
    async with s.delete(f"{root}/studies/{own}", headers=auth) as resp:
        assert resp.status == 403
    # STOW-RS into its own study (an identical re-send succeeds), not into another
    stow_body, stow_type = stow(to_bytes(next(generate_ct_series(1, seed=1, rows=64, columns=64))))
    for target, expected in ((own, 200), (other, 403)):
        async with s.post(f"{root}/studies/{target}", data=stow_body,
                          headers={**auth, "Content-Type": stow_type, "Accept": "application/dicom+json"}) as resp:
            assert resp.status == expected, await resp.text()
    async with s.post(f"{root}/studies", data=stow_body, headers={**auth, "Content-Type": stow_type}) as resp:
        assert resp.status == 403
    key = tokens.signing_key(server.archive.db)
    expired, _ = tokens.issue(key, own, 1, ttl=-10)
    forged, _ = tokens.issue(b"another key" * 3, own, 1, ttl=100)
    for bad in (expired, forged, "garbage", token[:-2] + "AA"):
        async with s.get(f"{root}/studies/{own}/metadata", headers={"Authorization": f"Bearer {bad}"}) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="pacs", error="invalid_token"')
    async with s.get(f"{root}/studies/{other}/metadata") as resp:  # no token: no authentication yet
        assert resp.status == 200


def stow(data: bytes) -> tuple[bytes, str]:
    """A STOW-RS request body of one instance (PS3.18 10.5.1.2) and its Content-Type."""
    boundary = "ai-test-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


async def test_results_of_own_study_do_not_notify_again(ai_server: ThreadedServer) -> None:
    receiver = await Receiver(SECRET).start()
    try:
        async with aiohttp.ClientSession() as s:
            await api(s, "POST", ai_server.base_url + "/api/ai/subscriptions", webhook("e", receiver.url), 201)
            study = ingest_ct(ai_server, seed=3)
            await until(lambda: receiver.accepted(), what="notification")
            body = {"study_uid": study, "model": {"name": "m", "version": "1"},
                    "findings": [{"code": {"system": "http://snomed.info/sct", "code": "38266002",
                                           "display": "Entire body"}}]}
            await api(s, "POST", ai_server.base_url + "/api/ai/results", body, 201)
            # the SR makes the study stable again: the event comes, no new notification
            await until(lambda: stable_events(ai_server, study) == 2, what="second StudyStable")
            await until(lambda: consumed(ai_server), what="consumer caught up")
            assert len(receiver.received) == 1
            more = ingest_ct(ai_server, seed=3, count=3)  # a new image in the same study: notified
            assert more == study
            await until(lambda: len(receiver.accepted()) == 2, what="notification of new images")
    finally:
        await receiver.stop()


def stable_events(server: ThreadedServer, study: str) -> int:
    return sum(1 for e in server.archive.changes(0, 1000) if e.type == "StudyStable" and e.study_uid == study)


def consumed(server: ThreadedServer) -> bool:
    from sqlalchemy import select

    from pacs.index.models import EventCursor

    last = server.archive.changes(0, 1000)[-1].id
    with server.archive.db.read() as conn:
        at = conn.execute(select(EventCursor.last_id).where(EventCursor.name == "ai-notifications")).scalar()
    return at == last


@needs_dcmtk("storescp")
@pytest.mark.dcmtk
async def test_dicom_push_to_storescp(ai_server: ThreadedServer, tmp_path: Path) -> None:
    scp = DcmtkStoreSCP(tmp_path / "received", ae_title="AI_SCP").wait_ready()
    try:
        aes.add_ae(ai_server.archive.db, "AI_SCP", "127.0.0.1", scp.port)
        aes.add_ae(ai_server.archive.db, "AI_DOWN", "127.0.0.1", free_port())  # nobody listens
        async with aiohttp.ClientSession() as s:
            push = await api(s, "POST", ai_server.base_url + "/api/ai/subscriptions", {
                "name": "push", "filter": {"calling_aes": ["CT1"]},
                "delivery": {"type": "dicom_push", "ae_title": "AI_SCP"}}, 201)
            down = await api(s, "POST", ai_server.base_url + "/api/ai/subscriptions", {
                "name": "down", "delivery": {"type": "dicom_push", "ae_title": "AI_DOWN"}}, 201)
            datasets = list(generate_ct_series(3, seed=4, rows=64, columns=64))
            for ds in datasets:
                ai_server.archive.ingest_bytes(to_bytes(ds), source="test", calling_ae="CT1")
            await until(lambda: len(list(scp.out_dir.iterdir())) == 3, what="3 objects at storescp")

            async def settled() -> list[dict[str, Any]]:
                found = (await api(s, "GET", ai_server.base_url + "/api/ai/deliveries"))["deliveries"]
                return found if found and all(d["status"] != "pending" for d in found) else []

            found = {d["channel"]: d for d in await until(settled, what="push deliveries settled")}
            assert found[push["channel"]]["status"] == "delivered"
            assert (found[down["channel"]]["status"], found[down["channel"]]["attempts"]) == ("dead", 4)
        assert set(scp.files()) == {str(ds.SOPInstanceUID) for ds in datasets}
    finally:
        scp.stop()


async def test_two_servers_on_one_database_deliver_once(ai_settings: Settings) -> None:
    receiver = await Receiver(SECRET).start()
    one = ThreadedServer(ai_settings).start()
    two = ThreadedServer(replace(ai_settings, http_port=free_port())).start()
    try:
        async with aiohttp.ClientSession() as s:
            await api(s, "POST", one.base_url + "/api/ai/subscriptions", webhook("e", receiver.url), 201)
        studies = [ingest_ct(one if i % 2 else two, seed=10 + i, count=1) for i in range(4)]

        def all_delivered() -> bool:
            from pacs import outbox

            messages = outbox.list_messages(one.archive.db, channel="ai:1")
            return len(messages) == 4 and all(m["status"] == "delivered" for m in messages)

        await until(all_delivered, what="four notifications delivered")
        assert sorted(n["study_uid"] for n in receiver.json_accepted()) == sorted(studies)
        assert len(receiver.received) == 4  # each once, by one of the two servers
    finally:
        two.stop()
        one.stop()
        await receiver.stop()


def test_series_and_mpps_triggers_enqueue_once(archive: Any) -> None:
    """The consumer, without a server: series_stable and mpps_completed subscriptions get
    one message per event, matching filters only; consuming again adds nothing."""
    from ai_hooks import notify, subscriptions
    from pacs import outbox
    from pacs.consumers import consume_all
    from pacs.events import EventType, append_event

    series_sub = subscriptions.create(archive.db, {**webhook("series", "http://127.0.0.1:9/h"),
                                                   "trigger": "series_stable",
                                                   "filter": {"study_description": "ct chest*"}})
    mpps_sub = subscriptions.create(archive.db, {**webhook("mpps", "http://127.0.0.1:9/h"),
                                                 "trigger": "mpps_completed", "filter": {}})
    subscriptions.create(archive.db, {**webhook("none", "http://127.0.0.1:9/h"), "trigger": "series_stable",
                                      "filter": {"body_parts": ["KNEE"]}})
    datasets = list(generate_ct_series(2, seed=30, rows=32, columns=32))
    for ds in datasets:
        archive.ingest_bytes(to_bytes(ds), source="test")
    study = str(datasets[0].StudyInstanceUID)
    archive.sweep_stable(now=10**10)
    with archive.db.write() as conn:
        append_event(conn, EventType.MPPS_COMPLETED, study_uid=study, payload={"mpps": "1.2.3.4"})
    consumer = notify.consumer(archive.db, archive.settings)
    consume_all(archive.db, [consumer])
    consume_all(archive.db, [consumer])
    messages = outbox.list_messages(archive.db)
    assert [m["channel"] for m in messages] == [series_sub["channel"], mpps_sub["channel"]]
    assert messages[0]["idempotency_key"] == f"ai:{series_sub['id']}:series:{datasets[0].SeriesInstanceUID}:2"
    assert messages[1]["idempotency_key"] == f"ai:{mpps_sub['id']}:mpps:1.2.3.4"
