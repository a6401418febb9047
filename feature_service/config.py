"""Settings of the feature service. Environment prefix: ``RECSYS_FEATURES_``."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class FeatureServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_FEATURES_")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "user-events"
    dead_letter_topic: str = "user-events.dlq"
    group_id: str = "feature-service"
    poll_timeout_ms: int = 100
    max_poll_records: int = 500
    retry_backoff_ms: int = 500
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "recsys"
    # Recent items kept per user: at least the user tower's sequence length.
    history_items: int = 100
    # Event ids remembered for de-duplication (in-process: count; Redis: seconds).
    dedup_window_events: int = 200_000
    dedup_ttl_s: int = 7 * 24 * 3600
    snapshot_path: str | None = None
