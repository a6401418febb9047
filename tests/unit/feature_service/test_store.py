import pytest

from feature_service.store import InMemoryStore, create_store
from tests.unit.feature_service.store_contract import StoreContract, ev


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    def store(self):
        return InMemoryStore(history_items=3)


def test_dedup_window_is_bounded():
    store = InMemoryStore(history_items=3, dedup_window_events=2)
    for i in range(3):
        store.apply(ev("u", "a", i, event_id=f"e{i}"))
    # e0 fell out of the window: a redelivery that late would be applied again
    assert store.apply(ev("u", "a", 0, event_id="e0"))
    assert not store.apply(ev("u", "a", 2, event_id="e2"))


def test_create_store_rejects_unknown_kind():
    with pytest.raises(ValueError):
        create_store("cassandra")
