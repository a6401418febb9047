"""Push through real services: a cart event posted to one gateway process reaches the user's SSE
stream and the recommendations topic, with recommendations computed after the event."""

from __future__ import annotations

import json
import queue
import re
import threading
import uuid

import httpx

from stack.gateway import GatewayProcess
from tests.support.gateway import gateway_settings
from tests.support.kafka import read_topic
from tests.support.waiting import wait_for

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
    settings = gateway_settings(exported, triton, kafka, topic, recommendations_topic=pushes,
                                push_min_interval_ms=60_000)
    with GatewayProcess(settings, log_path=tmp_path / "gateway.log") as gateway:
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        reader = threading.Thread(target=read_sse, daemon=True,
                                  args=(f"{gateway.url}/v1/users/{USER}/push", events, stop))
        reader.start()
        assert events.get(timeout=10) == ("connected", "")

        def post(event_type: str) -> str:
            response = httpx.post(f"{gateway.url}/v1/events",
                                  json={"user_id": USER, "item_id": item, "event_type": event_type})
            assert response.status_code == 202, response.text
            return response.json()["event_id"]

        def pushes_total(outcome: str) -> str | None:
            found = re.search(rf'^gateway_pushes_total{{outcome="{outcome}"}} (\S+)$',
                              httpx.get(f"{gateway.url}/metrics").text, re.MULTILINE)
            return found and found.group(1)

        before = httpx.get(f"{gateway.url}/v1/users/{USER}/recommendations").json()
        item = before["items"][0]["item_id"]
        posted = [post("view"), post("cart")]  # a view is not high intent

        event, data = events.get(timeout=20)
        assert event == "recommendations"
        message = json.loads(data)
        assert message["user_id"] == USER
        assert message["trigger"] == {"event_id": posted[1], "event_type": "cart", "item_id": item}
        pushed = message["recommendations"]
        assert pushed["source"] == "model" and len(pushed["items"]) == 10
        assert item not in [i["item_id"] for i in pushed["items"]]  # computed after the cart event

        # The purchase is posted only now: each event's push runs in a task of its own, so posted
        # together the purchase's could take the frequency cap ahead of the cart's.
        posted.append(post("purchase"))
        wait_for(lambda: pushes_total("capped") == "1.0", "the purchase's push to be capped")
        stop.set()
        assert pushes_total("pushed") == "1.0"
        assert events.empty()  # the purchase fell inside the frequency cap: no second push

    # the same message is on the recommendations topic for downstream systems (the gateway has
    # stopped: the topic is complete)
    records = read_topic(kafka.bootstrap_servers, pushes)
    assert [(r.key, json.loads(r.value)["trigger"]["event_id"]) for r in records] == [
        (USER.encode(), posted[1])]
