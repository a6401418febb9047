"""Per-user real-time features and the catalog's trending items, behind one interface
(``feature_service.store_base.FeatureStore``).

``InMemoryStore`` is the embedded default (it lives in the gateway process and is rebuilt from the
topic when the process starts); ``RedisStore`` (``feature_service.redis_store``) is shared by several
gateway and consumer processes and survives them. Both apply the rules in ``features.user_state``
and pass the same contract tests (tests/unit/feature_service/store_contract.py):

* **Effectively once.** A Kafka redelivery is recognised by its offset (the last applied offset per
  partition is kept with the state, however old the event); a client's retry of an event by its
  ``event_id`` among the user's last ``dedup_events_per_user`` events. Each event is applied
  atomically: the marks and every feature update together, or nothing.
* **Bounded.** Every per-user collection is capped (history, seen, bought, recent ids) and a user's
  state expires ``user_ttl_s`` after their last write; trending keeps its ``trending_items`` best.
* **One order.** Recent events are in ``features.behaviour.event_order`` (event time, ties by event
  id) in both stores, trimmed alike, so a late event lands where it belongs and both stores hand the
  user tower the same steps.
"""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from feature_service.redis_store import RedisStore
from feature_service.store_base import (
    FeatureStore,
    Position,
    StoreUnavailable,
    parse_snapshot,
    store_call,
    wall_ms,
)
from feature_service.top_scores import TopScores, by_score
from features.behaviour import event_order
from features.events import Event, EventType
from features.user_state import (
    EVENT_WEIGHTS,
    FeatureRules,
    RecentEvent,
    SnapshotRow,
    UserFeatures,
    decayed_value,
    log_decayed_add,
    recent_event,
)

__all__ = ["FeatureStore", "InMemoryStore", "Position", "RedisStore", "StoreUnavailable",
           "create_store", "store_call"]


def _sweep_every_ms(rules: FeatureRules) -> int:
    # Often enough that an expired user is gone soon after (``get`` hides them at once), rarely
    # enough that the scan of every user costs nothing per event.
    return min(rules.user_ttl_s * 1000 // 10, 60_000)


@dataclass
class _UserState:
    recent: list[RecentEvent] = field(default_factory=list)
    # Insertion-ordered, most recently touched last: each is trimmed from the front to its cap.
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    bought: OrderedDict[str, None] = field(default_factory=OrderedDict)
    applied: OrderedDict[str, None] = field(default_factory=OrderedDict)  # event ids
    affinity_log: dict[str, float] = field(default_factory=dict)
    updated_at_ms: int | None = None  # wall clock of the last event
    touched_at_ms: int = 0  # wall clock of the last write (event or snapshot): the TTL's start


def _touch(keys: OrderedDict[str, None], key: str, cap: int) -> None:
    """``key`` becomes the newest of ``keys``; the oldest go beyond ``cap``."""
    keys[key] = None
    keys.move_to_end(key)
    while len(keys) > cap:
        keys.popitem(last=False)


# How many of the highest trending scores the in-process store keeps ready (the fallback asks for
# a few dozen); a larger k is answered by a scan.
TRENDING_LEADERS = 1024


class InMemoryStore:
    """Thread-safe: the consumer thread writes while request handlers read."""

    durable = False
    blocking = False

    def __init__(self, rules: FeatureRules | None = None, *,
                 item_categories: Mapping[str, Sequence[str]] | None = None,
                 clock_ms: Callable[[], int] = wall_ms) -> None:
        self.rules = rules or FeatureRules()
        self.item_categories = item_categories or {}
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._users: dict[str, _UserState] = {}
        self._trending_log: dict[str, float] = {}
        self._leaders = TopScores(TRENDING_LEADERS)
        self._offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> last applied offset
        self._swept_at_ms = clock_ms()

    def apply(self, event: Event) -> bool:
        return self.apply_many([event])[0]

    def apply_many(self, events: Sequence[Event],
                   positions: Sequence[Position] | None = None) -> list[bool]:
        # The lock is taken per event so that readers (request handlers) never wait for a batch.
        now_ms = self._clock_ms()
        out = []
        for i, event in enumerate(events):
            with self._lock:
                out.append(self._apply(event, positions[i] if positions else None, now_ms))
        if now_ms - self._swept_at_ms >= _sweep_every_ms(self.rules):
            self._sweep(now_ms)
        if len(self._trending_log) > 2 * self.rules.trending_items:
            self._trim_trending()
        return out

    def applied_offsets(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._offsets)

    def forget_offsets(self, partitions: Iterable[tuple[str, int]]) -> None:
        with self._lock:
            for tp in partitions:
                self._offsets.pop(tp, None)

    def _expired(self, state: _UserState, now_ms: int) -> bool:
        return now_ms - state.touched_at_ms >= self.rules.user_ttl_s * 1000

    def _sweep(self, now_ms: int) -> None:
        """Drop users idle for longer than the TTL (Redis expires their keys)."""
        with self._lock:
            self._swept_at_ms = now_ms
            for user in [u for u, state in self._users.items() if self._expired(state, now_ms)]:
                del self._users[user]

    def _trim_trending(self) -> None:
        """Keep the ``trending_items`` best scores, in bulk once the table holds twice that (as
        Redis does): a scan per batch would cost more, and a new item has room to gather score."""
        with self._lock:
            keep = heapq.nlargest(self.rules.trending_items, self._trending_log.items(), key=by_score)
            self._trending_log = dict(keep)
            self._leaders = TopScores(TRENDING_LEADERS)
            for item, score in keep:
                self._leaders.update(item, score)

    def _apply(self, event: Event, position: Position | None, now_ms: int) -> bool:
        if position is not None:
            # A redelivery (a rewind after a failure) is recognised by offset, however old.
            topic, partition, offset = position
            last = self._offsets.get((topic, partition))
            if last is not None and offset <= last:
                return False
            self._offsets[(topic, partition)] = offset
        rules = self.rules
        state = self._users.get(event.user_id)
        if state is None or self._expired(state, now_ms):
            state = self._users[event.user_id] = _UserState()
        if event.event_id in state.applied:
            return False
        _touch(state.applied, event.event_id, rules.dedup_events_per_user)
        # Late events land at their place in time, not at the end. The same (time, id) already
        # there came from a snapshot: it counts below (the snapshot has no affinities or trending)
        # but is one step, not two.
        insert_at = len(state.recent)
        key = (event.ts_ms, event.event_id)
        while insert_at and event_order(state.recent[insert_at - 1]) > key:
            insert_at -= 1
        if not insert_at or event_order(state.recent[insert_at - 1]) != key:
            state.recent.insert(insert_at, recent_event(event))
            del state.recent[:-rules.history_items]
        _touch(state.seen, event.item_id, rules.seen_items)
        if event.event_type is EventType.PURCHASE:
            _touch(state.bought, event.item_id, rules.bought_items)
        weight = EVENT_WEIGHTS[event.event_type]
        for category in self.item_categories.get(event.item_id, ()):
            state.affinity_log[category] = log_decayed_add(
                state.affinity_log.get(category), event.ts_ms, weight, rules.affinity_half_life_ms)
        score = log_decayed_add(self._trending_log.get(event.item_id), event.ts_ms, weight,
                                rules.trending_half_life_ms)
        self._trending_log[event.item_id] = score
        self._leaders.update(event.item_id, score)
        state.updated_at_ms = state.touched_at_ms = now_ms
        return True

    def get(self, user_id: str, now_ms: int | None = None) -> UserFeatures | None:
        now_ms = wall_ms() if now_ms is None else now_ms
        with self._lock:
            state = self._users.get(user_id)
            if state is None or self._expired(state, self._clock_ms()):
                return None
            half_life = self.rules.affinity_half_life_ms
            return UserFeatures(
                user_id=user_id,
                recent=list(state.recent),
                seen_items=set(state.seen),
                bought_items=set(state.bought),
                category_affinity={c: decayed_value(v, now_ms, half_life)
                                   for c, v in state.affinity_log.items()},
                updated_at_ms=state.updated_at_ms,
            )

    def trending(self, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        now_ms = wall_ms() if now_ms is None else now_ms
        with self._lock:
            # The leaders answer without a scan of every item ever seen: the fallback calls this
            # when Triton is down, on the event loop (an in-process store is not a network call).
            source = self._leaders.items() if k <= self._leaders.size else self._trending_log.items()
            top = heapq.nlargest(k, source, key=by_score)
        return [(item, decayed_value(v, now_ms, self.rules.trending_half_life_ms)) for item, v in top]

    def load_snapshot(self, histories: Mapping[str, Sequence[SnapshotRow]]) -> None:
        keep = self.rules.history_items
        parsed = parse_snapshot(histories, keep)
        with self._lock:
            now_ms = self._clock_ms()
            for user, events, seen, bought in parsed:
                state = self._users.get(user)
                if state is None or self._expired(state, now_ms):
                    state = self._users[user] = _UserState()
                have = {event_order(e) for e in state.recent}
                state.recent = sorted(state.recent + [e for e in events if event_order(e) not in have],
                                      key=event_order)[-keep:]
                for item in seen:
                    _touch(state.seen, item, self.rules.seen_items)
                for item in bought:
                    _touch(state.bought, item, self.rules.bought_items)
                state.touched_at_ms = now_ms

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


def create_store(kind: str, rules: FeatureRules | None = None, *, redis_url: str = "",
                 prefix: str = "recsys",
                 item_categories: Mapping[str, Sequence[str]] | None = None) -> FeatureStore:
    if kind == "memory":
        return InMemoryStore(rules, item_categories=item_categories)
    if kind == "redis":
        return RedisStore(redis_url, rules, prefix=prefix, item_categories=item_categories)
    raise ValueError(f"unknown store {kind!r} (memory | redis)")
