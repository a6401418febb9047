"""The FeatureStore contract against a real Redis."""

import uuid

import pytest

from feature_service.store import RedisStore, StoreUnavailable
from tests.unit.feature_service.store_contract import StoreContract, ev


class TestRedisStore(StoreContract):
    @pytest.fixture
    def make_store(self, redis_server):
        stores = []

        def make(rules, categories):
            # a fresh key prefix per store keeps tests independent on the shared server
            stores.append(RedisStore(redis_server.url, rules, prefix=f"t{uuid.uuid4().hex[:8]}",
                                     item_categories=categories))
            return stores[-1]

        yield make
        for store in stores:
            store.close()


def test_state_is_shared_between_store_instances(redis_server):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    writer = RedisStore(redis_server.url, prefix=prefix)
    reader = RedisStore(redis_server.url, prefix=prefix)
    assert writer.apply(ev("u", "a", 1, event_id="x"))
    assert not reader.apply(ev("u", "a", 1, event_id="x"))  # dedup is shared too
    assert reader.get("u").recent_items == ["a"]


def test_unreachable_redis_raises_store_unavailable():
    store = RedisStore("redis://127.0.0.1:1/0", timeout_ms=200)
    with pytest.raises(StoreUnavailable):
        store.apply(ev("u", "a", 1))
    assert not store.ping()


def test_members_written_in_the_old_format_still_read_in_event_order(redis_server):
    store = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    recent = f"{store.prefix}:u:u:recent"
    # "<id>|<item>|<type>", as stores before the space separator wrote them: Redis orders "a|"
    # after "a0|"
    store._redis.zadd(recent, {"a|x|view": 5, "a0|y|cart": 5, "b|z|purchase": 3})
    store._redis.sadd(f"{store.prefix}:u:u:seen", "x", "y", "z")
    assert store.apply(ev("u", "w", 5, event_id="a00"))
    assert not store.apply(ev("u", "w", 6, event_id="a00"))
    assert store.apply(ev("u", "x", 5, event_id="a"))  # already there in the old format: one step
    assert [(e.event_id, e.item_id, e.event_type, e.ts_ms) for e in store.get("u").recent] == [
        ("b", "z", "purchase", 3), ("a", "x", "view", 5), ("a0", "y", "cart", 5), ("a00", "w", "view", 5)]
    store.close()


def test_every_user_key_expires_after_the_ttl_and_the_state_with_it(redis_server):
    import time

    from features.user_state import FeatureRules

    store = RedisStore(redis_server.url, FeatureRules(user_ttl_s=1), prefix=f"t{uuid.uuid4().hex[:8]}",
                       item_categories={"a": ("Action",)})
    store.apply(ev("u", "a", 1, kind="purchase"))
    store.load_snapshot({"v": [["s1", "b", "view", 1]]})
    keys = store._redis.keys(f"{store.prefix}:u:*")
    assert len(keys) == 6 + 2  # u: recent, seen, bought, aff, ids, updated; v: recent, seen
    assert all(0 < store._redis.pttl(k) <= 1000 for k in keys)
    time.sleep(1.2)
    assert store.get("u") is None and store.get("v") is None
    assert store._redis.keys(f"{store.prefix}:u:*") == []
    store.close()


def test_seen_and_bought_sets_of_the_uncapped_layout_are_read_and_converted(redis_server):
    store = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    seen, bought = f"{store.prefix}:u:u:seen", f"{store.prefix}:u:u:bought"
    store._redis.sadd(seen, "x", "y")
    store._redis.sadd(bought, "y")
    store._redis.zadd(f"{store.prefix}:u:u:recent", {"e0 x view": 1, "e1 y purchase": 2})
    assert store.get("u").seen_items == {"x", "y"} and store.get("u").bought_items == {"y"}
    assert store.apply(ev("u", "z", 3, event_id="e2", kind="purchase"))
    assert store._redis.type(seen) == b"zset" and store._redis.type(bought) == b"zset"
    features = store.get("u")
    assert features.seen_items == {"x", "y", "z"} and features.bought_items == {"y", "z"}
    store.close()


def test_an_uncapped_set_is_capped_when_converted(redis_server):
    from features.user_state import FeatureRules

    store = RedisStore(redis_server.url, FeatureRules(seen_items=3, bought_items=2),
                       prefix=f"t{uuid.uuid4().hex[:8]}")
    store._redis.sadd(f"{store.prefix}:u:u:seen", *[f"old{i}" for i in range(50)])
    store._redis.sadd(f"{store.prefix}:u:u:bought", *[f"old{i}" for i in range(50)])
    assert store.apply(ev("u", "old1", 3, event_id="e1", kind="purchase"))  # already there
    features = store.get("u")
    assert len(features.seen_items) == 3 and "old1" in features.seen_items
    assert len(features.bought_items) == 2 and "old1" in features.bought_items
    store.close()


def test_memory_per_user_stays_within_the_documented_budget(redis_server):
    """Users at every cap (more distinct items, purchases and events than kept) and typical ones:
    Redis's memory grows by less than the budget per user (docs/features.md, "Memory")."""
    from feature_service.store_base import USER_MEMORY_BUDGET_BYTES
    from features.events import Event

    store = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}",
                       item_categories={f"i{i}": (f"c{i % 40}", f"c{i * 7 % 40}") for i in range(2000)})
    caps = store.rules
    before = store._redis.info("memory")["used_memory"]
    heavy, typical, events = 20, 500, []
    for u in range(heavy):
        n = max(caps.seen_items, caps.bought_items, caps.history_items, caps.dedup_events_per_user) + 100
        events += [Event(event_id=f"h{u}-{j}", user_id=f"heavy{u}", item_id=f"i{j}",
                         event_type="purchase", ts_ms=1_700_000_000_000 + j) for j in range(n)]
    for u in range(typical):
        events += [Event(event_id=f"t{u}-{j}", user_id=f"typical{u}", item_id=f"i{(u * 31 + j) % 2000}",
                         event_type=("view", "click", "cart", "purchase")[j % 4],
                         ts_ms=1_700_000_000_000 + j) for j in range(30)]
    for start in range(0, len(events), 500):
        store.apply_many(events[start:start + 500])
    for u in range(heavy):  # at the caps: nothing grows past them
        features = store.get(f"heavy{u}")
        assert len(features.seen_items) == caps.seen_items
        assert len(features.bought_items) == caps.bought_items
        assert len(features.recent) == caps.history_items
        assert store._redis.zcard(f"{store.prefix}:u:heavy{u}:ids") == caps.dedup_events_per_user
    grown = store._redis.info("memory")["used_memory"] - before
    assert grown <= (heavy + typical) * USER_MEMORY_BUDGET_BYTES, grown / (heavy + typical)
    per_heavy = max(sum(store._redis.memory_usage(key)
                        for key in store._redis.keys(f"{store.prefix}:u:heavy{u}:*"))
                    for u in range(heavy))
    assert per_heavy <= USER_MEMORY_BUDGET_BYTES
    store.close()
