"""Per-user real-time features: recent items (by event time) and the set of items seen.

Two implementations behind one interface: ``InMemoryStore`` (the embedded default, lives in the
gateway process) and ``RedisStore`` (shared by several gateway and consumer processes). Writes are
idempotent by ``event_id`` so that Kafka's at-least-once delivery becomes effectively-once.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import redis

from features.events import Event


class StoreUnavailable(RuntimeError):
    """The backing store cannot be reached; callers retry or degrade."""


@dataclass
class UserFeatures:
    user_id: str
    recent_items: list[str]  # chronological by event time, most recent last
    seen_items: set[str] = field(default_factory=set)
    updated_at_ms: int | None = None  # wall-clock time of the last write


class FeatureStore(Protocol):
    def apply(self, event: Event) -> bool:
        """Record ``event``; False when its ``event_id`` was already applied."""

    def get(self, user_id: str) -> UserFeatures | None:
        """The user's features, or None for a user the store has never heard of."""

    def load_snapshot(self, histories: dict[str, list[str]]) -> None:
        """Seed users from chronological item histories (a batch snapshot)."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


def _now_ms() -> int:
    return int(time.time() * 1000)


class InMemoryStore:
    """Thread-safe: the consumer thread writes while request handlers read."""

    def __init__(self, history_items: int = 100, dedup_window_events: int = 200_000) -> None:
        self.history_items = history_items
        self.dedup_window_events = dedup_window_events
        self._lock = threading.Lock()
        self._recent: dict[str, list[tuple[int, str]]] = {}
        self._seen: dict[str, set[str]] = {}
        self._updated: dict[str, int] = {}
        self._applied: OrderedDict[str, None] = OrderedDict()

    def apply(self, event: Event) -> bool:
        with self._lock:
            if event.event_id in self._applied:
                return False
            self._applied[event.event_id] = None
            if len(self._applied) > self.dedup_window_events:
                self._applied.popitem(last=False)
            recent = self._recent.setdefault(event.user_id, [])
            # Late events land at their place in time, not at the end.
            bisect.insort(recent, (event.ts_ms, event.item_id), key=lambda r: r[0])
            del recent[:-self.history_items]
            self._seen.setdefault(event.user_id, set()).add(event.item_id)
            self._updated[event.user_id] = _now_ms()
            return True

    def get(self, user_id: str) -> UserFeatures | None:
        with self._lock:
            if user_id not in self._seen:
                return None
            return UserFeatures(
                user_id=user_id,
                recent_items=[item for _, item in self._recent.get(user_id, [])],
                seen_items=set(self._seen[user_id]),
                updated_at_ms=self._updated.get(user_id),
            )

    def load_snapshot(self, histories: dict[str, list[str]]) -> None:
        with self._lock:
            for user, items in histories.items():
                # Snapshot items carry no event time: order is what counts, ts 0 keeps them
                # before any live event.
                self._recent[user] = [(0, item) for item in items[-self.history_items:]]
                self._seen[user] = set(items)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


# Atomic apply: de-duplicate, add to the time-ordered recent set, trim, mark seen, stamp.
# One script, so a crash can never leave an event marked as applied but not written.
_APPLY_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[3])
local n = redis.call('ZCARD', KEYS[2])
local keep = tonumber(ARGV[5])
if n > keep then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - keep - 1) end
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('SET', KEYS[4], ARGV[6])
return 1
"""


class RedisStore:
    """Features in Redis: ``<prefix>:u:<user>:recent`` (ZSET by event time), ``:seen`` (SET),
    ``:updated`` (ms), and ``<prefix>:e:<event_id>`` de-duplication keys with a TTL."""

    def __init__(self, url: str, *, prefix: str = "recsys", history_items: int = 100,
                 dedup_ttl_s: int = 7 * 24 * 3600, timeout_ms: int = 1000) -> None:
        self.prefix = prefix
        self.history_items = history_items
        self.dedup_ttl_s = dedup_ttl_s
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_ms / 1000, socket_connect_timeout=timeout_ms / 1000
        )
        self._apply = self._redis.register_script(_APPLY_LUA)

    def _user_keys(self, user_id: str) -> tuple[str, str, str]:
        base = f"{self.prefix}:u:{user_id}"
        return f"{base}:recent", f"{base}:seen", f"{base}:updated"

    def apply(self, event: Event) -> bool:
        recent, seen, updated = self._user_keys(event.user_id)
        # The member is unique per event so that repeated views of one item are all kept.
        member = f"{event.event_id}|{event.item_id}"
        try:
            return bool(self._apply(
                keys=[f"{self.prefix}:e:{event.event_id}", recent, seen, updated],
                args=[self.dedup_ttl_s, event.ts_ms, member, event.item_id, self.history_items,
                      _now_ms()],
            ))
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def get(self, user_id: str) -> UserFeatures | None:
        recent, seen, updated = self._user_keys(user_id)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrange(recent, 0, -1)
            pipe.smembers(seen)
            pipe.get(updated)
            members, seen_items, updated_at = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if not seen_items:
            return None
        return UserFeatures(
            user_id=user_id,
            recent_items=[m.decode().split("|", 1)[1] for m in members],
            seen_items={s.decode() for s in seen_items},
            updated_at_ms=int(updated_at) if updated_at else None,
        )

    def load_snapshot(self, histories: dict[str, list[str]]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user, items in histories.items():
                recent, seen, _ = self._user_keys(user)
                pipe.delete(recent, seen)
                tail = items[-self.history_items:]
                # Score 0 (no event time) and a position prefix keep the snapshot's order.
                pipe.zadd(recent, {f"snap{i:06d}|{item}": 0 for i, item in enumerate(tail)})
                pipe.sadd(seen, *items)
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


def create_store(kind: str, *, redis_url: str = "", prefix: str = "recsys", history_items: int = 100,
                 dedup_window_events: int = 200_000, dedup_ttl_s: int = 7 * 24 * 3600) -> FeatureStore:
    if kind == "memory":
        return InMemoryStore(history_items, dedup_window_events)
    if kind == "redis":
        return RedisStore(redis_url, prefix=prefix, history_items=history_items, dedup_ttl_s=dedup_ttl_s)
    raise ValueError(f"unknown store {kind!r} (memory | redis)")
