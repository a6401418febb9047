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
    features_updated_at_ms: int | None = None
