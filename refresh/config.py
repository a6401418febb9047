"""Settings of the refresh job. Environment prefix: ``RECSYS_REFRESH_``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RefreshSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_REFRESH_")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"  # comma-separated host:port list
    events_topic: str = "user-events"  # read; the gateway produces to it
    # Compacted topic of item updates (refresh/catalog_feed.py); None: no catalog updates read.
    catalog_topic: str | None = "catalog"
    # Its own consumer group, so reading here never moves the feature service's offsets.
    group_id: str = "recsys-refresh"
    # A read that has not reached the end offsets seen at its start by then fails the run (nothing
    # committed), rather than training on part of the stream.
    read_timeout_s: float = Field(default=600.0, gt=0)
    max_poll_records: int = Field(default=5_000, ge=1)  # records per poll of the events topic
    catalog_timeout_s: float = Field(default=30.0, gt=0)  # reading the catalog topic to its end

    repository: str = "model_repository"  # the live Triton model repository (rollout.json)
    triton_url: str = "127.0.0.1:8000"  # Triton's HTTP endpoint, for load, smoke and shadow checks
    # Checkpoints of published versions, the merged data, pending events and the history.
    state_dir: str = "build/refresh"
    # First run only (no checkpoint of the live version in state_dir yet): the live version's
    # training checkpoint, e.g. build/artifacts/checkpoints/seed0/best.pt.
    base_checkpoint: str | None = None
    # First run only (no data in state_dir yet): the interactions file the live version was
    # trained on (export's format, docs/data.md).
    base_data: str | None = None
    # An items file (export's format) with new or changed items, read on every run in addition to
    # the catalog topic (the topic wins for an item in both).
    items_path: str | None = None

    # Only interactions this recent (relative to the newest event, not the wall clock, so a replay
    # of old events behaves as the live stream did) are trained on and kept.
    window_days: float = Field(default=30.0, gt=0)  # the window, in days before the newest event
    # Fewer new events than this: nothing trained, nothing committed (the next run reads them again).
    min_events: int = Field(default=1, ge=1)
    # The newest share of the new events is the holdout the decision is taken on: neither the
    # live version nor the candidate trains on it.
    holdout_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    # The share of new events just before the holdout: the candidate's validation band (early
    # stopping); not trained on either.
    valid_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    # Relative Recall@10 gain on the holdout the candidate needs over the live version (0.02 = 2 %).
    margin: float = Field(default=0.02, ge=0)

    # Fine-tuning from the live weights: a few epochs with early stopping on the validation band
    # (on the drifting synthetic shop 2e-3 learnt the new items where 1e-3 had not yet).
    epochs: int = Field(default=3, ge=1)  # at most, per ensemble member; early stopping ends sooner
    patience: int = Field(default=2, ge=1)  # epochs without a better validation Recall@10
    learning_rate: float = Field(default=2e-3, gt=0)  # Adam, fresh optimiser state
    batch_size: int = Field(default=256, ge=1)  # examples per step (in-batch negatives)
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N" | "auto" (export.train.resolve_device)
    seed: int = 0  # batches and dropout; the same inputs train the same candidate

    # Exporter target of the candidate; it must match the live repository's (publish refuses a
    # config that differs).
    target: Literal["python", "libtorch"] = "python"  # as export's --target
    shadow_requests: int = Field(default=100, ge=0)  # holdout users replayed against both versions
    # Top-10 overlap with the live version below this fails the shadow check; None: reported only.
    min_shadow_overlap: float | None = Field(default=None, ge=0, le=1)
    # Set: start an A/B experiment giving the candidate this share of users instead of promoting.
    ab_weight: float | None = Field(default=None, gt=0, lt=1)

    every_s: float = Field(default=900.0, gt=0)  # `run --every`: seconds between the starts of runs
    metrics_port: int | None = None  # Prometheus metrics on this port while the job runs
