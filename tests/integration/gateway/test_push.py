"""Push through real services: a cart event posted to one gateway process reaches the user's SSE
stream and the recommendations topic, with recommendations computed after the event."""

from __future__ import annotations

import json
import queue
import threading
import uuid

import httpx
from kafka import KafkaConsumer, TopicPartition

from export.pipeline import SNAPSHOT_FILE
from stack.gateway import GatewayProcess

USER = "7"


def read_sse(url: str, events: queue.Queue, stop: threading.Event) -> None:
    """Put (event, data) pairs from an SSE stream on ``events``; ("connected", "") first."""
    with httpx.Client(timeout=httpx.Timeout(5, read=60)) as client, client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if stop.is_set():
                return
            if line.startswith(": connected"):
                events.put(("connected", ""))
            elif line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.put((event, line.removeprefix("data: ")))


def test_sse_client_gets_refreshed_recommendations_after_a_cart_event(exported, triton, kafka, tmp_path):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    pushes = f"recommendations-{uuid.uuid4().hex[:8]}"
    settings = {
        "triton_grpc_url": triton.grpc_url, "kafka_bootstrap_servers": kafka.bootstrap_servers,
        "events_topic": topic, "recommendations_topic": pushes,
        "model_repository": exported.repository,
        "snapshot_path": exported.artifacts / SNAPSHOT_FILE, "push_min_interval_ms": 60_000,
        # the pushed answer must come from the model even on a busy 2-core CI box
        "request_deadline_ms": 5000, "triton_timeout_ms": 4000,
    }
    with GatewayProcess(settings, log_path=tmp_path / "gateway.log") as gateway:
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        reader = threading.Thread(target=read_sse, daemon=True,
                                  args=(f"{gateway.url}/v1/users/{USER}/push", events, stop))
        reader.start()
        assert events.get(timeout=10) == ("connected", "")

        before = httpx.get(f"{gateway.url}/v1/users/{USER}/recommendations").json()
        item = before["items"][0]["item_id"]
        posted = []
        for event_type in ["view", "cart", "purchase"]:  # a view is not high intent
            response = httpx.post(f"{gateway.url}/v1/events",
                                  json={"user_id": USER, "item_id": item, "event_type": event_type})
            assert response.status_code == 202, response.text
            posted.append(response.json()["event_id"])

        event, data = events.get(timeout=20)
        stop.set()
        assert event == "recommendations"
        message = json.loads(data)
        assert message["user_id"] == USER
        assert message["trigger"] == {"event_id": posted[1], "event_type": "cart", "item_id": item}
        pushed = message["recommendations"]
        assert pushed["source"] == "model" and len(pushed["items"]) == 10
        assert item not in [i["item_id"] for i in pushed["items"]]  # computed after the cart event
        assert events.empty()  # the purchase fell inside the frequency cap

        metrics = httpx.get(f"{gateway.url}/metrics").text
        assert 'gateway_pushes_total{outcome="pushed"} 1.0' in metrics
        assert 'gateway_pushes_total{outcome="capped"} 1.0' in metrics

    # the same message is on the recommendations topic for downstream systems
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        parts = [TopicPartition(pushes, p) for p in consumer.partitions_for_topic(pushes)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records = [r for batch in consumer.poll(timeout_ms=5000).values() for r in batch]
    finally:
        consumer.close()
    assert [(r.key, json.loads(r.value)["trigger"]["event_id"]) for r in records] == [
        (USER.encode(), posted[1])]
