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
    user_id: str
    items: list[RecommendedItem]
    cold_start: bool  # the user has no features yet: trending items
    degraded: bool  # the model or the feature store failed or was too slow: trending or popular
    source: Source  # popular: from training data, not the stream
    model_version: int
    features_updated_at_ms: int | None = None
