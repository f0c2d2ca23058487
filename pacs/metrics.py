"""Prometheus metrics of the archive (exposed at ``/metrics``)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

INSTANCES_STORED = Counter("pacs_instances_stored", "Instances stored", ["source"])
BYTES_STORED = Counter("pacs_bytes_stored", "Bytes of objects stored")
INGEST_FAILURES = Counter("pacs_ingest_failures", "Objects refused or failed", ["reason"])
INGEST_SECONDS = Histogram(
    "pacs_ingest_seconds",
    "Time from a received object to its index commit",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ASSOCIATIONS_ACTIVE = Gauge(
    "pacs_associations_active", "DIMSE associations in progress", multiprocess_mode="livesum"
)
ASSOCIATIONS_TOTAL = Counter("pacs_associations", "DIMSE associations accepted")
ASSOCIATIONS_REJECTED = Counter("pacs_associations_rejected", "DIMSE associations rejected")
RATE_LIMITED = Counter("pacs_http_rate_limited", "HTTP requests answered 429 by the per-client rate limit")


def render() -> tuple[bytes, str]:
    """The exposition text; with several worker processes, the sum over all of them
    (prometheus_client multiprocess mode, enabled by PROMETHEUS_MULTIPROC_DIR)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
