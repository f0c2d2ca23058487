"""Sends the outbox (:mod:`pacs.outbox`): an asyncio task of ``pacs serve``.

Every ``outbox_poll_seconds`` (or at once after :meth:`OutboxSender.wake`) it claims the
due messages and sends each (POST, or PUT) to its target with ``Content-Type``, ``Idempotency-Key`` and
the message's own headers, plus any headers a *signer* registered for the message's
channel computes at send time (e.g. a webhook's timestamped HMAC signature).

Outcomes: a 2xx answer delivers the message. A 408, 425, 429 or 5xx answer, a timeout or
a connection error is transient: the message is retried with back-off until
``outbox_max_attempts``, then it is dead. Any other 4xx means the receiver refuses this
message as it is, so retrying cannot help: it is dead at once (redeliver it after fixing
the cause). Message bodies are never logged: they may hold patient data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp

from . import outbox
from .archive import Archive
from .audit import Record

log = logging.getLogger(__name__)

#: Channel prefix -> function of the message returning extra headers at send time.
Signer = Callable[[outbox.Message], dict[str, str]]
#: Channel prefix -> coroutine delivering a message by other means than HTTP (e.g. a DICOM
#: push), answering an HTTP-like status: 2xx delivered, transient (see :func:`transient`)
#: retried, other codes dead at once. OSError means transient too.
Transport = Callable[[outbox.Message], Awaitable[int]]
#: Channel prefix -> function of the message returning (audit action, study UID).
Describer = Callable[[outbox.Message], tuple[str, str]]
TRANSIENT = {408, 425, 429}


def transient(status: int) -> bool:
    """Whether an HTTP answer means "try again later" (RFC 9110 15.5.9, 15.6; RFC 6585)."""
    return status in TRANSIENT or status >= 500


class OutboxSender:
    """Claims and sends due messages; one per server process (several may share a database)."""

    def __init__(self, archive: Archive, signers: dict[str, Signer] | None = None,
                 transports: dict[str, Transport] | None = None, ordered: tuple[str, ...] = (),
                 audited: dict[str, Describer] | None = None) -> None:
        self.archive = archive
        self.settings = archive.settings
        self.signers = dict(signers or {})
        self.transports = dict(transports or {})
        #: Channel prefixes whose deliveries disclose patient data: each attempt goes to the
        #: audit trail (pacs/audit.py) as the describer's (action, study UID).
        self.audited = dict(audited or {})
        #: Channel prefixes delivered in order, one message at a time (outbox.claim_due).
        self.ordered = tuple(ordered)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Look for due messages now (thread-safe)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Send until cancelled."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=self.settings.outbox_timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self.send_due(session)
                except Exception:
                    log.exception("outbox: sending failed; retrying")
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
                # arrives in the tick the event is set, and server teardown then waits forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.outbox_poll_seconds):
                        await self._wake.wait()

    async def send_due(self, session: aiohttp.ClientSession) -> int:
        """Claim the due messages and send them; the number claimed."""
        lease = self.settings.outbox_timeout_seconds * 2 + 30
        claimed = await asyncio.to_thread(outbox.claim_due, self.archive.db, time.time(), lease, 20, self.ordered)
        await asyncio.gather(*(self._send(session, message) for message in claimed))
        return len(claimed)

    def _headers(self, message: outbox.Message) -> dict[str, str]:
        headers = {**message.headers, "Content-Type": message.content_type,
                   "Idempotency-Key": message.idempotency_key}
        for prefix, signer in self.signers.items():
            if message.channel.startswith(prefix):
                headers.update(signer(message))
        return headers

    async def _send(self, session: aiohttp.ClientSession, message: outbox.Message) -> None:
        transport = next((t for p, t in self.transports.items() if message.channel.startswith(p)), None)
        try:
            if transport is not None:
                status = await transport(message)
            else:
                headers = await asyncio.to_thread(self._headers, message)  # signers may read the index
                async with session.request(message.method, message.target_url, data=message.body,
                                           headers=headers) as resp:
                    await resp.read()
                    status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._audit(message, 0, type(exc).__name__)
            await self._failed(message, f"{type(exc).__name__}: {exc}"[:512] or type(exc).__name__, None, True)
            return
        self._audit(message, status, "" if 200 <= status < 300 else f"HTTP {status}")
        if 200 <= status < 300:
            await asyncio.to_thread(outbox.mark_delivered, self.archive.db, message, status)
            log.info("outbox: message %d (%s) delivered, HTTP %d", message.id, message.channel, status)
            return
        await self._failed(message, f"HTTP {status}", status, transient(status))

    def _audit(self, message: outbox.Message, status: int, failure: str) -> None:
        """One delivery attempt of an audited channel, as an audit event (never raises)."""
        describe = next((d for p, d in self.audited.items() if message.channel.startswith(p)), None)
        if describe is None:
            return
        try:
            action, study_uid = describe(message)
        except Exception:  # a body we cannot read still gets its event, without the study
            action, study_uid = "delivery", ""
        self.archive.audit.record(Record(
            door="outbox", action=action, status=status, actor=message.channel, credential="outbox",
            outcome="failure" if failure else "success", reason=failure,
            route=f"{message.method} {urlsplit(message.target_url).netloc or message.target_url}"[:128],
            study_uid=study_uid, details=f"message={message.id} attempt={message.attempts}"))

    async def _failed(self, message: outbox.Message, error: str, status: int | None, retry: bool) -> None:
        attempts = self.settings.outbox_max_attempts if retry else message.attempts
        result = await asyncio.to_thread(
            outbox.mark_failed, self.archive.db, message, error,
            max_attempts=attempts, base_delay=self.settings.outbox_retry_seconds, http_status=status)
        level = logging.WARNING if result == outbox.DEAD else logging.INFO
        log.log(level, "outbox: message %d (%s) attempt %d failed (%s): %s", message.id, message.channel,
                message.attempts, error, result or "claim lost")
