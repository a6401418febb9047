"""The recommendation response, shared by the service layer, both front ends and the push path.

Its own module so that what produces a response (``gateway.service``) and what forwards one
(``gateway.push``, ``gateway.grpc_server``, the routes) depend on it, not on each other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Source = Literal["model", "trending", "popular"]


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    categories: list[str]
    score: float | None  # model: cosine similarity; trending: decayed popularity; popular: None


class Recommendations(BaseModel):
    # The served list's id (the client's X-Request-ID / x-request-id when valid, else a fresh
    # one): its record in the exposure log has it, and an event's context.request_id names it.
    request_id: str
    user_id: str
    items: list[RecommendedItem]
    cold_start: bool  # the user has no features yet: trending items
    degraded: bool  # the model or the feature store failed or was too slow: trending or popular
    source: Source  # popular: from training data, not the stream
    model_version: int
    arm: str | None = None  # the user's A/B experiment arm (None: no experiment running)
    features_updated_at_ms: int | None = None


class SimilarItems(BaseModel):
    """Items like ``item_id`` (GET /v1/items/{item_id}/similar)."""

    request_id: str  # as Recommendations.request_id: the list's id in the exposure log
    item_id: str  # the item asked about (never in ``items``)
    items: list[RecommendedItem]  # score: cosine similarity to item_id; trending/popular: as there
    model_version: int
    arm: str | None = None  # as Recommendations.arm (None also when the request named no user)
    source: Source  # model; trending or popular (same categories) when degraded
    degraded: bool  # the model failed or was too slow, or the user's bought items were unknown
