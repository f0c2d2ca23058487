"""Per-client HTTP rate limits: one token bucket per client, checked by one middleware.

A client is its network address (``request.remote``), as in a reverse proxy's limits;
the check runs before authentication, so guessing tokens is limited as well. Behind a
proxy every client shares the proxy's address: limit at the proxy instead, or raise the
settings. Each bucket holds up to ``rate_limit_burst`` requests and refills at
``rate_limit_per_second``; a request finding it empty is answered 429 Too Many Requests
with ``Retry-After`` (RFC 6585 4, RFC 9110 10.2.3) and never reaches a handler. The
buckets live in the server process: with several worker processes each keeps its own.
``/healthz`` is never limited (load balancers and monitors poll it).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Awaitable, Callable

from aiohttp import web

from . import metrics
from .settings import Settings

#: Clients remembered at most; the least recently seen are forgotten first (a forgotten
#: client starts again with a full bucket, which only ever errs on the lenient side).
MAX_CLIENTS = 100_000
EXEMPT_PATHS = ("/healthz",)


class TokenBuckets:
    """Token buckets keyed by client; not thread-safe (used on the event loop only)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.rate, self.burst, self.clock, self.max_clients = rate, burst, clock, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0.0 when allowed, else the seconds until
        one request will be allowed again."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return 0.0 if allowed else (1.0 - tokens) / self.rate


RATE_LIMITS = web.AppKey("rate_limits", TokenBuckets)


def client_key(request: web.Request) -> str:
    """The peer address of the request."""
    return request.remote or "unknown"


@web.middleware
async def rate_limit_middleware(request: web.Request,
                                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                ) -> web.StreamResponse:
    """429 with ``Retry-After`` when the client's bucket is empty (module doc)."""
    if request.path not in EXEMPT_PATHS:
        buckets = request.app[RATE_LIMITS]
        wait = buckets.take(client_key(request))
        if wait > 0:
            metrics.RATE_LIMITED.inc()
            raise web.HTTPTooManyRequests(
                headers={"Retry-After": str(max(1, math.ceil(wait)))}, content_type="application/json",
                text='{"error": "too many requests: at most %g per second (burst %d) per client"}'
                     % (buckets.rate, buckets.burst))
    return await handler(request)


def setup_rate_limits(app: web.Application, settings: Settings) -> None:
    """Install the middleware (before authentication) when a rate is set."""
    if settings.rate_limit_per_second > 0:
        app[RATE_LIMITS] = TokenBuckets(settings.rate_limit_per_second, settings.rate_limit_burst)
        app.middlewares.append(rate_limit_middleware)
