"""Prometheus metrics of the feature consumer (served by the gateway's /metrics when embedded,
or on ``RECSYS_FEATURES_METRICS_PORT`` by ``python -m feature_service``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "feature_events_total", "Events consumed, by outcome", ["outcome"],
)
# The children, resolved once: labels() on every batch is measurable at 20k events/s.
APPLIED = EVENTS.labels("applied")
DUPLICATES = EVENTS.labels("duplicate")
DEAD_LETTERED = EVENTS.labels("dead_lettered")
STORE_RETRIES = Counter(
    "feature_store_retries_total", "Batches rewound because the feature store was unavailable",
)
COMMIT_FAILURES = Counter(
    "feature_commit_failures_total", "Offset commits that failed (the events are re-delivered)",
)
FRESHNESS_SECONDS = Histogram(
    "feature_freshness_seconds",
    "From the producer's record timestamp to the event being visible in the feature store",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
READY = Gauge(
    "feature_consumer_ready", "1 once partitions are assigned (and, replaying, caught up)",
)
DEAD_LETTER_FAILURES = Counter(
    "feature_dead_letter_failures_total",
    "Batches rewound because their dead letters could not be written",
)
CONSECUTIVE_FAILURES = Gauge(
    "feature_consumer_consecutive_failures",
    "Failed attempts in a row at the batch in hand (rewound and retried); 0 once one succeeds. "
    "A value that keeps growing is a stuck partition. Label partition: topic[n], or all (polling)",
    ["partition"],
)
STUCK_SECONDS = Gauge(
    "feature_consumer_stuck_seconds",
    "Seconds since the first of the consecutive failed attempts (0 when the last attempt succeeded)",
)
