"""Settings of the gateway. Environment prefix: ``RECSYS_GATEWAY_``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from feature_service.config import FeatureServiceSettings


class GatewaySettings(BaseSettings):
    """The embedded consumer's other settings (half lives, dead-letter limits, partitions) are the
    feature service's own, read from ``RECSYS_FEATURES_*``."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_GATEWAY_")

    host: str = "127.0.0.1"  # not 0.0.0.0 unless an operator says so
    port: int = 8080
    # gRPC front end (same operations as REST); 0 = off, -1 = a free port (tests, demo)
    grpc_port: int = 0
    triton_grpc_url: str = "127.0.0.1:8001"
    triton_timeout_ms: int = Field(default=500, gt=0)
    # The whole recommendation, fallback included, answers within this; Triton gets what is left.
    request_deadline_ms: int = Field(default=250, gt=0)
    # More model calls in flight than this: answer from the fallback at once (load shedding).
    max_inflight_model_calls: int = Field(default=64, ge=1)
    # "recommend_fused" (default: one step, measured 1.2-1.7x the ensemble's throughput, see
    # perf/README.md) or "recommend" (the ensemble); same inputs and outputs
    triton_model: str = "recommend_fused"
    model_repository: str = "model_repository"
    # How often to look for a new live version (export/triton/rollout.py writes it) to switch to.
    model_poll_ms: int = Field(default=1000, gt=0)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "user-events"
    # Refreshed recommendations for downstream notification systems (and this gateway's SSE).
    recommendations_topic: str = "recommendations"
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
    max_k: int = Field(default=100, ge=1)

    # Business rules. Bought and out-of-stock items are always excluded.
    exclude_seen: bool = True  # also items only viewed, clicked or carted
    max_per_category: int = Field(default=0, ge=0)  # per response, by primary category; 0 = no cap

    # Push: after these event types, refreshed recommendations go to the recommendations topic
    # and to the user's SSE streams, at most once per user per push_min_interval_ms.
    push_event_types: list[Literal["view", "click", "cart", "purchase"]] = ["cart", "purchase"]
    push_min_interval_ms: int = Field(default=10_000, ge=0)
    push_visible_timeout_ms: int = 3000  # wait this long for the event to reach the store
    push_keepalive_ms: int = 15_000
    max_push_streams: int = 1000

    # Security
    admin_token: SecretStr | None = None  # unset: admin endpoints answer 403
    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    max_batch_events: int = Field(default=500, ge=1)
    stock_cache_ms: int = 1000  # how stale a gateway's view of out-of-stock items may be

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
