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
