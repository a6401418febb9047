"""Decoding the topics' messages, and the consumer's handling of good and bad ones (no Kafka:
``handle_message`` is what a poll's records go through)."""

from __future__ import annotations

import json

import pytest

from online_metrics.config import OnlineMetricsSettings
from online_metrics.consumer import OnlineMetricsConsumer
from online_metrics.records import BadRecord, parse_exposure, parse_user_event
from tests.unit.online_metrics.helpers import event, record


def test_an_exposure_record_as_the_gateway_writes_it():
    exp = parse_exposure(record("r1", ("x", "y"), model_version=7, arm="live"))
    assert exp.request_id == "r1" and exp.key == ("feed", 7, "live")
    assert exp.positions == {"x": 0, "y": 1} and exp.size == 2


def test_a_null_arm_is_the_arm_none_and_unknown_fields_are_ignored():
    raw = json.loads(record("r1"))
    raw["item_id"] = "q"  # similar items add the query item
    raw["something_new"] = {"a": 1}
    assert parse_exposure(json.dumps(raw).encode()).key == ("feed", 3, "none")


@pytest.mark.parametrize(("raw", "reason"), [
    (None, "empty"), (b"", "empty"), (b"not json", "not_json"), (b"\xff\xfe", "not_json"),
    (b"[1, 2]", "invalid"), (b'{"request_id": "r1"}', "invalid"),
    (record("bad id with spaces"), "invalid"), (record("r1", surface="a b"), "invalid"),
    (b"{" + b" " * 300_000 + b"}", "too_large"),
])
def test_bad_exposure_records_raise_with_a_closed_reason(raw, reason):
    with pytest.raises(BadRecord) as caught:
        parse_exposure(raw)
    assert caught.value.reason == reason


def test_events_are_read_with_the_feature_service_rules():
    click = event("click", position="0")
    assert parse_user_event(click.to_bytes(), now_ms=click.ts_ms) == click
    for raw, reason in [(b"{oops", "not_json"), (b'"a string"', "invalid"),
                        (b'{"user_id": "u1"}', "invalid"), (None, "empty")]:
        with pytest.raises(BadRecord) as caught:
            parse_user_event(raw, now_ms=click.ts_ms)
        assert caught.value.reason == reason


def test_the_consumer_counts_bad_messages_and_goes_on():
    settings = OnlineMetricsSettings(impressions_topic="imp", events_topic="ev")
    consumer = OnlineMetricsConsumer(settings)
    click = event("click", "b", position="1")
    with consumer.lock:
        consumer.handle_message("imp", b"garbage")
        consumer.handle_message("imp", record("r1", ts_ms=click.ts_ms - 1000))
        consumer.handle_message("ev", b'{"event_type": "click"}')
        consumer.handle_message("ev", click.to_bytes())
        consumer.handle_message("elsewhere", b"ignored")
    snap = consumer.snapshot()
    bad = {(b["topic"], b["reason"]): b["count"] for b in snap["bad_records"] if b["count"]}
    assert bad == {("impressions", "not_json"): 1, ("events", "invalid"): 1}
    assert snap["keys"][0]["totals"]["clicks"] == 1
    assert snap["consumer"] == {"caught_up": False, "records": 4, "kafka_errors": 0,
                                "partitions": 0}


def test_a_bug_while_handling_a_record_is_counted_not_raised(monkeypatch):
    consumer = OnlineMetricsConsumer(OnlineMetricsSettings(impressions_topic="imp"))

    def broken(_exposure):
        raise KeyError("a bug")

    monkeypatch.setattr(consumer.attribution, "add_exposure", broken)
    with consumer.lock:
        consumer.handle_message("imp", record("r1"))
    assert ("impressions", "error") in {(b["topic"], b["reason"])
                                        for b in consumer.snapshot()["bad_records"] if b["count"]}


def test_a_list_from_far_in_the_future_is_refused():
    """It would move the lists' time on and give up every event waiting for its list."""
    now = 1_700_000_000_000
    assert parse_exposure(record("r1", ts_ms=now + 5 * 60_000), now_ms=now).ts_ms == now + 300_000
    with pytest.raises(BadRecord) as caught:
        parse_exposure(record("r1", ts_ms=now + 5 * 60_000 + 1), now_ms=now)
    assert caught.value.reason == "invalid"


@pytest.mark.parametrize(("version", "expected"), [(3, 3), ("3", 3), ("v2-rc", "v2-rc")])
def test_the_model_version_is_the_number_the_gateway_writes(version, expected):
    """A version's digits as a string are the same key as the number (one set of labels)."""
    assert parse_exposure(record("r1", model_version=version)).key == ("feed", expected, "none")


@pytest.mark.parametrize("version", [-1, None, "a b", "x" * 65])
def test_a_model_version_that_is_no_label_is_invalid(version):
    with pytest.raises(BadRecord):
        parse_exposure(record("r1", model_version=version))
