"""Fakes for what the service layer calls out to (Triton, Kafka, the pusher), shared by the REST and
gRPC front-end tests so that both run the real service over the same stand-ins."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

from features.catalog import PAD_INDEX, ItemCatalog
from features.events import Event
from features.model_inputs import ModelInputs
from gateway.errors import NotServed, UpstreamUnavailable
from gateway.producer import Published
from gateway.schemas import Recommendations


class FakeRecommender:
    """Scores items by index, highest first (so "f" > "e" > ... > "a"); records each call as
    (history, exclusions without padding, k), and its whole request in ``inputs``."""

    def __init__(self, catalog: ItemCatalog) -> None:
        self.catalog = catalog
        self.calls: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.inputs: list[ModelInputs] = []
        self.fail = False
        self.delay_s = 0.0
        self.in_flight = 0
        self.similar_calls: list[tuple[int, np.ndarray, int, int | None]] = []
        self.similar_served = True

    async def recommend(self, inputs: ModelInputs,
                        version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        history, exclude, k = inputs.history[0], inputs.exclude[0], int(inputs.k[0, 0])
        exclude = exclude[exclude != PAD_INDEX]
        self.calls.append((history.copy(), exclude.copy(), k))
        self.inputs.append(inputs)
        if self.delay_s:
            self.in_flight += 1
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.in_flight -= 1
        if self.fail:
            raise UpstreamUnavailable("triton down")
        excluded = set(exclude.tolist())
        candidates = [i for i in range(self.catalog.num_embeddings - 1, 1, -1) if i not in excluded]
        picked = np.array(candidates[:k], dtype=np.int64)
        scores = np.linspace(0.9, 0.5, len(picked)).astype(np.float32)
        return picked, scores

    async def similar(self, item_index: int, exclude: np.ndarray, k: int,
                      version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As ``recommend``, highest index first, never an excluded index (the query included
        only when the caller excludes it, as the real model's ANN path); calls in ``similar_calls``
        as (item index, exclusions without padding, k, version). ``similar_served=False``: a
        repository without the model."""
        exclude = np.asarray(exclude)[0]
        exclude = exclude[exclude != PAD_INDEX]
        self.similar_calls.append((item_index, exclude.copy(), k, version))
        if not self.similar_served:
            raise NotServed("no similar_items model")
        if self.fail:
            raise UpstreamUnavailable("triton down")
        excluded = set(exclude.tolist())
        candidates = [i for i in range(self.catalog.num_embeddings - 1, 1, -1) if i not in excluded]
        picked = np.array(candidates[:k], dtype=np.int64)
        return picked, np.linspace(0.8, 0.4, len(picked)).astype(np.float32)


class FakePublisher:
    """Kafka that acknowledges every event at the next offset, or raises ``fail`` when set."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fail: Exception | None = None

    async def publish(self, event: Event) -> Published:
        if self.fail:
            raise self.fail
        self.events.append(event)
        return Published(event.event_id, "user-events", 0, len(self.events) - 1)

    async def publish_many(self, events: list[Event]) -> list[Published]:
        return [await self.publish(e) for e in events]


class FakePusher:
    """Records what the service asked to push, and with which function."""

    def __init__(self) -> None:
        self.scheduled: list[Event] = []
        self.recommend: Callable[[str], Awaitable[Recommendations]] | None = None

    def schedule(self, event: Event, recommend: Callable[[str], Awaitable[Recommendations]]) -> None:
        self.scheduled.append(event)
        self.recommend = recommend
