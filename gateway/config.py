"""Settings of the gateway. Environment prefix: ``RECSYS_GATEWAY_``."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feature_service.config import FeatureServiceSettings

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def model_share_ms(deadline_ms: float) -> float:
    """The part of a request's deadline the feature-store read and the model call may use. The
    service keeps the last fifth for the fallback (trending or popular items), so that a slow model
    cannot eat the budget of the answer that replaces it."""
    return deadline_ms * 4 / 5


class GatewaySettings(BaseSettings):
    """The embedded consumer's other settings (half lives, dead-letter limits, partitions) are the
    feature service's own, read from ``RECSYS_FEATURES_*``."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_GATEWAY_")

    host: str = "127.0.0.1"  # not 0.0.0.0 unless an operator says so
    port: int = Field(default=8080, ge=0, le=65535)  # REST (and /metrics, /demo)
    # gRPC front end (same operations as REST); 0 = off, -1 = a free port (tests, demo)
    grpc_port: int = Field(default=0, ge=-1, le=65535)
    triton_grpc_url: str = "127.0.0.1:8001"  # host:port of Triton's gRPC endpoint
    # The whole recommendation, fallback included, answers within this: the feature read and the
    # model call get the first 4/5 (model_share_ms), the fallback the rest.
    request_deadline_ms: int = Field(default=250, gt=0)
    # Backstop for a Triton that never answers: the gRPC deadline of a model call. Requests do
    # not wait for it (they answer from the fallback at their deadline); the call itself is never
    # cancelled earlier, because a cancellation racing a response crashes Triton 2.51 (see
    # gateway/triton_client.py). It must outlast the request deadline.
    triton_timeout_ms: int = Field(default=10_000, gt=0)
    # More model calls in flight than this: answer from the fallback at once (load shedding).
    max_inflight_model_calls: int = Field(default=64, ge=1)
    # "recommend_fused" (default: one step, measured 1.2-1.7x the ensemble's throughput, see
    # perf/README.md) or "recommend" (the ensemble); same inputs and outputs
    triton_model: str = "recommend_fused"
    model_repository: str = "model_repository"  # read for catalogs and the live version
    # How often to look for a new live version (export/triton/rollout.py writes it) to switch to.
    model_poll_ms: int = Field(default=1000, gt=0)
    kafka_bootstrap_servers: str = "127.0.0.1:9092"  # comma-separated host:port list
    events_topic: str = "user-events"  # produced by POST /v1/events, keyed by user id
    # Refreshed recommendations for downstream notification systems (and this gateway's SSE).
    recommendations_topic: str = "recommendations"
    # Item updates from PUT /v1/admin/items/{id}, keyed by item id; created compacted (the latest
    # update of every item is kept), read by the refresh job and the cold-item path.
    catalog_topic: str = "catalog"
    # An event not acknowledged by then: 503. Also the producer's delivery timeout: a record it has
    # not delivered by then is given up on, never delivered after the 503.
    kafka_timeout_ms: int = Field(default=5000, gt=0)
    # The exposure log: one record per served list (feed and push, fallbacks included), keyed by
    # user id; best effort (recsys_exposures_total counts what is dropped).
    impressions_topic: str = "impressions"
    exposure_enabled: bool = True  # false: no exposure log (nothing is produced to the topic)
    # Served lists waiting for Kafka; beyond this they are dropped (result="dropped_full").
    exposure_queue_max: int = Field(default=10_000, ge=1)
    store: Literal["memory", "redis"] = "memory"  # redis: shared by gateways and feature services
    redis_url: str = "redis://127.0.0.1:6379/0"  # used when store=redis
    redis_key_prefix: str = "recsys"  # namespace of every Redis key
    # Recent events kept per user in the store: at least the model's sequence length (checked at
    # start-up), or the user tower would be served shorter histories than it was trained on.
    history_items: int = 100
    # Chronological item histories to seed the store with (written by `python -m export`).
    snapshot_path: str | None = "build/user_histories.json"
    # Run the feature-service consumer inside this process (the single-process default).
    embedded_consumer: bool = True
    consumer_group: str = "feature-service"  # Kafka group of the embedded consumer
    max_k: int = Field(default=100, ge=1)  # largest k a request may ask for

    # Business rules. Bought and out-of-stock items are always excluded.
    exclude_seen: bool = True  # also items only viewed, clicked or carted
    max_per_category: int = Field(default=0, ge=0)  # per response, by primary category; 0 = no cap

    # Push: after these event types, refreshed recommendations go to the recommendations topic
    # and to the user's SSE streams, at most once per user per push_min_interval_ms.
    push_event_types: list[Literal["view", "click", "cart", "purchase"]] = Field(
        default=["cart", "purchase"], description="Event types that trigger a push.")
    push_min_interval_ms: int = Field(default=10_000, ge=0)  # frequency cap per user; 0 = none
    push_visible_timeout_ms: int = Field(default=3000, gt=0)  # for the event to reach the store
    # The store is polled for the event from this interval, doubling up to push_store_poll_max_ms.
    push_store_poll_initial_ms: int = Field(default=10, gt=0)
    push_store_poll_max_ms: int = Field(default=200, gt=0)  # the longest interval between polls
    # Refreshes in flight on this gateway (one per user; later events of the user join it); an
    # event beyond this, for a user with none pending, gets no push (counted as dropped).
    push_max_refresh_tasks: int = Field(default=1000, ge=1)
    # The wait for Kafka's acknowledgement of one push message (a push is best effort).
    push_produce_timeout_ms: int = Field(default=10_000, gt=0)
    # The push hub reconnects to Kafka after a failure from this delay, doubling (with jitter) up
    # to push_hub_retry_max_ms; /readyz shows push not ready, with the reason, meanwhile.
    push_hub_retry_initial_ms: int = Field(default=500, gt=0)
    push_hub_retry_max_ms: int = Field(default=30_000, gt=0)
    # Messages an SSE stream holds for a slow client; beyond, the oldest is dropped.
    push_stream_queue_messages: int = Field(default=8, ge=1)
    push_keepalive_ms: int = Field(default=15_000, gt=0)  # SSE comment sent this often on idle streams
    max_push_streams: int = Field(default=1000, ge=1)  # open SSE streams per gateway; more: 503
    # Open SSE streams per user on this gateway; more: 429 with Retry-After (the keep-alive, in s).
    max_push_streams_per_user: int = Field(default=4, ge=1)
    # An SSE stream ends after this (a final `event: reconnect`); clients reconnect.
    push_stream_lifetime_ms: int = Field(default=3_600_000, gt=0)
    # An SSE write (event or keep-alive) the connection has not taken by then: the stream is
    # closed and its slot freed (a dead or stuck peer).
    push_send_timeout_ms: int = Field(default=10_000, gt=0)

    # Security
    admin_token: SecretStr | None = None  # unset: admin endpoints answer 403
    # Set: event ingestion (REST and gRPC) and push streams need 'Authorization: Bearer <token>'
    # (401 without). Unset: they are open to anyone who reaches the port -- for development only
    # (and the demo page, whose EventSource cannot send the header).
    api_token: SecretStr | None = None
    max_body_bytes: int = Field(default=256 * 1024, gt=0)  # larger request bodies: 413
    max_batch_events: int = Field(default=500, ge=1)  # events per POST /v1/events/batch
    # How stale a gateway's view of out-of-stock items may be (Redis: re-read this often).
    stock_cache_ms: int = Field(default=1000, gt=0)

    # --- rules across fields: a gateway that cannot work as configured refuses to start ---------

    @model_validator(mode="after")
    def _triton_timeout_outlasts_the_request(self) -> Self:
        if self.triton_timeout_ms <= self.request_deadline_ms:
            raise ValueError(
                f"triton_timeout_ms ({self.triton_timeout_ms}) must be longer than "
                f"request_deadline_ms ({self.request_deadline_ms}): it is the backstop for a "
                "Triton that never answers, not the request's budget. A client deadline that fires "
                "while Triton is still answering cancels the call, and Triton 2.51 crashes when a "
                "cancellation races a response. Requests already answer from the fallback at "
                "request_deadline_ms without cancelling anything")
        return self

    @model_validator(mode="after")
    def _grpc_and_rest_ports_differ(self) -> Self:
        if self.grpc_port > 0 and self.grpc_port == self.port:
            raise ValueError(
                f"grpc_port and port are both {self.port}: the gRPC and REST front ends listen on "
                "the same host and cannot share a port; pick another grpc_port (-1: a free one, "
                "0: no gRPC)")
        return self

    @model_validator(mode="after")
    def _redis_store_has_a_redis_url(self) -> Self:
        if self.store == "redis" and not self.redis_url.startswith(REDIS_SCHEMES):
            # The URL is not echoed: it may carry a password.
            raise ValueError(f"store=redis needs a redis_url starting with {', '.join(REDIS_SCHEMES)}")
        return self

    @model_validator(mode="after")
    def _separate_consumer_shares_the_store(self) -> Self:
        if not self.embedded_consumer and self.store == "memory":
            raise ValueError(
                "embedded_consumer=false needs store=redis: with store=memory nothing would write "
                "this gateway's in-process store (a separate feature service keeps its own), so "
                "every user would stay cold and no push would ever be sent")
        return self

    @model_validator(mode="after")
    def _push_poll_backs_off_upwards(self) -> Self:
        if self.push_store_poll_initial_ms > self.push_store_poll_max_ms:
            raise ValueError(
                f"push_store_poll_initial_ms ({self.push_store_poll_initial_ms}) must not exceed "
                f"push_store_poll_max_ms ({self.push_store_poll_max_ms}): the poll interval "
                "starts at the first and doubles up to the second")
        return self

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
