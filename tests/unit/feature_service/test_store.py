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


def test_dedup_window_is_bounded():
    store = InMemoryStore(FeatureRules(history_items=3), dedup_window_events=2)
    for i in range(3):
        store.apply(ev("u", "a", i, event_id=f"e{i}"))
    # e0 fell out of the window: a redelivery that late would be applied again
    assert store.apply(ev("u", "a", 0, event_id="e0"))
    assert not store.apply(ev("u", "a", 2, event_id="e2"))


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
