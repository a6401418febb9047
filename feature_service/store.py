"""Per-user real-time features and the catalog's trending items, behind one interface.

``InMemoryStore`` is the embedded default (it lives in the gateway process and is rebuilt from the
topic when the process starts); ``RedisStore`` is shared by several gateway and consumer processes
and survives them. Both apply the rules in ``features.user_state`` and pass the same contract tests
(tests/unit/feature_service/store_contract.py). Writes are idempotent by ``event_id`` within a
bounded window, so Kafka's at-least-once delivery becomes effectively-once; each event is applied
atomically (de-duplication mark and every feature update together, or nothing).

Recent events are in ``features.behaviour.event_order`` (event time, ties by event id) in both
stores, trimmed alike, so a late event lands where it belongs and both stores hand the user tower
the same steps.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import redis

from feature_service.redis_scripts import APPLY_LUA, SNAPSHOT_LUA
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
    is_purchase,
    log_decayed_add,
    recent_event,
    snapshot_events,
)


class StoreUnavailable(RuntimeError):
    """The backing store cannot be reached; callers retry or degrade."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _parse_snapshot(histories: Mapping[str, Sequence[SnapshotRow]],
                    keep: int) -> list[tuple[str, list[RecentEvent], set[str], set[str]]]:
    """Per user: the newest ``keep`` snapshot events, and the seen and bought items of all of them
    (those sets are never trimmed). Everything is parsed before either store changes anything, so a
    malformed snapshot leaves the store as it was."""
    out = []
    for user, rows in histories.items():
        events = snapshot_events(user, rows)
        if events:
            out.append((user, events[-keep:], {e.item_id for e in events},
                        {e.item_id for e in events if is_purchase(e)}))
    return out


class FeatureStore(Protocol):
    rules: FeatureRules
    # True when the state outlives the process, so consumed offsets may be committed.
    durable: bool
    # True when calls do network I/O: async callers run them in a worker thread.
    blocking: bool

    def apply(self, event: Event) -> bool:
        """Record ``event``; False when its ``event_id`` was already applied."""

    def apply_many(self, events: Sequence[Event]) -> list[bool]:
        """``apply`` for each event, in order, in as few round trips as the store allows."""

    def get(self, user_id: str, now_ms: int | None = None) -> UserFeatures | None:
        """The user's features (affinities decayed to ``now_ms``), or None for an unknown user."""

    def trending(self, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` items with the highest decayed popularity, best first."""

    def load_snapshot(self, histories: Mapping[str, Sequence[SnapshotRow]]) -> None:
        """Merge a batch snapshot of user histories (``features.user_state.snapshot_events``: typed
        ``[event_id, item_id, event_type, ts_ms]`` rows, or bare item ids in front of every live
        event) into the recent events, seen items and bought items (purchases). An event whose
        (time, id) is already there is not added again, so loading the same snapshot twice changes
        nothing. Affinities and trending come from the live stream only."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


_T = TypeVar("_T")


async def store_call(store: FeatureStore, fn: Callable[..., _T], *args: object) -> _T:
    """Call ``fn`` (a method of ``store``) from async code: in a worker thread when the store does
    network I/O, inline when it is in-process (a thread hop would cost more than the call)."""
    if store.blocking:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


@dataclass
class _UserState:
    recent: list[RecentEvent] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    bought: set[str] = field(default_factory=set)
    affinity_log: dict[str, float] = field(default_factory=dict)
    updated_at_ms: int | None = None


# How many of the highest trending scores the in-process store keeps ready (the fallback asks for
# a few dozen); a larger k is answered by a scan.
TRENDING_LEADERS = 1024


class InMemoryStore:
    """Thread-safe: the consumer thread writes while request handlers read."""

    durable = False
    blocking = False

    def __init__(self, rules: FeatureRules | None = None, *,
                 item_categories: Mapping[str, Sequence[str]] | None = None,
                 dedup_window_events: int = 200_000) -> None:
        self.rules = rules or FeatureRules()
        self.item_categories = item_categories or {}
        self.dedup_window_events = dedup_window_events
        self._lock = threading.Lock()
        self._users: dict[str, _UserState] = {}
        self._trending_log: dict[str, float] = {}
        self._leaders = TopScores(TRENDING_LEADERS)
        self._applied: OrderedDict[tuple[str, str], None] = OrderedDict()  # (user, event id)

    def apply(self, event: Event) -> bool:
        with self._lock:
            return self._apply(event)

    def apply_many(self, events: Sequence[Event]) -> list[bool]:
        # The lock is taken per event so that readers (request handlers) never wait for a batch.
        out = []
        for event in events:
            with self._lock:
                out.append(self._apply(event))
        return out

    def _apply(self, event: Event) -> bool:
        mark = (event.user_id, event.event_id)
        if mark in self._applied:
            return False
        self._applied[mark] = None
        if len(self._applied) > self.dedup_window_events:
            self._applied.popitem(last=False)
        rules = self.rules
        state = self._users.setdefault(event.user_id, _UserState())
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
        state.seen.add(event.item_id)
        if event.event_type is EventType.PURCHASE:
            state.bought.add(event.item_id)
        weight = EVENT_WEIGHTS[event.event_type]
        for category in self.item_categories.get(event.item_id, ()):
            state.affinity_log[category] = log_decayed_add(
                state.affinity_log.get(category), event.ts_ms, weight, rules.affinity_half_life_ms)
        score = log_decayed_add(self._trending_log.get(event.item_id), event.ts_ms, weight,
                                rules.trending_half_life_ms)
        self._trending_log[event.item_id] = score
        self._leaders.update(event.item_id, score)
        state.updated_at_ms = _now_ms()
        return True

    def get(self, user_id: str, now_ms: int | None = None) -> UserFeatures | None:
        now_ms = _now_ms() if now_ms is None else now_ms
        with self._lock:
            state = self._users.get(user_id)
            if state is None:
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
        now_ms = _now_ms() if now_ms is None else now_ms
        with self._lock:
            # The leaders answer without a scan of every item ever seen: the fallback calls this
            # when Triton is down, on the event loop (an in-process store is not a network call).
            source = self._leaders.items() if k <= self._leaders.size else self._trending_log.items()
            top = heapq.nlargest(k, source, key=by_score)
        return [(item, decayed_value(v, now_ms, self.rules.trending_half_life_ms)) for item, v in top]

    def load_snapshot(self, histories: Mapping[str, Sequence[SnapshotRow]]) -> None:
        keep = self.rules.history_items
        parsed = _parse_snapshot(histories, keep)
        with self._lock:
            for user, events, seen, bought in parsed:
                state = self._users.setdefault(user, _UserState())
                have = {event_order(e) for e in state.recent}
                state.recent = sorted(state.recent + [e for e in events if event_order(e) not in have],
                                      key=event_order)[-keep:]
                state.seen.update(seen)
                state.bought.update(bought)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


# A recent-event member is "<event_id> <item_id> <event_type>", scored by event time. Redis orders
# equal scores by member bytes, and the space sorts below every character ids may contain
# (features.events.ID_PATTERN), so members of one time sort as their ids do and the ZSET order is
# features.behaviour.event_order ("a" before "a0"). The earlier separator "|" sorts above them
# (members written before the change still read; ``get`` sorts, so their ties come out right too).
_SEP = " "
_OLD_SEP = "|"

def _member(event_id: str, item_id: str, event_type: str) -> str:
    return f"{event_id}{_SEP}{item_id}{_SEP}{event_type}"


def _from_member(member: bytes, ts: float) -> RecentEvent:
    text = member.decode()
    event_id, item_id, event_type = text.split(_SEP if _SEP in text else _OLD_SEP)
    return RecentEvent(event_id, item_id, event_type, int(ts))


class RedisStore:
    """Features in Redis under ``<prefix>:u:<user>:{recent,seen,bought,aff,updated}``, trending in
    ``<prefix>:trending``, de-duplication marks ``<prefix>:e:<user_id>|<event_id>`` with a TTL.

    A recent-event member is ``<event_id> <item_id> <event_type>`` (space-separated, so that ties
    in time sort by event id as ``features.behaviour.event_order`` does) scored by event time, so
    that repeated views of one item are all kept."""

    durable = True
    blocking = True

    def __init__(self, url: str, rules: FeatureRules | None = None, *, prefix: str = "recsys",
                 item_categories: Mapping[str, Sequence[str]] | None = None,
                 dedup_ttl_s: int = 7 * 24 * 3600, timeout_ms: int = 1000) -> None:
        self.rules = rules or FeatureRules()
        self.prefix = prefix
        self.item_categories = item_categories or {}
        self.dedup_ttl_s = dedup_ttl_s
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_ms / 1000, socket_connect_timeout=timeout_ms / 1000
        )
        self._apply = self._redis.register_script(APPLY_LUA)
        self._snapshot = self._redis.register_script(SNAPSHOT_LUA)

    def _user_keys(self, user_id: str) -> list[str]:
        base = f"{self.prefix}:u:{user_id}"
        return [f"{base}:recent", f"{base}:seen", f"{base}:bought", f"{base}:aff", f"{base}:updated"]

    @property
    def _trending_key(self) -> str:
        return f"{self.prefix}:trending"

    def _queue_apply(self, pipe, event: Event, now_ms: int) -> None:
        recent, seen, bought, aff, updated = self._user_keys(event.user_id)
        rules = self.rules
        # Scoped to the user: two users' clients may both number their events "1". "|" is not an
        # id character, so no (user, id) pair can spell another's key.
        keys = [f"{self.prefix}:e:{event.user_id}|{event.event_id}", recent, seen, bought, aff, updated,
                self._trending_key]
        args = [self.dedup_ttl_s, event.ts_ms,
                _member(event.event_id, event.item_id, event.event_type.value), event.item_id,
                rules.history_items, now_ms, int(event.event_type is EventType.PURCHASE),
                repr(math.log2(EVENT_WEIGHTS[event.event_type])), rules.affinity_half_life_ms,
                rules.trending_half_life_ms, *self.item_categories.get(event.item_id, ())]
        pipe.evalsha(self._apply.sha, len(keys), *keys, *args)

    def apply(self, event: Event) -> bool:
        return self.apply_many([event])[0]

    def apply_many(self, events: Sequence[Event]) -> list[bool]:
        """One pipeline of EVALSHAs. Not redis-py's script-in-pipeline helper: that adds a
        SCRIPT EXISTS round trip to every batch; the script is loaded only when Redis lacks it
        (first use, or after a restart) and the batch re-sent, which the dedup marks make safe."""
        if not events:
            return []
        now_ms = _now_ms()
        try:
            for attempt in range(2):
                pipe = self._redis.pipeline(transaction=False)
                for event in events:
                    self._queue_apply(pipe, event, now_ms)
                try:
                    return [bool(r) for r in pipe.execute()]
                except redis.exceptions.NoScriptError:
                    if attempt:
                        raise
                    self._redis.script_load(APPLY_LUA)
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")

    def get(self, user_id: str, now_ms: int | None = None) -> UserFeatures | None:
        now_ms = _now_ms() if now_ms is None else now_ms
        recent, seen, bought, aff, updated = self._user_keys(user_id)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrange(recent, 0, -1, withscores=True)
            pipe.smembers(seen)
            pipe.smembers(bought)
            pipe.hgetall(aff)
            pipe.get(updated)
            members, seen_items, bought_items, affinity, updated_at = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if not seen_items:
            return None
        # Sorted here as well: members in the old format order ties differently in Redis.
        events = sorted((_from_member(member, ts) for member, ts in members), key=event_order)
        half_life = self.rules.affinity_half_life_ms
        return UserFeatures(
            user_id=user_id,
            recent=events,
            seen_items={s.decode() for s in seen_items},
            bought_items={b.decode() for b in bought_items},
            category_affinity={c.decode(): decayed_value(float(v), now_ms, half_life)
                               for c, v in affinity.items()},
            updated_at_ms=int(updated_at) if updated_at else None,
        )

    def trending(self, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        now_ms = _now_ms() if now_ms is None else now_ms
        try:
            top = self._redis.zrevrange(self._trending_key, 0, k - 1, withscores=True)
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        half_life = self.rules.trending_half_life_ms
        return [(item.decode(), decayed_value(score, now_ms, half_life)) for item, score in top]

    def load_snapshot(self, histories: Mapping[str, Sequence[SnapshotRow]]) -> None:
        keep = self.rules.history_items
        parsed = _parse_snapshot(histories, keep)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user, events, seen_items, bought_items in parsed:
                recent, seen, bought, *_ = self._user_keys(user)
                args: list[object] = [keep]
                for e in events:
                    args += [e.ts_ms, _member(e.event_id, e.item_id, e.event_type)]
                self._snapshot(keys=[recent], args=args, client=pipe)
                pipe.sadd(seen, *seen_items)
                if bought_items:
                    pipe.sadd(bought, *bought_items)
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._redis.close()


def create_store(kind: str, rules: FeatureRules | None = None, *, redis_url: str = "",
                 prefix: str = "recsys", item_categories: Mapping[str, Sequence[str]] | None = None,
                 dedup_window_events: int = 200_000, dedup_ttl_s: int = 7 * 24 * 3600) -> FeatureStore:
    if kind == "memory":
        return InMemoryStore(rules, item_categories=item_categories,
                             dedup_window_events=dedup_window_events)
    if kind == "redis":
        return RedisStore(redis_url, rules, prefix=prefix, item_categories=item_categories,
                          dedup_ttl_s=dedup_ttl_s)
    raise ValueError(f"unknown store {kind!r} (memory | redis)")
