"""Reading side of ``bench/load.py``: asyncio + aiohttp clients browsing like OHIF.

Each client loops over one viewer "session" (no think time by default; with ``think`` s,
a pause of 0.5-1.5 x ``think`` between sessions, none between a session's requests, which
OHIF sends back to back):

1. QIDO study list ``/studies?limit=101&offset=<o>&fuzzymatching=false&includefield=...``
   (OHIF's first page; half the time at a random offset among the studies stored so far,
   so studies being written are read too);
2. ``/studies/{s}/series`` (QIDO) of one listed study;
3. ``/studies/{s}/series/{se}/metadata`` of one of its series;
4. ``/studies/{s}/series/{se}/instances`` (QIDO);
5. ``.../instances/{i}/frames/1`` of up to ``FRAMES_PER_SESSION`` instances, one WADO-RS
   instance retrieve (as stored) and the series thumbnail (JPEG).

Every request's latency (body read whole) and outcome is recorded; an error is any status
other than 200/204, an exception or a timeout, or an empty answer where the previous step
guarantees matches (a listed study without series, a listed series without instances).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

DICOM_JSON = "application/dicom+json"
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
JPEG = "image/jpeg"
INCLUDE = "includefield=00081030%2C00080060"
FRAMES_PER_SESSION = 3
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120)
MAX_ERRORS_KEPT = 50
UID_STUDY, UID_SERIES, UID_SOP = "0020000D", "0020000E", "00080018"


@dataclass
class HttpResult:
    """Per request kind: start times (s since start) and latencies (ms); errors."""

    times: dict[str, list[float]] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    sessions: int = 0

    def record(self, kind: str, started: float, ms: float) -> None:
        """One successful request."""
        self.times.setdefault(kind, []).append(started)
        self.latencies_ms.setdefault(kind, []).append(ms)

    def error(self, kind: str, text: str) -> None:
        """One failed request (or broken expectation)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_samples) < MAX_ERRORS_KEPT:
            self.error_samples.append(f"{time.strftime('%H:%M:%S')} {kind}: {text}")


class RequestFailed(Exception):
    """A request that failed (already recorded); ends the current session."""


@dataclass
class Reader:
    """One simulated viewer user."""

    session: aiohttp.ClientSession
    base: str
    result: HttpResult
    rng: random.Random
    t0: float
    studies_counter: Any
    think: float = 0.0

    async def get(self, kind: str, path: str, accept: str) -> bytes:
        """GET ``path``, read the body whole, record latency or error."""
        started = time.monotonic()
        try:
            async with self.session.get(self.base + path, headers={"Accept": accept}) as resp:
                body = await resp.read()
                status = resp.status
        except Exception as exc:  # timeouts, resets: errors
            self.result.error(kind, f"{path}: {type(exc).__name__}: {exc}")
            raise RequestFailed from exc
        key = f"{kind} {status}"
        self.result.statuses[key] = self.result.statuses.get(key, 0) + 1
        if status not in (200, 204):
            self.result.error(kind, f"{path}: HTTP {status} {body[:200]!r}")
            raise RequestFailed
        self.result.record(kind, started - self.t0, (time.monotonic() - started) * 1000)
        return body

    async def get_list(self, kind: str, path: str) -> list[dict[str, Any]]:
        """A QIDO answer parsed; must be non-empty (the caller knows matches exist)."""
        body = await self.get(kind, path, DICOM_JSON)
        items = orjson.loads(body) if body else []
        if not items:
            self.result.error(kind, f"{path}: empty answer")
            raise RequestFailed
        return items

    def pick(self, items: list[dict[str, Any]], tag: str) -> str:
        """The UID ``tag`` of a random item."""
        return self.rng.choice(items)[tag]["Value"][0]

    def study_list_path(self) -> str:
        """OHIF's first page, or (half the time) a page at a random offset."""
        offset = 0
        if self.rng.random() < 0.5:
            offset = self.rng.randrange(max(1, self.studies_counter.value - 1))
        return f"/studies?limit=101&offset={offset}&fuzzymatching=false&{INCLUDE}"

    async def session_round(self) -> None:
        """One viewer session (see the module docstring)."""
        study = self.pick(await self.get_list("qido studies", self.study_list_path()), UID_STUDY)
        series = self.pick(await self.get_list("qido series", f"/studies/{study}/series"), UID_SERIES)
        series_path = f"/studies/{study}/series/{series}"
        await self.get("series metadata", series_path + "/metadata", DICOM_JSON)
        instances = await self.get_list("qido instances", series_path + "/instances")
        sops = [item[UID_SOP]["Value"][0] for item in instances]
        for sop in self.rng.sample(sops, min(FRAMES_PER_SESSION, len(sops))):
            await self.get("frames/1", f"{series_path}/instances/{sop}/frames/1", FRAMES)
        await self.get("instance retrieve", f"{series_path}/instances/{self.rng.choice(sops)}", AS_STORED)
        await self.get("series thumbnail", series_path + "/thumbnail", JPEG)
        self.result.sessions += 1

    async def run(self, deadline: float) -> None:
        """Sessions until ``deadline``; a failed request ends its session, not the client."""
        while time.monotonic() < deadline:
            try:
                await self.session_round()
            except RequestFailed:
                await asyncio.sleep(0.05)
            if self.think:
                await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.think)


async def run_readers(port: int, clients: int, seconds: float, seed: int, studies_counter: Any,
                      t0: float, think: float) -> HttpResult:
    """``clients`` readers in this event loop for ``seconds``."""
    result = HttpResult()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        readers = [Reader(session, f"http://127.0.0.1:{port}/dicom-web", result,
                          random.Random(seed * 1000 + i), t0, studies_counter, think) for i in range(clients)]
        await asyncio.gather(*(r.run(deadline) for r in readers))
    return result


def reader_process(port: int, clients: int, seconds: float, seed: int, think: float, barrier: Any,
                   studies_counter: Any, out: Any) -> None:
    """Entry point of a reading process: wait at ``barrier``, read for ``seconds``, put the
    :class:`HttpResult` (as a dict) and the process CPU time on ``out``."""
    try:
        barrier.wait(120)
        t0 = time.monotonic()
        result = asyncio.run(run_readers(port, clients, seconds, seed, studies_counter, t0, think))
        times = os.times()
        out.put(("http", result.__dict__, times.user + times.system))
    except BaseException:
        out.put(("http-failed", traceback.format_exc(), 0.0))
        raise
