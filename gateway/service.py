"""The service layer: what the REST and gRPC front ends call. Validation, business rules, the
deadline and every fallback live here, so the two front ends cannot disagree."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Protocol

import numpy as np

from feature_service.store import FeatureStore, StoreUnavailable, store_call
from features.behaviour import steps_of
from features.catalog import Item, ItemCatalog
from features.events import (
    MAX_EVENT_BYTES,
    MAX_FUTURE_SKEW_MS,
    Event,
    EventType,
    InvalidEvent,
    check_event_size,
    check_event_time,
    is_valid_id,
)
from features.model_inputs import ModelInputs, build_inputs, ranked_items
from features.user_state import UserFeatures
from gateway import metrics
from gateway.config import model_share_ms
from gateway.errors import Conflict, InvalidRequest, UnknownItem, UpstreamUnavailable
from gateway.exposure import (
    ExposureSink,
    NoExposureLog,
    Surface,
    is_valid_position,
    is_valid_request_id,
    request_id_or_new,
)
from gateway.inventory import Inventory
from gateway.producer import Published
from gateway.rules import Rules
from gateway.schemas import Recommendations, RecommendedItem, SimilarItems, Source
from gateway.served_model import ServedArms, ServedModel
from gateway.similar import similar as similar_items

log = logging.getLogger(__name__)

MAX_EXCLUDE = 100  # item ids a request may ask to exclude
MAX_CATEGORIES = 20


class VersionMismatch(RuntimeError):
    """The model answered with an item index the version's catalog does not have: the answer
    belongs to another version (a model not pinned to the requested version). Such an answer is
    never decoded; the request is served from the fallback (``reason="version_mismatch"``)."""


class Recommender(Protocol):
    @property
    def in_flight(self) -> int:
        """Model calls open now, including any whose request stopped waiting for them: what load
        shedding compares with ``max_inflight_model_calls``."""

    async def recommend(
        self, inputs: ModelInputs, version: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One user's top k (indices, scores) from model ``version`` (the one whose catalog maps
        the indices back)."""

    async def similar(self, item_index: int, exclude: np.ndarray, k: int,
                      version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k items nearest ``item_index`` (indices, scores), none of ``exclude`` ([1, W] item
        indices); NotServed when the repository has no similar-items model."""


class Publisher(Protocol):
    async def publish(self, event: Event) -> Published: ...

    async def publish_many(self, events: Sequence[Event]) -> list[Published]: ...


class PushScheduler(Protocol):
    def schedule(self, event: Event, recommend: Callable[[str], Awaitable[Recommendations]]) -> None:
        """After ``event``, push ``await recommend(user_id)`` in the background; never raises."""


@dataclass(frozen=True)
class ServicePolicy:
    """The knobs of GatewaySettings the service layer uses."""

    max_k: int = 100
    deadline_ms: int = 250
    exclude_seen: bool = True
    max_per_category: int = 0
    max_batch_events: int = 500
    # Model calls in flight beyond this are answered from the fallback at once: under overload,
    # queueing more work for Triton only makes every answer late. Calls that outlived their
    # request still count (they are never cancelled: see gateway/triton_client.py).
    max_inflight_model_calls: int = 64
    push_event_types: frozenset[EventType] = frozenset({EventType.CART, EventType.PURCHASE})
    push_k: int = 10  # items in a pushed refresh (as a GET without k); at most max_k
    # What the feature consumer dead-letters (FeatureServiceSettings.max_event_bytes and
    # .max_future_skew_ms, which gateway.app passes on): an event it would refuse is refused here,
    # with a 422, rather than accepted with a 202 and dropped later.
    max_event_bytes: int = MAX_EVENT_BYTES
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS


class RecommendationService:
    def __init__(self, served: ServedModel, store: FeatureStore, recommender: Recommender,
                 publisher: Publisher, inventory: Inventory, policy: ServicePolicy | None = None,
                 pusher: PushScheduler | None = None,
                 exposures: ExposureSink | None = None) -> None:
        self.served = served  # the live version; replaced whole by reload(): a request reads it once
        self.arms: ServedArms | None = None  # the running experiment's arms, replaced with served
        self.store = store
        self.recommender = recommender
        self.publisher = publisher
        self.inventory = inventory
        self.policy = policy or ServicePolicy()
        self.pusher = pusher  # None: no push after high-intent events
        # Every list this service answers is recorded here, whatever produced it.
        self.exposures: ExposureSink = exposures or NoExposureLog()

    @property
    def max_k(self) -> int:
        return min(self.policy.max_k, self.served.catalog.num_items)

    def reload(self, served: ServedModel, arms: ServedArms | None = None) -> None:
        """Serve another live version, and an experiment's arms (None: everyone gets ``served``).
        Refused (Conflict) when an input shape differs from the one Triton was checked against at
        start-up. Both change in one step: no request sees one without the other."""
        for model in (served, *(arms.by_arm.values() if arms else ())):
            if model.sequence_length != self.served.sequence_length:
                raise Conflict(f"version {model.version} expects sequence length "
                               f"{model.sequence_length}, this gateway sends {self.served.sequence_length}")
        self.served, self.arms = served, arms

    def served_for(self, user_id: str | None) -> ServedModel:
        """The version that answers this user: their arm's during an experiment (a request without
        a user, such as similar items for an anonymous visitor, is not in it), else the live one."""
        arms = self.arms
        return arms.pick(user_id) if arms is not None and user_id else self.served

    # --- recommend ------------------------------------------------------------------------------

    def _validate(self, served: ServedModel, k: int, exclude: Sequence[str],
                  categories: Sequence[str], max_per_category: int | None) -> None:
        if not 1 <= k <= self.max_k:
            raise InvalidRequest(f"k must be between 1 and {self.max_k}, got {k}")
        if len(exclude) > MAX_EXCLUDE:
            raise InvalidRequest(f"exclude: at most {MAX_EXCLUDE} item ids, got {len(exclude)}")
        bad = [i for i in exclude if not is_valid_id(i)]
        if bad:
            raise InvalidRequest(f"exclude: invalid item id {bad[0]!r}")
        if len(categories) > MAX_CATEGORIES:
            raise InvalidRequest(f"category: at most {MAX_CATEGORIES}, got {len(categories)}")
        unknown = sorted(set(categories) - set(served.catalog.categories)) if categories else []
        if unknown:
            raise InvalidRequest(f"category: unknown {unknown[0]!r}; known: "
                                 f"{', '.join(served.catalog.categories)}")
        if max_per_category is not None and not 0 <= max_per_category <= 100:
            raise InvalidRequest(f"max_per_category must be between 0 and 100, got {max_per_category}")

    async def recommend(self, user_id: str, k: int, *, exclude: Sequence[str] = (),
                        categories: Sequence[str] = (), max_per_category: int | None = None,
                        request_id: str | None = None, surface: Surface = "feed") -> Recommendations:
        """Top ``k`` for the user under the business rules, answered within the deadline: the
        model when it can, else trending items (cold start, or degraded), else popular ones.
        ``request_id``: the client's id for this request (kept when valid, else a fresh one). The
        answer, fallbacks included, goes to the exposure log as served on ``surface``."""
        recs = await self._recommend(user_id, k, exclude, categories, max_per_category,
                                     request_id_or_new(request_id))
        self.exposures.record(recs, surface)  # never blocks, never raises
        return recs

    async def _recommend(self, user_id: str, k: int, exclude: Sequence[str],
                         categories: Sequence[str], max_per_category: int | None,
                         request_id: str) -> Recommendations:
        served = self.served_for(user_id)  # one read: the whole answer comes from this version
        self._validate(served, k, exclude, categories, max_per_category)
        started = asyncio.get_running_loop().time()
        deadline = started + self.policy.deadline_ms / 1000
        # The rest is kept for the fallback: a slow model must not eat it all.
        model_deadline = started + model_share_ms(self.policy.deadline_ms) / 1000
        cap = self.policy.max_per_category if max_per_category is None else max_per_category
        base = Rules(exclude=frozenset(exclude) | self.inventory.out_of_stock(),
                     categories=frozenset(categories), max_per_category=cap)
        try:
            async with asyncio.timeout_at(model_deadline):
                features = await store_call(self.store, self.store.get, user_id)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("feature store unavailable or slow: %r", exc)
            return await self._fallback(served, user_id, k, base, deadline, request_id,
                                        reason="store_unavailable")
        if features is None or not features.recent:
            return await self._fallback(served, user_id, k, base, deadline, request_id,
                                        reason="cold_start")
        rules = Rules(exclude=base.exclude | self._excluded_for(features), categories=base.categories,
                      max_per_category=cap)
        if self.recommender.in_flight >= self.policy.max_inflight_model_calls:
            return await self._fallback(served, user_id, k, rules, deadline, request_id, reason="overload",
                                        updated_at_ms=features.updated_at_ms)
        try:
            async with asyncio.timeout_at(model_deadline):
                candidates = await self._model_candidates(served, features, rules, k)
        except (UpstreamUnavailable, TimeoutError) as exc:
            reason = "deadline" if isinstance(exc, TimeoutError) else "model_unavailable"
            log.warning("model %s, serving the fallback: %r", reason, exc)
            return await self._fallback(served, user_id, k, rules, deadline, request_id, reason=reason,
                                        updated_at_ms=features.updated_at_ms)
        except VersionMismatch as exc:
            reason = "version_mismatch"
            log.error("%s; serving the fallback", exc)
            return await self._fallback(served, user_id, k, rules, deadline, request_id, reason=reason,
                                        updated_at_ms=features.updated_at_ms)
        metrics.RECOMMENDATIONS.labels("model", "none").inc()
        return self._response(served, user_id, request_id, rules.select(candidates, k),
                              source="model", cold_start=False, degraded=False,
                              updated_at_ms=features.updated_at_ms)

    def _excluded_for(self, features: UserFeatures) -> frozenset[str]:
        if self.policy.exclude_seen:
            return frozenset(features.seen_items | features.bought_items)
        return frozenset(features.bought_items)

    async def _model_candidates(self, served: ServedModel, features: UserFeatures, rules: Rules,
                                k: int) -> list[tuple[Item, float]]:
        catalog = served.catalog
        # Rules applied after retrieval (category filter, per-category cap) may drop items: ask
        # the model for more so that k usually survive.
        fetch_k = min(catalog.num_items, max(4 * k, k + 50)) if rules.filters_after_retrieval else k
        # Steps, not bare items: the user tower reads each event's type (a purchase is not a view).
        inputs = build_inputs(steps_of(features.recent), catalog, served.sequence_length, fetch_k,
                              exclude=rules.exclude)
        started = time.perf_counter()
        try:
            indices, scores = await self.recommender.recommend(inputs, version=served.version)
        finally:
            metrics.TRITON_SECONDS.observe(time.perf_counter() - started)
        try:
            return ranked_items(indices, scores, catalog)
        except IndexError as exc:
            raise VersionMismatch(f"the model answered an item index that version {served.version}'s "
                                  f"catalog ({catalog.num_items} items) does not have: the answer "
                                  f"is another version's ({exc})") from exc

    async def _fallback(self, served: ServedModel, user_id: str, k: int, rules: Rules,
                        deadline: float, request_id: str, *, reason: str,
                        updated_at_ms: int | None = None) -> Recommendations:
        """Trending in the event stream now; topped up with the training data's popular items
        (all of them when the store cannot answer before the deadline)."""
        trending: list[tuple[str, float]] = []
        try:
            async with asyncio.timeout_at(deadline):
                # Ask for extra: the rules will drop some.
                trending = await store_call(self.store, self.store.trending, 4 * k + len(rules.exclude))
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("trending unavailable, serving popular items: %r", exc)
        popular = ((item_id, None) for item_id in served.popular_items)
        picked = rules.select(_in_catalog(chain(trending, popular), served.catalog), k)
        source: Source = (
            "trending" if any(score is not None for _, score in picked) else "popular")
        metrics.RECOMMENDATIONS.labels(source, reason).inc()
        return self._response(served, user_id, request_id, picked, source=source,
                              cold_start=reason == "cold_start", degraded=reason != "cold_start",
                              updated_at_ms=updated_at_ms)

    @staticmethod
    def _response(served: ServedModel, user_id: str, request_id: str,
                  picked: list[tuple[Item, float | None]], *,
                  source: Source, cold_start: bool, degraded: bool,
                  updated_at_ms: int | None) -> Recommendations:
        items = [RecommendedItem(item_id=item.item_id, title=item.title,
                                 categories=list(item.categories), score=score)
                 for item, score in picked]
        return Recommendations(request_id=request_id, user_id=user_id, items=items, cold_start=cold_start,
                               degraded=degraded, source=source, model_version=served.version,
                               arm=served.arm, features_updated_at_ms=updated_at_ms)

    # --- similar items --------------------------------------------------------------------------

    async def similar(self, item_id: str, k: int, user_id: str | None = None,
                      request_id: str | None = None) -> SimilarItems:
        """The ``k`` items most like ``item_id`` under the feed's rules (gateway/similar.py)."""
        return await similar_items(self, item_id, k, user_id, request_id)

    # --- ingest ---------------------------------------------------------------------------------

    def _check_event(self, event: Event, now_ms: int) -> None:
        # The user's own version: an arm's catalog may hold items the live one does not (cold items).
        if event.item_id not in self.served_for(event.user_id).catalog:
            raise UnknownItem(f"unknown item_id {event.item_id!r}: not in the catalog")
        try:
            check_event_time(event, now_ms, self.policy.max_future_skew_ms)
            check_event_size(event, self.policy.max_event_bytes)
        except InvalidEvent as exc:
            raise InvalidRequest(exc.reason) from None

    async def ingest(self, event: Event) -> Published:
        self._check_event(event, int(time.time() * 1000))
        event = attributable(event)
        published = await self.publisher.publish(event)
        self._after_ingest(event)
        return published

    async def ingest_many(self, events: Sequence[Event]) -> list[Published]:
        """All or nothing at validation: one bad event rejects the batch before any is produced.
        A Kafka failure part way raises UpstreamUnavailable; re-sending the batch is safe when the
        events carry their own event_id (the consumer drops duplicates)."""
        if not 1 <= len(events) <= self.policy.max_batch_events:
            raise InvalidRequest(f"events: between 1 and {self.policy.max_batch_events} per batch, "
                                 f"got {len(events)}")
        now_ms = int(time.time() * 1000)
        for position, event in enumerate(events):
            try:
                self._check_event(event, now_ms)
            except InvalidRequest as exc:
                raise type(exc)(f"events[{position}]: {exc.message}") from None
        events = [attributable(e) for e in events]
        published = await self.publisher.publish_many(events)
        for event in events:
            self._after_ingest(event)
        return published

    def _after_ingest(self, event: Event) -> None:
        if self.pusher is not None and event.event_type in self.policy.push_event_types:
            self.pusher.schedule(event, self.recommend_for_push)

    async def recommend_for_push(self, user_id: str) -> Recommendations:
        """What a push carries: the user's top ``push_k`` (fewer when ``max_k`` is lower, rather
        than a push that fails on its own k), as a GET without parameters would answer."""
        return await self.recommend(user_id, min(self.policy.push_k, self.max_k), surface="push")


def _in_catalog(candidates: Iterable[tuple[str, float | None]],
                catalog: ItemCatalog) -> Iterator[tuple[Item, float | None]]:
    """Item ids (from the stream or the training data) resolved to this version's catalog once;
    ids it does not know are skipped."""
    for item_id, score in candidates:
        item = catalog.get(item_id)
        if item is not None:
            yield item, score


ATTRIBUTION_FIELDS = {"request_id": is_valid_request_id, "position": is_valid_position}


def attributable(event: Event) -> Event:
    """``event`` without an invalid ``context.request_id`` or ``context.position`` (the list the
    event is attributed to, and the item's 0-based place in it): a bad value is dropped, counted
    in ``recsys_attribution_dropped_total{field}``; the event itself is still accepted."""
    context = event.context
    if not context or ("request_id" not in context and "position" not in context):
        return event
    bad = [f for f, valid in ATTRIBUTION_FIELDS.items() if f in context and not valid(context[f])]
    if not bad:
        return event
    for field in bad:
        metrics.ATTRIBUTION_DROPPED.labels(field).inc()
    kept = {key: value for key, value in context.items() if key not in bad}
    return event.model_copy(update={"context": kept or None})
