"""Behaviour every FeatureStore must have. Run against the in-process store here and against a
real Redis in tests/integration/feature_service/test_redis_store.py."""

from __future__ import annotations

import pytest

from features.behaviour import event_order
from features.events import Event
from features.user_state import FeatureRules

HALF_LIFE_MS = 1000
RULES = FeatureRules(history_items=3, affinity_half_life_ms=HALF_LIFE_MS,
                     trending_half_life_ms=HALF_LIFE_MS)
CATEGORIES = {"a": ("Action",), "b": ("Action", "Comedy"), "c": ("Comedy",)}


def ev(user: str, item: str, ts: int, event_id: str | None = None, kind: str = "view") -> Event:
    return Event(event_id=event_id or f"{user}-{item}-{ts}", user_id=user, item_id=item,
                 event_type=kind, ts_ms=ts)


class StoreContract:
    """Subclasses provide ``make_store(rules, item_categories) -> FeatureStore``."""

    @pytest.fixture
    def store(self, make_store):
        return make_store(RULES, CATEGORIES)

    def test_unknown_user_has_no_features(self, store):
        assert store.get("nobody") is None

    def test_events_build_a_time_ordered_history_with_types_and_times(self, store):
        assert store.apply(ev("u", "a", 10, event_id="e1"))
        assert store.apply(ev("u", "b", 20, event_id="e2", kind="purchase"))
        features = store.get("u")
        assert features.recent_items == ["a", "b"]
        assert [(e.event_id, e.event_type, e.ts_ms) for e in features.recent] == [
            ("e1", "view", 10), ("e2", "purchase", 20)]
        assert features.seen_items == {"a", "b"}
        assert features.bought_items == {"b"}
        assert features.updated_at_ms is not None

    def test_same_event_id_is_applied_once(self, store):
        assert store.apply(ev("u", "a", 10, event_id="e1"))
        assert not store.apply(ev("u", "a", 10, event_id="e1"))
        assert store.apply_many([ev("u", "b", 11, event_id="e2"), ev("u", "b", 11, event_id="e2"),
                                 ev("u", "a", 10, event_id="e1")]) == [True, False, False]
        assert store.get("u").recent_items == ["a", "b"]
        # neither was counted twice in the trending scores
        assert dict(store.trending(5, now_ms=11)) == pytest.approx({"b": 1.0, "a": 2 ** (-1 / 1000)})

    def test_late_events_land_at_their_time_and_history_is_trimmed(self, store):
        for item, ts in [("a", 10), ("c", 30), ("d", 40), ("b", 20)]:
            store.apply(ev("u", item, ts))
        features = store.get("u")
        assert features.recent_items == ["b", "c", "d"]  # 3 most recent by event time
        assert features.seen_items == {"a", "b", "c", "d"}  # seen has a cap of its own

    def test_repeated_views_of_one_item_are_all_kept(self, store):
        store.apply_many([ev("u", "a", 1, "x1"), ev("u", "a", 2, "x2")])
        assert store.get("u").recent_items == ["a", "a"]

    def test_category_affinity_is_weighted_and_decays_with_event_time(self, store):
        store.apply(ev("u", "a", 0, kind="view"))       # Action 1
        store.apply(ev("u", "c", 1000, kind="cart"))    # Comedy 4, one half life later
        store.apply(ev("u", "unknown", 1000))           # no categories: no affinity
        aff = store.get("u", now_ms=1000).category_affinity
        assert aff == pytest.approx({"Action": 0.5, "Comedy": 4.0})
        later = store.get("u", now_ms=3000).category_affinity
        assert later == pytest.approx({"Action": 0.125, "Comedy": 1.0})
        assert store.get("u", now_ms=3000).top_categories(1) == ["Comedy"]

    def test_affinity_does_not_depend_on_arrival_order(self, store, make_store):
        events = [ev("u", "b", 500, kind="click"), ev("u", "a", 0), ev("u", "b", 2000, kind="purchase")]
        other = make_store(RULES, CATEGORIES)
        store.apply_many(events)
        other.apply_many(events[::-1])  # the late events first
        assert store.get("u", 2000).category_affinity == pytest.approx(
            other.get("u", 2000).category_affinity)
        assert store.get("u", 2000).category_affinity["Comedy"] == pytest.approx(2 * 2 ** -1.5 + 8)

    def test_trending_is_time_decayed_popularity(self, store):
        # "a": 3 views long ago; "b": one click just now; "c": one view just now
        store.apply_many([ev(f"u{i}", "a", 0) for i in range(3)]
                         + [ev("v", "b", 4000, kind="click"), ev("w", "c", 4000)])
        top = store.trending(3, now_ms=4000)
        assert [item for item, _ in top] == ["b", "c", "a"]
        assert [score for _, score in top] == pytest.approx([2.0, 1.0, 3 / 16])
        assert [item for item, _ in store.trending(1, now_ms=4000)] == ["b"]

    def test_snapshot_seeds_users_merges_and_is_idempotent(self, store):
        store.apply(ev("s", "live", 5))
        store.load_snapshot({"s": ["x", "y", "z", "w"], "t": ["q"]})
        store.load_snapshot({"s": ["x", "y", "z", "w"], "t": ["q"]})
        assert store.get("s").recent_items == ["z", "w", "live"]  # live events stay the newest
        assert store.get("s").seen_items == {"x", "y", "z", "w", "live"}
        assert store.get("t").recent_items == ["q"]
        store.apply(ev("t", "new", 5))
        assert store.get("t").recent_items == ["q", "new"]

    def test_plain_snapshot_rows_are_unknown_steps_at_time_zero_in_file_order(self, store):
        store.load_snapshot({"s": ["x", "y", "x", "z"]})
        assert [(e.event_id, e.item_id, e.event_type, e.ts_ms) for e in store.get("s").recent] == [
            ("snapshot:000001", "y", "unknown", 0), ("snapshot:000002", "x", "unknown", 0),
            ("snapshot:000003", "z", "unknown", 0)]
        assert store.get("s").bought_items == set()

    def test_typed_snapshot_rows_sort_among_live_events_by_real_time(self, store):
        store.apply_many([ev("s", "a", 10, "L1"), ev("s", "b", 40, "L4", kind="cart")])
        # "row~3": an id the offline loader generates for a log without ids
        rows = [["row~3", "c", "rating", 30], ["S2", "d", "purchase", 20], ["S0", "e", "view", 5],
                ["S5", "f", "wishlist", 50]]  # a type the model has no embedding for: "unknown"
        store.load_snapshot({"s": rows})
        store.load_snapshot({"s": rows})  # idempotent
        features = store.get("s")
        assert [(e.event_id, e.item_id, e.event_type, e.ts_ms) for e in features.recent] == [
            ("row~3", "c", "rating", 30), ("L4", "b", "cart", 40), ("S5", "f", "unknown", 50)]
        assert features.seen_items == {"a", "b", "c", "d", "e", "f"}  # from every row, trimmed or not
        assert features.bought_items == {"d"}  # snapshot purchases count as bought

    def test_a_live_event_already_in_the_snapshot_is_one_step(self, store):
        store.load_snapshot({"s": [["e1", "a", "view", 10], ["e2", "b", "purchase", 20]]})
        # the live delivery of a snapshot event: applied (trending counts it) but not a second step
        assert store.apply(ev("s", "b", 20, "e2", kind="purchase"))
        assert store.apply(ev("s", "c", 15, "e3"))
        assert [e.event_id for e in store.get("s").recent] == ["e1", "e3", "e2"]
        assert dict(store.trending(5, now_ms=20)) == pytest.approx({"b": 8.0, "c": 2 ** (-5 / 1000)})
        # and a snapshot of events the store already has adds nothing
        store.load_snapshot({"s": [["e3", "c", "view", 15], ["e2", "b", "purchase", 20]]})
        assert [e.event_id for e in store.get("s").recent] == ["e1", "e3", "e2"]

    def test_malformed_snapshot_is_refused_and_changes_nothing(self, store):
        for bad in ({"s": [["e1", "a", "view"]]}, {"s": [["e1", "a b", "view", 1]]},
                    {"s": [["e1", "a", "view", "1"]]}, {"s": [["e1", "a", "view", -1]]},
                    {"s": [["e|1", "a", "view", 1]]}, {"s": ["a|b"]}, {"bad user": ["a"]},
                    {"s": ["a\n"]}, {"u\n": ["a"]}):  # a trailing newline is not a valid id
            with pytest.raises(ValueError):
                store.load_snapshot({"ok": ["a"], **bad})
        assert store.get("ok") is None and store.get("s") is None

    def test_ties_in_time_are_ordered_by_event_id_like_event_order(self, store, make_store):
        # Prefix-related ids at one time: "a" sorts before "a-", "a0", "a:" (as Python compares
        # strings), and the trim drops the oldest by that order in every store.
        ids = ["a0", "b", "a", "a:", "a-"]
        store.apply_many([ev("u", f"i{n}", 7, event_id) for n, event_id in enumerate(ids)])
        assert [e.event_id for e in store.get("u").recent] == ["a0", "a:", "b"]
        roomy = make_store(FeatureRules(history_items=10), CATEGORIES)
        roomy.apply_many([ev("u", "x", 7, event_id) for event_id in ids]
                         + [ev("u", "x", 6, "e10"), ev("u", "x", 6, "e1")])
        recent = roomy.get("u").recent
        assert [e.event_id for e in recent] == ["e1", "e10", "a", "a-", "a0", "a:", "b"]
        assert recent == sorted(recent, key=event_order)

    def test_a_late_event_lands_at_its_time_among_ties(self, store):
        store.apply_many([ev("u", "a", 10, "e1"), ev("u", "b", 30, "e3", kind="cart"),
                          ev("u", "c", 20, "e20")])
        store.apply(ev("u", "d", 20, "e2", kind="click"))  # later than e3 in arrival, earlier in time
        assert [(e.event_id, e.event_type) for e in store.get("u").recent] == [
            ("e2", "click"), ("e20", "view"), ("e3", "cart")]

    def test_a_duplicate_event_id_is_dropped_even_with_other_content(self, store):
        assert store.apply(ev("u", "a", 10, "e1", kind="cart"))
        assert not store.apply(ev("u", "b", 5, "e1", kind="view"))  # a re-delivery, rewritten
        features = store.get("u")
        assert [(e.event_id, e.item_id, e.event_type, e.ts_ms) for e in features.recent] == [
            ("e1", "a", "cart", 10)]
        assert features.seen_items == {"a"}

    def test_event_ids_are_scoped_to_their_user(self, store):
        # Two clients numbering their events "1": neither event is a duplicate of the other.
        assert store.apply(ev("u", "a", 10, event_id="1"))
        assert store.apply(ev("v", "b", 10, event_id="1"))
        assert not store.apply(ev("v", "b", 10, event_id="1"))
        assert store.get("v").recent_items == ["b"] and store.get("u").recent_items == ["a"]

    def test_users_are_isolated(self, store):
        store.apply(ev("u", "a", 1))
        store.apply(ev("v", "b", 1))
        assert store.get("u").seen_items == {"a"} and store.get("v").seen_items == {"b"}
        assert store.ping()

    def test_seen_and_bought_keep_the_most_recently_touched_items(self, make_store):
        store = make_store(FeatureRules(seen_items=3, bought_items=2), {})
        for i, item in enumerate(["a", "b", "c", "a", "d"]):  # "a" touched again: newer than "b"
            store.apply(ev("u", item, i, kind="purchase"))
        features = store.get("u")
        assert features.seen_items == {"c", "a", "d"}
        assert features.bought_items == {"a", "d"}

    def test_a_retry_is_recognised_among_the_users_last_n_event_ids(self, make_store):
        store = make_store(FeatureRules(dedup_events_per_user=2), {})
        for i in range(3):
            assert store.apply(ev("u", "a", i, event_id=f"e{i}"))
        assert not store.apply(ev("u", "a", 2, event_id="e2"))
        assert not store.apply(ev("u", "a", 1, event_id="e1"))
        # e0 fell out of the user's window; another user's events never push it out
        assert store.apply(ev("u", "a", 0, event_id="e0"))

    def test_a_redelivery_is_recognised_by_offset_however_old(self, make_store):
        store = make_store(FeatureRules(dedup_events_per_user=1), {})
        events = [ev("u", "a", i, event_id=f"e{i}") for i in range(3)]
        positions = [("t", 0, 10), ("t", 0, 11), ("t", 1, 5)]
        assert store.apply_many(events, positions) == [True, True, True]
        assert store.applied_offsets() == {("t", 0): 11, ("t", 1): 5}
        # The whole partition again (a consumer group reset): the event ids fell out of the
        # window long ago, the offsets say it all happened.
        again = [ev("u", "a", 0, event_id="e0"), ev("u", "a", 1, event_id="e1"),
                 ev("u", "a", 3, event_id="e3")]
        assert store.apply_many(again, [("t", 0, 10), ("t", 0, 11), ("t", 0, 12)]) == [False, False, True]
        assert [e.event_id for e in store.get("u").recent] == ["e0", "e1", "e2", "e3"]
        assert store.applied_offsets()[("t", 0)] == 12
        store.forget_offsets([("t", 0)])  # the topic was re-created: offsets start again
        assert store.applied_offsets() == {("t", 1): 5}
        assert store.apply_many([ev("u", "b", 9, event_id="n")], [("t", 0, 0)]) == [True]

    def test_trending_keeps_its_best_items(self, make_store):
        store = make_store(FeatureRules(trending_items=2), {})
        for i, item in enumerate("abcdefgh"):
            for j in range(i + 1):  # item h the most popular
                store.apply(ev(f"u{j}", item, 10, event_id=f"{item}{j}"))
        top = store.trending(100, now_ms=10)
        assert [item for item, _ in top[:2]] == ["h", "g"]
        assert len(top) <= 4  # trimmed in bulk, at twice the cap

