"""Behaviour every FeatureStore must have. Run against the in-process store here and against a
real Redis in tests/integration/feature_service/test_redis_store.py."""

from __future__ import annotations

from features.events import Event


def ev(user: str, item: str, ts: int, event_id: str | None = None, kind: str = "view") -> Event:
    return Event(event_id=event_id or f"{user}-{item}-{ts}", user_id=user, item_id=item,
                 event_type=kind, ts_ms=ts)


class StoreContract:
    """Subclasses provide a ``store`` fixture with history_items=3."""

    def test_unknown_user_has_no_features(self, store):
        assert store.get("nobody") is None

    def test_events_build_a_time_ordered_history_and_seen_set(self, store):
        assert store.apply(ev("u", "a", 10))
        assert store.apply(ev("u", "b", 20))
        features = store.get("u")
        assert features.recent_items == ["a", "b"]
        assert features.seen_items == {"a", "b"}
        assert features.updated_at_ms is not None

    def test_same_event_id_is_applied_once(self, store):
        assert store.apply(ev("u", "a", 10, event_id="e1"))
        assert not store.apply(ev("u", "a", 10, event_id="e1"))
        assert store.get("u").recent_items == ["a"]

    def test_late_events_land_at_their_time_and_history_is_trimmed(self, store):
        for item, ts in [("a", 10), ("c", 30), ("d", 40), ("b", 20)]:
            store.apply(ev("u", item, ts))
        features = store.get("u")
        assert features.recent_items == ["b", "c", "d"]  # 3 most recent by event time
        assert features.seen_items == {"a", "b", "c", "d"}  # seen is never trimmed

    def test_snapshot_seeds_users_and_live_events_follow_it(self, store):
        store.load_snapshot({"s": ["x", "y", "z", "w"], "t": ["q"]})
        assert store.get("s").recent_items == ["y", "z", "w"]
        assert store.get("s").seen_items == {"x", "y", "z", "w"}
        store.apply(ev("s", "new", 5))
        assert store.get("s").recent_items == ["z", "w", "new"]
        assert store.get("t").recent_items == ["q"]

    def test_users_are_isolated(self, store):
        store.apply(ev("u", "a", 1))
        store.apply(ev("v", "b", 1))
        assert store.get("u").seen_items == {"a"} and store.get("v").seen_items == {"b"}
        assert store.ping()
