"""End to end through real services: gateway -> Kafka -> feature consumer -> store -> Triton."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from export.pipeline import SNAPSHOT_FILE
from gateway.app import create_app
from gateway.config import GatewaySettings

USER = "1"


@pytest.fixture
def gateway(exported, triton, kafka, topic, redis_server, request):
    settings = GatewaySettings(
        triton_grpc_url=triton.grpc_url,
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        events_topic=topic,
        consumer_group=f"group-{topic}",
        model_repository=str(exported.repository),
        snapshot_path=str(exported.artifacts / SNAPSHOT_FILE),
        store=request.param,
        redis_url=redis_server.url,
        redis_key_prefix=topic,
        # model answers are what these tests compare, even on a busy 2-core CI box
        request_deadline_ms=5000, triton_timeout_ms=4000,
    )
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        yield client


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
    for event_type, item in zip(["view", "cart", "purchase"], items, strict=False):
        response = gateway.post("/v1/events", json={"user_id": USER, "item_id": item,
                                                     "event_type": event_type})
        assert response.status_code == 202, response.text

    deadline = time.monotonic() + 20
    while gateway.app.state.service.store.get(USER).recent_items[-3:] != items:
        assert time.monotonic() < deadline, "events never reached the feature store"
        time.sleep(0.05)

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
