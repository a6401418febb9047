"""Settings of the feature service. Environment prefix: ``RECSYS_FEATURES_``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.events import MAX_EVENT_BYTES, MAX_FUTURE_SKEW_MS
from features.user_state import FeatureRules


class FeatureServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_FEATURES_")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"  # comma-separated host:port list
    events_topic: str = "user-events"  # consumed; the gateway produces to it
    dead_letter_topic: str | None = None  # default: "<events_topic>.dlq"
    # Used when this service creates the topics (create_topics); existing topics are kept as they are.
    topic_partitions: int = Field(default=6, ge=1)
    create_topics: bool = True  # create missing topics at start-up
    group_id: str = "feature-service"  # Kafka consumer group: partitions are shared among its members
    # How long a silent (crashed) member keeps its partitions before the group rebalances.
    session_timeout_ms: int = 10_000
    poll_timeout_ms: int = 100  # longest wait for a batch of events
    max_poll_records: int = 500  # events applied to the store per batch
    # First wait before re-reading a batch that failed (store refused it, dead letters not sent);
    # doubled on each consecutive failure (with jitter) up to RETRY_BACKOFF_MAX_MS.
    retry_backoff_ms: int = Field(default=500, ge=0)
    retry_backoff_max_ms: int = Field(default=30_000, ge=0)  # longest wait between retries of a batch
    # Consecutive failed attempts after which the consumer reports not ready (stuck partition).
    unready_after_failures: int = Field(default=5, ge=1)
    kafka_timeout_ms: int = 10_000  # broker requests (commit, dead letters)
    store: Literal["memory", "redis"] = "memory"  # redis: shared with the gateways
    redis_url: str = "redis://127.0.0.1:6379/0"  # used when store=redis
    redis_key_prefix: str = "recsys"  # namespace of every Redis key
    # Recent events kept per user: at least the user tower's sequence length.
    history_items: int = Field(default=100, ge=1)
    affinity_half_life_ms: int = Field(default=24 * 3600 * 1000, gt=0)  # category affinities
    trending_half_life_ms: int = Field(default=3600 * 1000, gt=0)  # trending items
    # Bounded state (docs/features.md, "Memory"): the most recently touched items kept per user as
    # seen (the exclusions sent with each request) and as bought.
    seen_items: int = Field(default=500, ge=1)
    bought_items: int = Field(default=500, ge=1)
    # A client's retry is recognised by event_id among the user's last N events. (Kafka
    # redeliveries are recognised by offset, however old.)
    dedup_events_per_user: int = Field(default=128, ge=1)
    # A user's state expires this long after their last event.
    user_ttl_s: int = Field(default=30 * 24 * 3600, ge=1)
    trending_items: int = Field(default=100_000, ge=1)  # trending scores kept (the best ones)
    max_event_bytes: int = MAX_EVENT_BYTES  # larger messages go to the dead-letter topic
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS  # events further ahead of the clock: dead-letter topic
    # Dead-letter records keep at most this many bytes of the message (and its size and SHA-256), so a
    # record always fits the producer's 1 MiB message limit (escaped, the prefix grows at most 6x).
    dead_letter_payload_max_bytes: int = Field(default=64 * 1024, ge=0, le=128 * 1024)
    # A catalog.json (as in model_repository/retrieve/<v>/): item categories for affinities.
    catalog_path: str | None = None
    # A batch snapshot of user histories (JSON, features.user_state.snapshot_events) to seed the store with.
    snapshot_path: str | None = None
    # Prometheus endpoint of `python -m feature_service` (embedded, the gateway's /metrics has it).
    metrics_port: int = 0  # 0: none
    metrics_host: str = "127.0.0.1"  # interface of the Prometheus endpoint

    @property
    def dlq_topic(self) -> str:
        return self.dead_letter_topic or f"{self.events_topic}.dlq"

    def rules(self) -> FeatureRules:
        return FeatureRules(history_items=self.history_items,
                            affinity_half_life_ms=self.affinity_half_life_ms,
                            trending_half_life_ms=self.trending_half_life_ms,
                            seen_items=self.seen_items, bought_items=self.bought_items,
                            dedup_events_per_user=self.dedup_events_per_user,
                            user_ttl_s=self.user_ttl_s, trending_items=self.trending_items)
