"""Prometheus metrics of the services (exposed at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

INGEST_SECONDS = Histogram(
    "mosaic_ingest_seconds", "Time to store one instance (parse, blob write, index commit).",
    ["door"], buckets=_LATENCY_BUCKETS,
)
INGEST_TOTAL = Counter(
    "mosaic_ingest_total", "Instances offered for storage, by door and outcome.", ["door", "outcome"],
)
INGEST_BYTES = Counter("mosaic_ingest_bytes_total", "Bytes of newly stored instances.", ["door"])
QUERY_SECONDS = Histogram(
    "mosaic_query_seconds", "Time to answer one query (C-FIND, QIDO-RS).", ["door", "level"],
    buckets=_LATENCY_BUCKETS,
)
RETRIEVE_TOTAL = Counter("mosaic_retrieve_instances_total", "Instances sent out, by door.", ["door"])
