"""perf/soak_checks.py: the soak test's verdicts on canned data (the RSS slope, 5xx per endpoint,
request windows, the store vs the oracle, the dead-letter topic, the memory budget)."""

import pytest

from perf.soak_checks import (
    Response,
    compare_dead_letters,
    compare_trending,
    compare_users,
    memory_check,
    memory_per_user,
    rss_slope_mib_per_h,
    server_errors,
    split_ambiguous,
    windows,
)
from perf.soak_traffic import MALFORMED_EVERY, gateway_garbage, kafka_garbage


def test_slope_of_a_straight_line_in_mib_per_hour():
    times = [0, 60, 120, 180, 240]
    assert rss_slope_mib_per_h(times, [100, 101, 102, 103, 104]) == pytest.approx(60)
    assert rss_slope_mib_per_h(times, [100] * 5) == pytest.approx(0)


def test_slope_leaves_out_the_warm_up_and_missing_samples():
    times = [0, 10, 20, 30, 40, 50]
    rss = [10, 300, 500, 500, None, 500]  # grows while warming up, then flat
    assert rss_slope_mib_per_h(times, rss, warmup_s=20) == pytest.approx(0)
    assert rss_slope_mib_per_h(times, rss, warmup_s=35) is None  # too few samples left


def test_a_restart_is_a_new_segment_not_a_drop():
    # 200 MiB, flat; restarted at t=100 and flat at 50 MiB after settling (a fresh process is
    # smaller): a single line through both would read as shrinking.
    times = list(range(0, 200, 10))
    rss = [200 if t < 100 else (None if t < 110 else 20 if t < 130 else 50) for t in times]
    assert rss_slope_mib_per_h(times, rss, [(100, 110)], settle_s=20) == pytest.approx(0)
    assert rss_slope_mib_per_h(times, rss) < -1000


def test_a_leak_in_every_segment_is_found():
    times = list(range(0, 200, 10))
    rss = [100 + t / 10 if t < 100 else 20 + t / 10 for t in times]  # 0.1 MiB/s, restarted at 100
    assert rss_slope_mib_per_h(times, rss, [(100, 100)]) == pytest.approx(360)


def test_server_errors_are_counted_per_endpoint_and_listed():
    responses = [Response(1, "GET r", 200, 5), Response(2, "POST e", 503, 5000, "Kafka: timed out"),
                 Response(3, "POST e", 503, 5000, "Kafka"), Response(4, "GET r", 500, 9, "boom"),
                 Response(5, "POST e", 422, 3), Response(6, "GET r", 0, 15000, "timeout")]
    errors = server_errors(responses)
    assert errors["count"] == 3
    assert errors["by_endpoint"] == {"POST e": 2, "GET r": 1}
    assert errors["by_status"] == {"POST e 503": 2, "GET r 500": 1}
    assert (errors["first_s"], errors["last_s"]) == (2, 4)
    assert errors["listed"][0]["detail"] == "Kafka: timed out"
    assert errors["by_message"] == {"Kafka: timed out": 1, "Kafka": 1, "boom": 1}
    assert server_errors([Response(1, "GET r", 200, 5)])["count"] == 0


def test_alike_errors_group_by_message_without_numbers_and_ids():
    body = '{{"message":"expired after {n} ms","details":[{{"event_id":"x{n}"}}]}}'
    responses = [Response(1, "POST e", 503, 5000, body.format(n=n)) for n in (5001, 5003)]
    assert server_errors(responses)["by_message"] == {'{"message":"expired after N ms",': 2}


def test_windows_count_classes_and_take_get_latency_percentiles():
    responses = [Response(t, "GET r", 200, 10 + t) for t in range(10)]
    responses += [Response(12, "POST e", 503, 5000), Response(13, "POST e", 422, 1),
                  Response(14, "GET r", 0, 15000)]
    first, second = windows(responses, 10)
    assert (first["requests"], first["n_2xx"], first["get_p50_ms"]) == (10, 10, 14.5)
    assert (second["n_5xx"], second["n_4xx"], second["n_none"], second["get_p99_ms"]) == (1, 1, 1, None)


def _user(*events, seen=None, bought=(), affinity=None):
    return {"recent": list(events), "seen": set(seen if seen is not None else {e[1] for e in events}),
            "bought": set(bought), "affinity": affinity or {"Drama": 1.0}}


E1, E2, E3 = ("e1", "i1", "view", 1), ("e2", "i2", "cart", 2), ("e3", "i3", "view", 3)


def test_the_same_state_passes():
    expected = {"u1": _user(E1, E2), "u2": None}
    result = compare_users(expected, {"u1": _user(E1, E2), "u2": None})
    assert result["users_mismatched"] == 0 and result["events_expected"] == 2
    assert result["lost"] == result["duplicated"] == result["unexpected"] == 0


def test_lost_duplicated_unexpected_and_reordered_events_are_counted():
    expected = {"u1": _user(E1, E2), "u2": _user(E3), "u3": _user(E1, E2), "u4": _user(E1)}
    got = {"u1": _user(E1), "u2": _user(E3, E3), "u3": _user(E2, E1), "u4": _user(E1, E2)}
    result = compare_users(expected, got)
    assert (result["lost"], result["duplicated"], result["unexpected"]) == (1, 1, 1)
    assert result["reordered_users"] == 1 and result["users_mismatched"] == 4
    assert {m["user"] for m in result["mismatched"]} == {"u1", "u2", "u3", "u4"}


def test_affinity_within_tolerance_and_missing_users():
    expected = {"u1": _user(E1, affinity={"Drama": 1.0}), "u2": _user(E3)}
    close = compare_users(expected, {"u1": _user(E1, affinity={"Drama": 1.0 + 1e-12}), "u2": _user(E3)})
    assert close["users_mismatched"] == 0
    far = compare_users(expected, {"u1": _user(E1, affinity={"Drama": 2.0}), "u2": None})
    assert far["users_mismatched"] == 2 and far["lost"] == 1
    assert {tuple(m["problems"]) for m in far["mismatched"]} == {("affinity",), ("recent", "presence")}


def test_events_never_acknowledged_count_only_when_applied():
    expected, anyway = split_ambiguous({"a", "b"}, {"c", "d"}, stored_ids={"a", "b", "c"})
    assert expected == {"a", "b", "c"} and anyway == {"c"}


def test_trending_compares_items_and_scores():
    assert compare_trending({"i1": 1.0, "i2": 0.5}, {"i1": 1.0, "i2": 0.5 + 1e-12})["items_off"] == 0
    off = compare_trending({"i1": 1.0, "i2": 0.5}, {"i1": 2.0, "i3": 0.5})
    assert off["items_off"] == 3 and off["first_off"] == ["i1", "i2", "i3"]


def test_dead_letters_must_be_exactly_the_injected_garbage():
    ok = compare_dead_letters({b"bad-1", b"bad-2"}, [b"bad-2", b"bad-1", b"bad-1"])
    assert ok["n_missing"] == ok["n_unexpected"] == 0 and ok["repeated"] == 1
    bad = compare_dead_letters({b"bad-1", b"bad-2"}, [b"bad-1", b"u7"])
    assert bad["missing"] == ["bad-2"] and bad["unexpected"] == ["u7"]


def test_memory_budget_is_a_todo_until_one_is_documented():
    per_user = memory_per_user(3_000_000, 1_000_000, 1000)
    assert per_user == 2000
    todo = memory_check(per_user, None, "none documented")
    assert todo["status"] == "todo" and todo["per_user_bytes"] == 2000 and "todo" in todo
    assert memory_check(per_user, 4096, "settings")["status"] == "pass"
    assert memory_check(per_user, 1024, "settings")["status"] == "fail"
    assert memory_per_user(5, 1, 0) is None


def test_malformed_inputs_cover_every_kind_and_are_one_percent():
    assert MALFORMED_EVERY == 200  # two slots in 200: one to the gateway, one into Kafka
    assert len({gateway_garbage(i, "i1")[1] for i in range(6)}) == 6
    kafka = [kafka_garbage(i, "i1") for i in range(7)]
    assert len(set(kafka)) == 7 and max(map(len, kafka)) > 4096
