"""Helpers of the AI hooks tests: a server on a known port, a webhook receiver that
checks signatures, a FHIR receiver, polling."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any, Awaitable, Callable

from aiohttp import web




class Receiver:
    """An HTTP endpoint answering each POST with the next scripted status (then 200),
    recording what came and whether its signature verified."""

    def __init__(self, secret: str = "", script: list[int] | None = None) -> None:
        self.secret = secret
        self.script = list(script or [])
        self.received: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    def verified(self, headers: Any, body: bytes) -> bool:
        timestamp = headers.get("X-PACS-Timestamp", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 60:
            return False
        expected = hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(headers.get("X-PACS-Signature", ""), f"sha256={expected}")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.script.pop(0) if self.script else 200
        self.received.append({"body": body, "headers": dict(request.headers), "status": status,
                              "verified": self.verified(request.headers, body) if self.secret else None,
                              "path": request.path, "method": request.method})
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    def accepted(self) -> list[dict[str, Any]]:
        return [r for r in self.received if r["status"] < 300]

    def json_accepted(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.accepted()]

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def until(check: Callable[[], Awaitable[Any]] | Callable[[], Any], timeout: float = 30,
                what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)  # polling interval
    raise AssertionError(f"timed out waiting for {what}")
