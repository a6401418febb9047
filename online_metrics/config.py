"""Settings of the online-metrics service. Environment prefix: ``RECSYS_ONLINE_METRICS_``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OnlineMetricsSettings(BaseSettings):
    """Outcomes of served lists: the exposure log joined with the events (docs/online_metrics.md).
    State is in memory and rebuilt at start-up by replaying both topics from their beginning."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_ONLINE_METRICS_")

    host: str = "127.0.0.1"  # not 0.0.0.0 unless an operator says so
    port: int = Field(default=8090, ge=0, le=65535)  # the page, the JSON API and /metrics
    kafka_bootstrap_servers: str = "127.0.0.1:9092"  # comma-separated host:port list
    impressions_topic: str = "impressions"  # the gateway's exposure log (one record per list)
    events_topic: str = "user-events"  # the gateway's behaviour events
    poll_timeout_ms: int = Field(default=200, ge=1)  # longest wait for a batch of records
    max_poll_records: int = Field(default=2000, ge=1)  # records handled per batch
    # How often the consumer looks for topics (or partitions) that did not exist before.
    topic_check_interval_ms: int = Field(default=5000, ge=100)

    # Attribution of outcome events (click, cart, purchase) to the list their context.request_id
    # names (docs/online_metrics.md).
    attribution_window_ms: int = Field(default=30 * 60 * 1000, gt=0)
    """An outcome counts for its list when it happened within this window after the list."""
    # An event may be read before its list (two topics, read side by side): it waits this long
    # (in the lists' time) for the list to arrive before it counts as unknown_request.
    pending_grace_ms: int = Field(default=10_000, ge=0)
    ctr_k: int = Field(default=10, ge=1)  # the k of ctr_at_k: lists with a click at a position < k

    # Bounded memory: what happens past each bound is counted (docs/online_metrics.md).
    max_exposures: int = Field(default=200_000, ge=1)  # lists kept for attribution; oldest evicted
    max_pending_events: int = Field(default=10_000, ge=1)  # events waiting for their list
    # Request ids and event ids remembered to drop Kafka's redeliveries (at-least-once).
    dedup_ids: int = Field(default=500_000, ge=1)
    # Distinct (surface, model_version, arm) keys; lists of further keys are dropped (counted),
    # which bounds the Prometheus series too.
    max_keys: int = Field(default=1000, ge=1)
    bucket_s: int = Field(default=60, ge=1)  # width of a time bucket of the plotted series
    series_buckets: int = Field(default=120, ge=1)  # buckets kept per key (the newest ones)
    confidence: float = Field(default=0.95, gt=0, lt=1)  # level of the compare endpoint's interval
