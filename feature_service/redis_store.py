"""``RedisStore``: the feature store shared by several gateway and consumer processes, surviving them.
Every batch of events is one Lua script call (``feature_service.redis_scripts``): atomic, one round
trip."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

import redis

from feature_service.redis_scripts import APPLY_BATCH_LUA, SNAPSHOT_LUA
from feature_service.store_base import Position, StoreUnavailable, parse_snapshot, wall_ms
from features.behaviour import event_order
from features.events import Event, EventType
from features.user_state import (
    EVENT_WEIGHTS,
    FeatureRules,
    RecentEvent,
    SnapshotRow,
    UserFeatures,
    decayed_value,
)

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
    """Features in Redis under ``<prefix>:u:<user>:{recent,seen,bought,aff,ids,updated}``, trending
    in ``<prefix>:trending``, the last offset applied per partition in ``<prefix>:offsets``
    (``<topic>:<partition>`` -> offset), a touch counter in ``<prefix>:seq``. Every per-user key
    expires ``user_ttl_s`` after the user's last write.

    A recent-event member is ``<event_id> <item_id> <event_type>`` (space-separated, so that ties
    in time sort by event id as ``features.behaviour.event_order`` does) scored by event time, so
    that repeated views of one item are all kept. Seen and bought items and the recent event ids
    are ZSETs scored by touch order (the counter), trimmed to their caps."""

    durable = True
    blocking = True

    def __init__(self, url: str, rules: FeatureRules | None = None, *, prefix: str = "recsys",
                 item_categories: Mapping[str, Sequence[str]] | None = None,
                 timeout_ms: int = 1000) -> None:
        self.rules = rules or FeatureRules()
        self.prefix = prefix
        self.item_categories = item_categories or {}
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_ms / 1000, socket_connect_timeout=timeout_ms / 1000
        )
        self._apply = self._redis.register_script(APPLY_BATCH_LUA)
        self._snapshot = self._redis.register_script(SNAPSHOT_LUA)
        r = self.rules
        self._rules_arg = {
            "history": r.history_items, "seen": r.seen_items, "bought": r.bought_items,
            "dedup": r.dedup_events_per_user, "ttl_s": r.user_ttl_s, "trending": r.trending_items,
            "affinity_half_life_ms": r.affinity_half_life_ms,
            "trending_half_life_ms": r.trending_half_life_ms,
        }
        self._log2_weights = {kind: math.log2(w) for kind, w in EVENT_WEIGHTS.items()}

    def _user_keys(self, user_id: str) -> list[str]:
        base = f"{self.prefix}:u:{user_id}"
        return [f"{base}:recent", f"{base}:seen", f"{base}:bought", f"{base}:aff", f"{base}:updated"]

    @property
    def _trending_key(self) -> str:
        return f"{self.prefix}:trending"

    @property
    def _offsets_key(self) -> str:
        return f"{self.prefix}:offsets"

    @property
    def _seq_key(self) -> str:
        return f"{self.prefix}:seq"  # a counter: the touch order of seen and bought items

    def _batch_argument(self, events: Sequence[Event], positions: Sequence[Position] | None,
                        now_ms: int) -> str:
        rows = []
        for i, e in enumerate(events):
            part, offset = ("", -1) if positions is None else (
                f"{positions[i][0]}:{positions[i][1]}", positions[i][2])
            rows.append([e.user_id, e.event_id, e.item_id, e.event_type.value, e.ts_ms,
                         int(e.event_type is EventType.PURCHASE), self._log2_weights[e.event_type],
                         list(self.item_categories.get(e.item_id, ())), part, offset])
        return json.dumps({"prefix": self.prefix, "now_ms": now_ms, "rules": self._rules_arg,
                           "trending_key": self._trending_key, "offsets_key": self._offsets_key,
                           "seq_key": self._seq_key,
                           "events": rows}, separators=(",", ":"))

    def apply(self, event: Event) -> bool:
        return self.apply_many([event])[0]

    def apply_many(self, events: Sequence[Event],
                   positions: Sequence[Position] | None = None) -> list[bool]:
        """One script call for the whole batch: atomic, and one round trip."""
        if not events:
            return []
        try:
            results = self._apply(args=[self._batch_argument(events, positions, wall_ms())])
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [bool(r) for r in results]

    def applied_offsets(self) -> dict[tuple[str, int], int]:
        try:
            marks = self._redis.hgetall(self._offsets_key)
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        out = {}
        for field_, offset in marks.items():
            topic, _, partition = field_.decode().rpartition(":")
            out[(topic, int(partition))] = int(offset)
        return out

    def forget_offsets(self, partitions: Iterable[tuple[str, int]]) -> None:
        fields = [f"{topic}:{partition}" for topic, partition in partitions]
        if not fields:
            return
        try:
            self._redis.hdel(self._offsets_key, *fields)
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def get(self, user_id: str, now_ms: int | None = None) -> UserFeatures | None:
        now_ms = wall_ms() if now_ms is None else now_ms
        recent, seen, bought, aff, updated = self._user_keys(user_id)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrange(recent, 0, -1, withscores=True)
            pipe.zrange(seen, 0, -1)
            pipe.zrange(bought, 0, -1)
            pipe.hgetall(aff)
            pipe.get(updated)
            members, seen_items, bought_items, affinity, updated_at = pipe.execute(raise_on_error=False)
            # Not written since seen and bought became capped ZSETs: still plain SETs.
            if isinstance(seen_items, redis.ResponseError):
                seen_items = self._redis.smembers(seen)
            if isinstance(bought_items, redis.ResponseError):
                bought_items = self._redis.smembers(bought)
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        for reply in (members, affinity, updated_at):
            if isinstance(reply, Exception):
                raise StoreUnavailable(str(reply))
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
        now_ms = wall_ms() if now_ms is None else now_ms
        try:
            top = self._redis.zrevrange(self._trending_key, 0, k - 1, withscores=True)
        except redis.RedisError as exc:
            raise StoreUnavailable(str(exc)) from exc
        half_life = self.rules.trending_half_life_ms
        return [(item.decode(), decayed_value(score, now_ms, half_life)) for item, score in top]

    def load_snapshot(self, histories: Mapping[str, Sequence[SnapshotRow]]) -> None:
        parsed = parse_snapshot(histories, self.rules.history_items)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for user, events, seen_items, bought_items in parsed:
                argument = json.dumps({
                    "prefix": self.prefix, "user": user, "seq_key": self._seq_key, "rules": self._rules_arg,
                    "recent": [[e.ts_ms, _member(e.event_id, e.item_id, e.event_type)] for e in events],
                    "seen": seen_items, "bought": bought_items})
                self._snapshot(args=[argument], client=pipe)
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
