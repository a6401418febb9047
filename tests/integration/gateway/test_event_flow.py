"""End to end through real services: gateway -> Kafka -> feature consumer -> store -> Triton."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.support.waiting import wait_for

USER = "1"


def end_offsets(kafka, topic) -> int:
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


def horror_items_unseen_by(exported, user, n=3):
    dataset = exported.result.dataset
    seen = set(dataset.user_sequences()[user])
    catalog = dataset.catalog
    return [i.item_id for i in catalog.items if "Horror" in i.categories and i.item_id not in seen][:n]


@pytest.mark.parametrize("gateway", ["memory", "redis"], indirect=True)
def test_posted_events_reach_the_features_and_change_the_recommendations(gateway, exported):
    before = gateway.get(f"/v1/users/{USER}/recommendations", params={"k": 10}).json()
    assert not before["cold_start"] and not before["degraded"] and len(before["items"]) == 10
    items = horror_items_unseen_by(exported, USER)
    # Distinct times: the store orders a user's events by time, then by (random) event id, and
    # three posts can fall within one millisecond.
    now_ms = int(time.time() * 1000)
    for offset, (event_type, item) in enumerate(zip(["view", "cart", "purchase"], items, strict=True)):
        response = gateway.post("/v1/events", json={"user_id": USER, "item_id": item,
                                                     "event_type": event_type, "ts_ms": now_ms + offset})
        assert response.status_code == 202, response.text

    wait_for(lambda: gateway.app.state.service.store.get(USER).recent_items[-3:] == items,
             "the events to reach the feature store", timeout_s=20)

    after = gateway.get(f"/v1/users/{USER}/recommendations", params={"k": 10}).json()
    assert after["features_updated_at_ms"] != before["features_updated_at_ms"]

    after_ids = [i["item_id"] for i in after["items"]]
    assert after_ids != [i["item_id"] for i in before["items"]]
    assert not set(items) & set(after_ids)  # what the user just interacted with is excluded

    features = gateway.app.state.service.store.get(USER)
    assert set(items[2:]) <= features.bought_items  # the purchase
    # all three were horror films, just now: no category can weigh more
    assert features.category_affinity["Horror"] == max(features.category_affinity.values())

    # A brand-new user gets what is trending in the stream: the purchase weighs most.
    cold = gateway.get("/v1/users/someone-new/recommendations", params={"k": 3}).json()
    assert cold["cold_start"] and cold["source"] == "trending"
    assert cold["items"][0]["item_id"] == items[2]


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
def test_bad_input_is_rejected_and_nothing_reaches_kafka(gateway, kafka, topic):
    offsets = end_offsets(kafka, topic)
    bad_events = [
        {"user_id": USER, "item_id": "no-such-item", "event_type": "view"},
        {"user_id": USER, "item_id": "1", "event_type": "wishlist"},
        {"user_id": USER, "event_type": "view"},
    ]
    for payload in bad_events:
        response = gateway.post("/v1/events", json=payload)
        assert response.status_code == 422, response.text
    assert gateway.get(f"/v1/users/{USER}/recommendations", params={"k": 0}).status_code == 422
    assert gateway.get(f"/v1/users/{USER}/recommendations", params={"k": 5000}).status_code == 422
    assert end_offsets(kafka, topic) == offsets

    cold = gateway.get("/v1/users/never-seen-before/recommendations", params={"k": 5}).json()
    assert cold["cold_start"] and len(cold["items"]) == 5
    assert gateway.get("/metrics").text.count("gateway_request_seconds_count") > 0
