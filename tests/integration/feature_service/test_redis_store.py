"""The FeatureStore contract against a real Redis."""

import uuid

import pytest

from feature_service.store import RedisStore
from tests.unit.feature_service.store_contract import StoreContract


class TestRedisStore(StoreContract):
    @pytest.fixture
    def store(self, redis_server):
        # a fresh key prefix per test keeps tests independent on the shared server
        store = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}", history_items=3)
        yield store
        store.close()


def test_state_is_shared_between_store_instances(redis_server):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    writer = RedisStore(redis_server.url, prefix=prefix)
    reader = RedisStore(redis_server.url, prefix=prefix)
    from tests.unit.feature_service.store_contract import ev
    assert writer.apply(ev("u", "a", 1, event_id="x"))
    assert not reader.apply(ev("u", "a", 1, event_id="x"))  # dedup is shared too
    assert reader.get("u").recent_items == ["a"]
