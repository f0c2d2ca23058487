"""The delivery outbox (pacs/outbox.py, pacs/outbox_worker.py): messages enqueued in a
transaction reach a real HTTP receiver at least once, transient failures are retried with
back-off, refusals and exhausted attempts end dead, dead messages are redelivered on
demand, and two senders on one database deliver each message once."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Iterator

import aiohttp
import pytest
from aiohttp import web

from pacs import outbox
from pacs.archive import Archive
from pacs.outbox_worker import OutboxSender
from pacs.settings import Settings

from .servers import ThreadedServer


class Receiver:
    """An HTTP endpoint that answers each POST with the next scripted status (then 200)."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.received: list[tuple[bytes, dict[str, str], int]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.script.pop(0) if self.script else 200
        self.received.append((body, dict(request.headers), status))
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/fhir/{type}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/fhir/DiagnosticReport"
        return self

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def _enqueue(archive: Archive, url: str, key: str, body: bytes = b'{"resourceType":"DiagnosticReport"}') -> int | None:
    with archive.db.write() as conn:
        return outbox.enqueue(conn, channel="fhir", target_url=url, body=body,
                              content_type="application/fhir+json", idempotency_key=key,
                              headers={"X-Test": "1"})


def _status(archive: Archive, message_id: int) -> dict:
    [row] = [m for m in outbox.list_messages(archive.db, since=message_id - 1, limit=1)]
    return row


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, outbox_retry_seconds=0.01, outbox_poll_seconds=0.02, outbox_max_attempts=3,
                   outbox_timeout_seconds=5)


@pytest.fixture
def fast_archive(fast_settings: Settings) -> Iterator[Archive]:
    arc = Archive(fast_settings)
    yield arc
    arc.close()


async def _drain(sender: OutboxSender, archive: Archive, ids: list[int], timeout: float = 20) -> None:
    """Send until every message in ``ids`` is delivered or dead (polled, bounded)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            await sender.send_due(session)
            states = [_status(archive, i)["status"] for i in ids]
            if all(s != outbox.PENDING for s in states):
                return
            await asyncio.sleep(0.01)  # the retry back-off (10 ms base) must pass
    raise AssertionError(f"not settled: {[_status(archive, i) for i in ids]}")


async def test_delivered_with_headers_and_body(fast_archive: Archive) -> None:
    receiver = await Receiver().start()
    try:
        mid = _enqueue(fast_archive, receiver.url, "report-1")
        assert mid is not None
        await _drain(OutboxSender(fast_archive), fast_archive, [mid])
    finally:
        await receiver.stop()
    [(body, headers, _)] = receiver.received
    assert body == b'{"resourceType":"DiagnosticReport"}'
    assert headers["Content-Type"] == "application/fhir+json"
    assert headers["Idempotency-Key"] == "report-1" and headers["X-Test"] == "1"
    row = _status(fast_archive, mid)
    assert (row["status"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)


async def test_same_key_enqueued_once(fast_archive: Archive) -> None:
    first = _enqueue(fast_archive, "http://127.0.0.1:9/x", "same")
    assert first is not None and _enqueue(fast_archive, "http://127.0.0.1:9/x", "same") is None
    assert len(outbox.list_messages(fast_archive.db)) == 1


async def test_transient_failures_retried_then_delivered(fast_archive: Archive) -> None:
    receiver = await Receiver([503, 429]).start()
    try:
        mid = _enqueue(fast_archive, receiver.url, "retry-me")
        await _drain(OutboxSender(fast_archive), fast_archive, [mid])
    finally:
        await receiver.stop()
    assert len(receiver.received) == 3
    row = _status(fast_archive, mid)
    assert (row["status"], row["attempts"]) == ("delivered", 3)


async def test_unreachable_receiver_goes_dead_then_redelivered(fast_archive: Archive) -> None:
    receiver = await Receiver().start()
    url = receiver.url
    await receiver.stop()  # nobody listens on that port now
    mid = _enqueue(fast_archive, url, "down")
    sender = OutboxSender(fast_archive)
    await _drain(sender, fast_archive, [mid])
    row = _status(fast_archive, mid)
    assert (row["status"], row["attempts"], row["last_status"]) == ("dead", 3, None)
    assert "Connect" in row["last_error"] or "Errno" in row["last_error"] or "refused" in row["last_error"]
    # the receiver comes back on another port; an operator fixes nothing but redelivers
    receiver = await Receiver().start()
    try:
        from sqlalchemy import update

        from pacs.index.models import OutboxMessage

        with fast_archive.db.write() as conn:  # the same message, pointed at the live receiver
            conn.execute(update(OutboxMessage).where(OutboxMessage.id == mid).values(target_url=receiver.url))
        outbox.redeliver(fast_archive.db, mid)
        await _drain(sender, fast_archive, [mid])
    finally:
        await receiver.stop()
    assert _status(fast_archive, mid)["status"] == "delivered" and len(receiver.received) == 1


async def test_refusal_is_dead_at_once(fast_archive: Archive) -> None:
    receiver = await Receiver([422]).start()
    try:
        mid = _enqueue(fast_archive, receiver.url, "bad")
        await _drain(OutboxSender(fast_archive), fast_archive, [mid])
    finally:
        await receiver.stop()
    row = _status(fast_archive, mid)
    assert (row["status"], row["attempts"], row["last_status"], row["last_error"]) == ("dead", 1, 422, "HTTP 422")


async def test_two_senders_deliver_each_message_once(fast_archive: Archive, fast_settings: Settings) -> None:
    other = Archive(fast_settings, migrate=False)  # a second process's view of the same database
    receiver = await Receiver([500] * 5).start()
    try:
        ids = [_enqueue(fast_archive, receiver.url, f"m{i}", body=f"{i}".encode()) for i in range(30)]
        senders = [OutboxSender(fast_archive), OutboxSender(other)]

        async def both() -> None:
            await asyncio.gather(*(_drain(s, fast_archive, ids) for s in senders))

        await both()
    finally:
        await receiver.stop()
        other.close()
    assert all(_status(fast_archive, i)["status"] == "delivered" for i in ids)
    accepted = sorted(int(body) for body, _, status in receiver.received if status == 200)
    assert accepted == list(range(30))  # each message accepted exactly once
    assert len(receiver.received) == 35  # plus the five refused attempts, retried


def test_backoff_doubles_with_jitter_and_cap() -> None:
    rng = random.Random(1)
    for attempts, expected in ((1, 5), (2, 10), (3, 20), (20, 3600)):
        delay = outbox.backoff(attempts, 5.0, rng)
        assert expected * 0.8 <= delay <= expected * 1.2


async def test_api_lists_and_redelivers(server: ThreadedServer) -> None:
    archive = server.archive
    dead = _enqueue(archive, "http://127.0.0.1:9/x", "api-dead")
    from sqlalchemy import update

    from pacs.index.models import OutboxMessage

    with archive.db.write() as conn:
        conn.execute(update(OutboxMessage).where(OutboxMessage.id == dead).values(status="dead", attempts=15))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.base_url}/api/outbox?status=dead") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert [m["idempotency_key"] for m in body["messages"]] == ["api-dead"]
        assert "body" not in body["messages"][0]
        async with session.get(f"{server.base_url}/api/outbox?status=lost") as resp:
            assert resp.status == 400
        async with session.post(f"{server.base_url}/api/outbox/{dead}/redeliver") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "pending"
        async with session.post(f"{server.base_url}/api/outbox/{dead}/redeliver") as resp:
            assert resp.status == 409
        async with session.post(f"{server.base_url}/api/outbox/999999/redeliver") as resp:
            assert resp.status == 404


async def test_cancel_ends_the_sender_even_when_woken_in_the_same_tick(fast_archive: Archive) -> None:
    """A wake and a cancel in one event-loop tick (the consumer loop waking the sender while
    the server shuts down) must still end ``run``: Python 3.11's ``asyncio.wait_for``
    returned the woken result and dropped the cancel, which hung server teardown."""
    sender = OutboxSender(fast_archive)
    task = asyncio.create_task(sender.run())
    deadline = time.monotonic() + 10
    while not (sender._wake is not None and sender._wake._waiters):  # parked, waiting for a wake
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.005)
    sender._wake.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done == {task} and task.cancelled()
