"""Settings of the feature service. Environment prefix: ``RECSYS_FEATURES_``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.events import MAX_EVENT_BYTES, MAX_FUTURE_SKEW_MS
from features.user_state import FeatureRules


class FeatureServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_FEATURES_")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "user-events"
    dead_letter_topic: str | None = None  # default: "<events_topic>.dlq"
    # Used when this service creates the topics (create_topics); existing topics are kept as they are.
    topic_partitions: int = Field(default=6, ge=1)
    create_topics: bool = True
    group_id: str = "feature-service"
    # How long a silent (crashed) member keeps its partitions before the group rebalances.
    session_timeout_ms: int = 10_000
    poll_timeout_ms: int = 100
    max_poll_records: int = 500
    retry_backoff_ms: int = 500
    kafka_timeout_ms: int = 10_000
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "recsys"
    # Recent events kept per user: at least the user tower's sequence length.
    history_items: int = Field(default=100, ge=1)
    affinity_half_life_ms: int = Field(default=24 * 3600 * 1000, gt=0)
    trending_half_life_ms: int = Field(default=3600 * 1000, gt=0)
    # Event ids remembered for de-duplication (in-process: a count; Redis: seconds).
    dedup_window_events: int = 200_000
    dedup_ttl_s: int = 7 * 24 * 3600
    # Messages beyond these go to the dead-letter topic.
    max_event_bytes: int = MAX_EVENT_BYTES
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS
    # A catalog.json (as in model_repository/retrieve/<v>/): item categories for affinities.
    catalog_path: str | None = None
    snapshot_path: str | None = None
    # Prometheus endpoint of `python -m feature_service` (embedded, the gateway's /metrics has it).
    metrics_port: int = 0  # 0: none
    metrics_host: str = "127.0.0.1"

    @property
    def dlq_topic(self) -> str:
        return self.dead_letter_topic or f"{self.events_topic}.dlq"

    def rules(self) -> FeatureRules:
        return FeatureRules(history_items=self.history_items,
                            affinity_half_life_ms=self.affinity_half_life_ms,
                            trending_half_life_ms=self.trending_half_life_ms)
