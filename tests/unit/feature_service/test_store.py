import asyncio
import threading
from types import SimpleNamespace

import pytest

from feature_service.store import InMemoryStore, create_store, store_call
from features.user_state import FeatureRules
from tests.unit.feature_service.store_contract import StoreContract, ev


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    def make_store(self):
        return lambda rules, categories: InMemoryStore(rules, item_categories=categories)


def test_a_user_idle_for_longer_than_the_ttl_is_forgotten():
    now = [0]
    store = InMemoryStore(FeatureRules(user_ttl_s=10), clock_ms=lambda: now[0])
    store.apply(ev("u", "a", 1, event_id="e1"))
    store.load_snapshot({"v": [["s1", "b", "view", 1]]})
    now[0] = 9_999
    assert store.get("u") and store.get("v")
    store.apply(ev("v", "c", 2))  # v is active again; u is not
    now[0] = 10_000
    assert store.get("u") is None and store.get("v").recent_items == ["b", "c"]
    # its state starts afresh (Redis: the expired keys are gone), including the dedup window
    assert store.apply(ev("u", "a", 1, event_id="e1"))
    assert store.get("u").recent_items == ["a"]
    now[0] = 100_000
    store.apply(ev("w", "a", 1))  # the periodic sweep frees the memory of both
    assert set(store._users) == {"w"}


def test_only_redis_state_outlives_the_process():
    assert not InMemoryStore.durable
    assert create_store("redis", redis_url="redis://127.0.0.1:1/0").durable


def test_create_store_rejects_unknown_kind():
    with pytest.raises(ValueError):
        create_store("cassandra")


def test_store_call_runs_network_stores_in_a_worker_thread_and_in_process_ones_inline():
    def thread_name(suffix):
        return f"{threading.current_thread().name}{suffix}"

    async def scenario():
        inline = await store_call(SimpleNamespace(blocking=False), thread_name, "!")
        worker = await store_call(SimpleNamespace(blocking=True), thread_name, "!")
        return inline, worker

    inline, worker = asyncio.run(scenario())
    assert inline == f"{threading.current_thread().name}!" and worker != inline
