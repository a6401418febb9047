"""Settings of the gateway. Environment prefix: ``RECSYS_GATEWAY_``."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from feature_service.config import FeatureServiceSettings


class GatewaySettings(BaseSettings):
    """The embedded consumer's other settings (half lives, dead-letter limits, partitions) are the
    feature service's own, read from ``RECSYS_FEATURES_*``."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_GATEWAY_")

    host: str = "127.0.0.1"  # not 0.0.0.0 unless an operator says so
    port: int = 8080
    triton_grpc_url: str = "127.0.0.1:8001"
    triton_timeout_ms: int = 500
    # "recommend_fused" (default: one step, measured 1.2-1.7x the ensemble's throughput, see
    # perf/README.md) or "recommend" (the ensemble); same inputs and outputs
    triton_model: str = "recommend_fused"
    model_repository: str = "model_repository"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "user-events"
    kafka_timeout_ms: int = 5000
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "recsys"
    history_items: int = 100
    # Chronological item histories to seed the store with (written by `python -m export`).
    snapshot_path: str | None = "build/user_histories.json"
    # Run the feature-service consumer inside this process (the single-process default).
    embedded_consumer: bool = True
    consumer_group: str = "feature-service"
    max_k: int = 100

    def features(self) -> FeatureServiceSettings:
        """Feature-service settings for this gateway's store and embedded consumer: the fields the
        two share come from here, everything else from ``RECSYS_FEATURES_*``."""
        return FeatureServiceSettings(
            kafka_bootstrap_servers=self.kafka_bootstrap_servers,
            events_topic=self.events_topic,
            group_id=self.consumer_group,
            store=self.store,
            redis_url=self.redis_url,
            redis_key_prefix=self.redis_key_prefix,
            history_items=self.history_items,
        )
