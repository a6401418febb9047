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
