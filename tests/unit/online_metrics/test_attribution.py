"""The join of outcome events with their lists: each rule, each reason, and the bounds."""

from __future__ import annotations

import pytest

from online_metrics.attribution import UNATTRIBUTED, Attribution
from tests.unit.online_metrics.helpers import MINUTE, T0, event, exposure

KEY = ("feed", 3, "none")


def totals(attribution: Attribution, key=KEY) -> dict:
    return attribution.stats[key].totals.as_dict()


def reasons(attribution: Attribution) -> dict:
    return {r: n for r, n in attribution.unattributed.items() if n}


def test_a_click_on_a_shown_item_counts_for_its_list():
    att = Attribution()
    att.add_exposure(exposure("r1"))
    att.add_event(event("click", "b", position="1"))
    t = totals(att)
    assert (t["impressions"], t["items_shown"], t["clicked_lists"], t["clicked_at_k_lists"],
            t["clicks"]) == (1, 3, 1, 1, 1)
    assert reasons(att) == {}
    assert att.counters["attributed"] == 1


def test_a_list_counts_once_per_outcome_however_many_events():
    att = Attribution()
    att.add_exposure(exposure("r1"))
    att.add_exposure(exposure("r2"))
    for item in "abc":
        att.add_event(event("click", item))
    att.add_event(event("cart", "a"))
    att.add_event(event("cart", "b"))
    t = totals(att)
    assert (t["impressions"], t["clicked_lists"], t["clicks"], t["carted_lists"], t["carts"]) == \
        (2, 1, 3, 1, 2)
    rates = att.stats[KEY].totals.rates()
    assert rates["ctr_at_k"] == 0.5 and rates["add_to_cart_rate"] == 0.5
    assert rates["purchase_rate"] == 0 and rates["revenue_per_mille"] == 0


def test_ctr_at_k_counts_clicks_at_positions_below_k_only():
    att = Attribution(k=2)
    items = ("a", "b", "c", "d")
    att.add_exposure(exposure("r1", items))
    att.add_exposure(exposure("r2", items))
    att.add_event(event("click", "c", request_id="r1"))  # position 2: not below k
    att.add_event(event("click", "d", request_id="r2"))
    att.add_event(event("click", "a", request_id="r2"))  # position 0 after a deeper click
    t = totals(att)
    assert (t["clicked_lists"], t["clicked_at_k_lists"]) == (2, 1)


def test_keys_are_surface_model_version_and_arm():
    att = Attribution()
    att.add_exposure(exposure("r1", arm="live"))
    att.add_exposure(exposure("r2", arm="candidate", model_version=4))
    att.add_exposure(exposure("r3", surface="push"))
    att.add_event(event("purchase", request_id="r2", value="12.5"))
    assert set(att.stats) == {("feed", 3, "live"), ("feed", 4, "candidate"),
                              ("push", 3, "none")}
    assert totals(att, ("feed", 4, "candidate"))["revenue"] == 12.5
    assert totals(att, ("feed", 3, "live"))["purchases"] == 0


def test_revenue_adds_valid_values_and_counts_invalid_ones():
    att = Attribution()
    att.add_exposure(exposure("r1"))
    att.add_exposure(exposure("r2"))
    att.add_event(event("purchase", "a", value="10.25"))
    att.add_event(event("purchase", "b", value="4.75"))
    att.add_event(event("purchase", "c", value="a lot"))
    att.add_event(event("purchase", "a", request_id="r2", value="-3"))
    att.add_event(event("purchase", "b", request_id="r2", value="nan"))
    att.add_event(event("purchase", "c", request_id="r2"))  # no value: a purchase all the same
    t = totals(att)
    assert (t["revenue"], t["invalid_values"], t["purchases"], t["purchased_lists"]) == (15.0, 3, 6, 2)
    assert att.stats[KEY].totals.rates()["revenue_per_mille"] == 7500.0


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: event("click", request_id=None), "no_request_id"),
    (lambda: event("click", "zzz"), "item_not_in_list"),
    (lambda: event("click", "b", position="2"), "bad_position"),
    (lambda: event("click", "b", position="one"), "bad_position"),
    (lambda: event("click", ts_ms=T0 + 30 * MINUTE + 1), "outside_window"),
    (lambda: event("click", ts_ms=T0 - 1), "before_exposure"),
])
def test_each_unattributed_reason(make, reason):
    att = Attribution()
    att.add_exposure(exposure("r1"))
    att.add_event(make())
    assert reasons(att) == {reason: 1}
    assert totals(att)["clicks"] == 0
    assert reason in UNATTRIBUTED


def test_the_window_includes_its_edge():
    att = Attribution(window_ms=30 * MINUTE)
    att.add_exposure(exposure("r1"))
    att.add_event(event("click", ts_ms=T0 + 30 * MINUTE))
    att.add_event(event("cart", ts_ms=T0 + 30 * MINUTE + 1))
    assert totals(att)["clicks"] == 1 and totals(att)["carts"] == 0
    assert reasons(att) == {"outside_window": 1}


def test_views_are_not_outcomes():
    att = Attribution()
    att.add_exposure(exposure("r1"))
    att.add_event(event("view"))
    att.add_event(event("view", request_id=None))
    assert att.counters["views"] == 2 and att.counters["attributed"] == 0
    assert reasons(att) == {}


def test_an_event_before_its_list_waits_and_is_attributed_when_the_list_arrives():
    att = Attribution(grace_ms=10_000)
    att.add_event(event("click", "c"))
    assert att.snapshot()["state"]["pending_events"] == 1
    att.add_exposure(exposure("r1"))
    assert totals(att)["clicks"] == 1
    assert att.snapshot()["state"]["pending_events"] == 0 and reasons(att) == {}


def test_an_event_whose_list_never_comes_is_unknown_once_lists_pass_the_grace():
    att = Attribution(grace_ms=10_000)
    att.add_event(event("click", request_id="nope", ts_ms=T0))
    att.add_exposure(exposure("other", ts_ms=T0 + 10_000))  # not yet past the grace
    assert reasons(att) == {}
    att.add_exposure(exposure("later", ts_ms=T0 + 10_001))
    assert reasons(att) == {"unknown_request": 1}
    assert att.snapshot()["state"]["pending_events"] == 0


def test_the_wall_clock_ends_the_wait_when_no_list_comes():
    att = Attribution(grace_ms=10_000)
    att.add_event(event("click", request_id="nope", ts_ms=T0))
    att.advance(T0 + 5_000)
    assert reasons(att) == {}
    att.advance(T0 + 10_001)
    assert reasons(att) == {"unknown_request": 1}


def test_redelivered_lists_and_events_count_once():
    att = Attribution()
    att.add_exposure(exposure("r1"))
    att.add_exposure(exposure("r1"))
    click = event("click", event_id="e1")
    att.add_event(click)
    att.add_event(click)
    assert (totals(att)["impressions"], totals(att)["clicks"]) == (1, 1)
    assert att.counters["duplicate_exposures"] == 1 and att.counters["duplicate_events"] == 1


def test_lists_are_forgotten_once_events_pass_their_window():
    att = Attribution(window_ms=MINUTE, grace_ms=1000)
    att.add_exposure(exposure("r1"))
    att.add_event(event("view", ts_ms=T0 + MINUTE + 1001))
    assert att.snapshot()["state"]["exposures_kept"] == 0
    assert att.counters["expired_exposures"] == 1
    att.add_event(event("click", ts_ms=T0 + MINUTE + 1002))  # late: known, outside the window
    assert reasons(att) == {"outside_window": 1}


def test_memory_is_bounded_and_every_eviction_counted():
    att = Attribution(max_exposures=2, max_pending=2, dedup_ids=3, max_keys=2)
    for i in range(4):
        att.add_exposure(exposure(f"r{i}"))
    assert att.snapshot()["state"]["exposures_kept"] == 2
    assert att.counters["evicted_exposures"] == 2
    att.add_event(event("click", request_id="r1"))  # seen, dropped early while in its window
    assert reasons(att) == {"evicted": 1}
    for i in range(3):
        att.add_event(event("click", request_id=f"missing{i}"))
    assert att.snapshot()["state"]["pending_events"] == 2
    assert reasons(att)["pending_overflow"] == 1
    assert len(att._seen_requests) == 3 and len(att._seen_events) == 3
    att.add_exposure(exposure("x", arm="a"))
    att.add_exposure(exposure("y", arm="b"))  # a third key: dropped, counted
    assert set(att.stats) == {KEY, ("feed", 3, "a")}
    assert att.counters["dropped_exposures"] == 1


def test_series_bucket_outcomes_by_the_time_of_their_list():
    att = Attribution(bucket_ms=MINUTE, series_buckets=2)
    att.add_exposure(exposure("r1", ts_ms=T0))
    att.add_exposure(exposure("r2", ts_ms=T0 + MINUTE))
    att.add_event(event("click", request_id="r1", ts_ms=T0 + 2 * MINUTE))
    series = att.snapshot()["keys"][0]["series"]
    assert [(b["impressions"], b["clicked_lists"], b["ctr_at_k"]) for b in series] == \
        [(1, 1, 1.0), (1, 0, 0.0)]
    assert series[1]["start_ms"] - series[0]["start_ms"] == MINUTE
    att.add_exposure(exposure("r3", ts_ms=T0 + 2 * MINUTE))  # the oldest bucket goes
    assert len(att.snapshot()["keys"][0]["series"]) == 2
    assert totals(att)["impressions"] == 3


def test_snapshot_is_plain_data():
    att = Attribution()
    att.add_exposure(exposure("r1"))
    snap = att.snapshot()
    assert snap["keys"][0]["surface"] == "feed" and snap["keys"][0]["arm"] == "none"
    assert set(snap["unattributed"]) == set(UNATTRIBUTED)
    att.add_exposure(exposure("r2"))
    assert snap["keys"][0]["totals"]["impressions"] == 1  # detached


def test_keys_are_listed_with_versions_in_numeric_order():
    att = Attribution()
    for i, version in enumerate((10, 9, "b", 2)):
        att.add_exposure(exposure(f"r{i}", model_version=version))
    assert [k["model_version"] for k in att.snapshot()["keys"]] == [2, 9, 10, "b"]
