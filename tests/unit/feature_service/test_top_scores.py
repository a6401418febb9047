import heapq
import random

from feature_service.top_scores import TopScores


def test_leaders_equal_a_full_scan_while_scores_only_grow():
    rng = random.Random(0)
    leaders, everything = TopScores(8), {}
    for _ in range(5000):
        item = f"i{int(rng.paretovariate(1.2)) % 300}"
        everything[item] = everything.get(item, 0.0) + rng.choice((0.5, 1.0, 2.0))  # ties happen
        leaders.update(item, everything[item])
        want = heapq.nlargest(8, everything.items(), key=lambda kv: (kv[1], kv[0]))
        assert heapq.nlargest(8, leaders.items(), key=lambda kv: (kv[1], kv[0])) == want
    assert len(leaders._heap) <= 4 * 8 + 1  # stale entries are compacted away


def test_trending_of_the_in_process_store_reads_only_the_leaders(monkeypatch):
    from feature_service import store as store_module
    from feature_service.store import InMemoryStore
    from features.events import Event

    monkeypatch.setattr(store_module, "TRENDING_LEADERS", 4)
    store = InMemoryStore()
    for n in range(50):
        for _ in range(n % 7 + 1):
            store.apply(Event(user_id="u", item_id=f"i{n}", event_type="view", ts_ms=1000 + n))
    assert len(store._leaders.items()) == 4
    top = [item for item, _ in store.trending(3, now_ms=2000)]
    scan = heapq.nlargest(3, store._trending_log.items(), key=lambda kv: (kv[1], kv[0]))
    assert top == [item for item, _ in scan]
    assert len(store.trending(10, now_ms=2000)) == 10  # more than the leaders: a full scan
