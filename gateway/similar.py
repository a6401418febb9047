"""Similar items: ``GET /v1/items/{item_id}/similar``, served by Triton's ``similar_items``
(item-to-item over the item embeddings of the served version, so cold items added by
``export/triton/cold_items.py`` work as any other).

The feed's business rules apply: out-of-stock items never appear, nor the user's bought items when
the request names a user, nor the item itself. When the model fails, is too slow or is shed under
load, the answer is the feed's fallback (trending, then popular items) restricted to the item's
categories, flagged ``degraded``. A repository without the model (an export from before it) answers
501 (NotServed); an item the served catalog does not know, 404 (ItemNotFound). Every answer goes to
the exposure log as surface ``"similar"``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from feature_service.store import StoreUnavailable, store_call
from features.catalog import PAD_INDEX
from features.events import is_valid_id
from features.model_inputs import ranked_items
from gateway import metrics
from gateway.config import model_share_ms
from gateway.errors import InvalidRequest, ItemNotFound, UpstreamUnavailable
from gateway.exposure import request_id_or_new
from gateway.rules import Rules
from gateway.schemas import Recommendations, SimilarItems
from gateway.served_model import ServedModel

log = logging.getLogger(__name__)

# EXCLUDE is padded to a multiple of this, so that requests share Triton's batches (models/retrieve.py
# groups requests by exclusion width).
EXCLUDE_BUCKET = 16


class SimilarList(Recommendations):
    """What the exposure log records of a similar-items answer: a list, plus the item asked about."""

    query_item_id: str


def exclusion_indices(served: ServedModel, item_id: str, excluded: frozenset[str]) -> np.ndarray:
    """[1, W] item indices never to return: the item itself first (the ANN path of the model only
    honours EXCLUDE), then the excluded items this catalog knows, PAD-filled to a bucket width."""
    catalog = served.catalog
    indices = [catalog.index_of(item_id)] + sorted(
        catalog.index_of(i) for i in excluded if i in catalog and i != item_id)
    width = -(-len(indices) // EXCLUDE_BUCKET) * EXCLUDE_BUCKET
    out = np.full((1, width), PAD_INDEX, dtype=np.int64)
    out[0, :len(indices)] = indices
    return out


async def similar(service: Any, item_id: str, k: int, user_id: str | None = None,
                  request_id: str | None = None) -> SimilarItems:
    """The ``k`` items most like ``item_id`` under the business rules (see the module docstring).
    ``service``: the gateway.service.RecommendationService (not imported: it imports this module),
    whose store, inventory, recommender, fallback and exposure log are the feed's."""
    if user_id is not None and not is_valid_id(user_id):
        raise InvalidRequest(f"invalid user_id {user_id!r}")
    served = service.served_for(user_id)  # the user's experiment arm, if any
    item = served.catalog.get(item_id) if is_valid_id(item_id) else None
    if item is None:
        raise ItemNotFound(f"unknown item_id {item_id!r}: not in the catalog of model version "
                           f"{served.version}")
    if not 1 <= k <= service.max_k:
        raise InvalidRequest(f"k must be between 1 and {service.max_k}, got {k}")
    request_id = request_id_or_new(request_id)
    started = asyncio.get_running_loop().time()
    deadline = started + service.policy.deadline_ms / 1000
    model_deadline = started + model_share_ms(service.policy.deadline_ms) / 1000
    excluded = set(service.inventory.out_of_stock()) | {item_id}
    bought_unknown = False
    if user_id is not None:
        try:
            async with asyncio.timeout_at(model_deadline):
                features = await store_call(service.store, service.store.get, user_id)
            if features is not None:
                excluded |= features.bought_items
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("feature store unavailable or slow, similar items without the user's "
                        "bought items: %r", exc)
            bought_unknown = True
    rules = Rules(exclude=frozenset(excluded))
    picked = None
    reason = "overload"
    if service.recommender.in_flight < service.policy.max_inflight_model_calls:
        picked_or_reason = await _from_model(service, served, item_id, rules, k, model_deadline)
        if isinstance(picked_or_reason, str):
            reason = picked_or_reason
        else:
            picked = picked_or_reason
    if picked is None:
        fallback_rules = Rules(exclude=rules.exclude, categories=frozenset(item.categories))
        recs = await service._fallback(served, user_id or "", k, fallback_rules, deadline, request_id,
                                       reason=reason)
    else:
        metrics.RECOMMENDATIONS.labels("model", "none").inc()
        recs = service._response(served, user_id or "", request_id, picked, source="model",
                                 cold_start=False, degraded=bought_unknown, updated_at_ms=None)
    degraded = recs.degraded or bought_unknown
    service.exposures.record(SimilarList(**recs.model_dump(exclude={"degraded"}), degraded=degraded,
                                         query_item_id=item_id), "similar")
    return SimilarItems(request_id=request_id, item_id=item_id, items=recs.items,
                        model_version=served.version, arm=served.arm, source=recs.source,
                        degraded=degraded)


async def _from_model(service: Any, served: ServedModel, item_id: str, rules: Rules,
                      k: int, model_deadline: float):
    """The model's answer as (item, score) pairs under ``rules``, or the fallback's reason."""
    exclude = exclusion_indices(served, item_id, rules.exclude)
    started = time.perf_counter()
    try:
        async with asyncio.timeout_at(model_deadline):
            indices, scores = await service.recommender.similar(
                served.catalog.index_of(item_id), exclude, k, version=served.version)
    except TimeoutError:
        log.warning("similar items: model deadline, serving the fallback")
        return "deadline"
    except UpstreamUnavailable as exc:
        log.warning("similar items: model unavailable, serving the fallback: %r", exc)
        return "model_unavailable"
    finally:
        metrics.TRITON_SECONDS.observe(time.perf_counter() - started)
    try:
        candidates = ranked_items(indices, scores, served.catalog)
    except IndexError as exc:
        log.error("similar items: the model answered an index version %d's catalog does not have "
                  "(%s); serving the fallback", served.version, exc)
        return "version_mismatch"
    return rules.select(candidates, k)
