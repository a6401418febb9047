"""Per-key counts and their bounded series of time buckets."""

from __future__ import annotations

from online_metrics.stats import Counts, KeyStats

B = 60_000
T = 1_700_000_040_000  # a bucket start (a multiple of 60 s)


def starts(stats: KeyStats) -> list[int]:
    return [b["start_ms"] for b in stats.series()]


def test_buckets_stay_in_time_order_when_lists_arrive_out_of_order():
    stats = KeyStats(B, max_buckets=3)
    for ts in (T + 2 * B, T, T + B + 5):
        stats.served(ts, 10)
    assert starts(stats) == [T, T + B, T + 2 * B]
    stats.served(T + 3 * B, 10)  # the oldest bucket goes
    assert starts(stats) == [T + B, T + 2 * B, T + 3 * B]
    stats.served(T, 10)  # older than every bucket kept: the totals only
    assert starts(stats) == [T + B, T + 2 * B, T + 3 * B]
    assert stats.totals.impressions == 5 and stats.totals.items_shown == 50


def test_an_outcome_of_a_list_whose_bucket_is_gone_counts_in_the_totals():
    stats = KeyStats(B, max_buckets=1)
    stats.served(T, 3)
    stats.served(T + B, 3)
    stats.outcome(T, "click", first=True, first_at_k=True)
    assert stats.totals.clicked_lists == 1
    assert [b["clicked_lists"] for b in stats.series()] == [0]


def test_rates_of_nothing_are_none_not_zero():
    assert set(Counts().rates().values()) == {None}
    counts = Counts(impressions=3, clicked_at_k_lists=1, revenue=0.1 + 0.2)
    assert counts.rates()["revenue_per_mille"] == 100.0
    assert counts.as_dict()["revenue"] == 0.3
