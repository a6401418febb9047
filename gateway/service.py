"""The service layer: what the REST (and later gRPC) front ends call."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel

from feature_service.store import FeatureStore, StoreUnavailable
from features.catalog import FIRST_ITEM_INDEX
from features.events import Event, InvalidEvent, check_event_time
from features.sequence import encode_history
from gateway.errors import InvalidRequest, UnknownItem, UpstreamUnavailable
from gateway.producer import Published
from gateway.served_model import ServedModel

log = logging.getLogger(__name__)


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    score: float | None  # model: cosine similarity; trending: decayed popularity; popular: None


class Recommendations(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    cold_start: bool  # the user has no features yet: trending items
    degraded: bool  # the model or the feature store was unavailable: trending or popular items
    source: Literal["model", "trending", "popular"]  # popular: from training data, not the stream
    model_version: int
    features_updated_at_ms: int | None = None


class Recommender(Protocol):
    async def recommend(
        self, history: np.ndarray, exclude: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]: ...


class Publisher(Protocol):
    async def publish(self, event: Event) -> Published: ...


class RecommendationService:
    def __init__(self, served: ServedModel, store: FeatureStore, recommender: Recommender,
                 publisher: Publisher, max_k: int = 100) -> None:
        self.served = served
        self.store = store
        self.recommender = recommender
        self.publisher = publisher
        self.max_k = min(max_k, served.catalog.num_items)

    async def recommend(self, user_id: str, k: int) -> Recommendations:
        if not 1 <= k <= self.max_k:
            raise InvalidRequest(f"k must be between 1 and {self.max_k}, got {k}")
        try:
            features = await asyncio.to_thread(self.store.get, user_id)
        except StoreUnavailable as exc:
            log.warning("feature store unavailable: %s", exc)
            return await self._fallback(user_id, k, set(), cold_start=False, degraded=True)
        if features is None or not features.recent_items:
            return await self._fallback(user_id, k, set(), cold_start=True, degraded=False)
        catalog = self.served.catalog
        history = encode_history(features.recent_items, catalog, self.served.sequence_length)
        exclude = np.unique(catalog.indices_of(features.seen_items))
        exclude = exclude[exclude >= FIRST_ITEM_INDEX]
        try:
            indices, scores = await self.recommender.recommend(history, exclude, k)
        except UpstreamUnavailable as exc:
            log.warning("model unavailable, serving popular items: %s", exc)
            return await self._fallback(user_id, k, features.seen_items, cold_start=False,
                                        degraded=True)
        items = []
        for index, score in zip(indices.tolist(), scores.tolist(), strict=True):
            if not np.isfinite(score):  # fewer than k candidates were left after exclusions
                continue
            item = catalog.item_at(index)
            items.append(RecommendedItem(item_id=item.item_id, title=item.title, score=score))
        return Recommendations(user_id=user_id, items=items, cold_start=False, degraded=False,
                               source="model", model_version=self.served.version,
                               features_updated_at_ms=features.updated_at_ms)

    async def _fallback(self, user_id: str, k: int, seen: set[str], *, cold_start: bool,
                        degraded: bool) -> Recommendations:
        """What is trending in the event stream right now; the training data's popular items when
        the stream has too little (or the store cannot be reached)."""
        catalog = self.served.catalog
        picked: list[tuple[str, float | None]] = []
        source: Literal["trending", "popular"] = "popular"
        try:
            # Ask for extra: some trending items may be seen or no longer in the catalog.
            trending = await asyncio.to_thread(self.store.trending, k + len(seen) + 16)
        except StoreUnavailable as exc:
            log.warning("feature store unavailable, serving popular items: %s", exc)
            trending = []
        for item_id, score in trending:
            if item_id in catalog and item_id not in seen:
                picked.append((item_id, score))
        if picked:
            source = "trending"
        chosen = {item_id for item_id, _ in picked}
        for item_id in self.served.popular_items:
            if len(picked) >= k:
                break
            if item_id in catalog and item_id not in seen and item_id not in chosen:
                picked.append((item_id, None))
        items = [RecommendedItem(item_id=i, title=catalog.item_at(catalog.index_of(i)).title,
                                 score=score) for i, score in picked[:k]]
        return Recommendations(user_id=user_id, items=items, cold_start=cold_start,
                               degraded=degraded, source=source, model_version=self.served.version)

    async def ingest(self, event: Event) -> Published:
        if event.item_id not in self.served.catalog:
            raise UnknownItem(f"unknown item_id {event.item_id!r}: not in the catalog")
        try:
            check_event_time(event, int(time.time() * 1000))
        except InvalidEvent as exc:
            raise InvalidRequest(exc.reason) from None
        return await self.publisher.publish(event)
