"""The exposure log against a real broker: every list served through REST and gRPC (fallbacks
included) and pushed is on the impressions topic exactly once, with the served items in their
positions and the request id the response carried."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.proto import recsys_pb2 as pb
from gateway.proto import recsys_pb2_grpc as pb_grpc
from tests.support.gateway import gateway_settings, wait_ready
from tests.support.kafka import read_topic


@pytest.fixture
def logged_gateway(exported, triton, kafka, topic, redis_server) -> Iterator[TestClient]:
    """The gateway fixture's app, with an impressions topic of this test's own."""
    settings = GatewaySettings(**gateway_settings(
        exported, triton, kafka, topic, redis_url=redis_server.url, redis_key_prefix=topic,
        grpc_port=-1, impressions_topic=f"{topic}.impressions", push_min_interval_ms=0))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def served_items(items) -> list[tuple[int, str]]:
    return [(position, item["item_id"] if isinstance(item, dict) else item.item_id)
            for position, item in enumerate(items)]


def test_every_served_list_is_logged_once_with_its_request_id(logged_gateway, kafka, topic, exported):
    client = logged_gateway
    users = [str(u) for u in list(exported.result.dataset.user_sequences())[:4]]
    served: dict[str, tuple[str, list[tuple[int, str]], str]] = {}  # request id -> user, items, source

    # REST: known users (the model), with and without a client id; unknown users (fallback)
    for n, user in enumerate([*users, "never-seen-1", "never-seen-2"]):
        headers = {"X-Request-ID": f"rest-{topic}-{n}"} if n % 2 == 0 else {"X-Request-ID": "bad id!"}
        response = client.get(f"/v1/users/{user}/recommendations", params={"k": 5}, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert response.headers["X-Request-ID"] == body["request_id"]
        if n % 2 == 0:
            assert body["request_id"] == headers["X-Request-ID"]
        else:
            assert len(body["request_id"]) == 32
        served[body["request_id"]] = (user, served_items(body["items"]), body["source"])
    assert {s for _, _, s in served.values()} >= {"model"}
    assert any(s in ("trending", "popular") for _, _, s in served.values())

    # gRPC: with and without metadata, a known user and a cold one
    with grpc.insecure_channel(f"127.0.0.1:{client.app.state.grpc_port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for n, user in enumerate([users[0], "never-seen-3"]):
            metadata = ((("x-request-id", f"grpc-{topic}-{n}"),) if n == 0 else None)
            response = stub.Recommend(pb.RecommendRequest(user_id=user, k=4), metadata=metadata,
                                      timeout=30)
            if n == 0:
                assert response.request_id == f"grpc-{topic}-0"
            served[response.request_id] = (user, served_items(response.items),
                                           pb.Source.Name(response.source))

    # a push: a cart event makes the gateway push (and log) the user's new list
    push_user = users[1]
    item = served[next(r for r, (u, _, _) in served.items() if u == push_user)][1][0][1]
    response = client.post("/v1/events", json={"user_id": push_user, "item_id": item,
                                               "event_type": "cart"})
    assert response.status_code == 202, response.text

    def records(batch) -> list[dict]:
        return [json.loads(r.value) for r in batch]

    def complete(batch) -> bool:
        logged = records(batch)
        return (set(served) <= {r["request_id"] for r in logged}
                and any(r["surface"] == "push" for r in logged))

    logged = records(read_topic(kafka.bootstrap_servers, f"{topic}.impressions", until=complete,
                                timeout_s=60))
    times = Counter(r["request_id"] for r in logged)
    assert all(times[rid] == 1 for rid in served), {rid: times[rid] for rid in served}
    for record in logged:
        if record["request_id"] not in served:
            continue
        user, items, source = served[record["request_id"]]
        assert record["user_id"] == user and record["surface"] == "feed"
        assert [(i["position"], i["item_id"]) for i in record["items"]] == items
        assert record["source"] == source.lower().removeprefix("source_")
        assert record["arm"] is None and isinstance(record["ts_ms"], int)
        assert isinstance(record["model_version"], int)
    [push] = [r for r in logged if r["surface"] == "push"]
    assert push["user_id"] == push_user and push["request_id"] not in served and push["items"]
    assert [i["position"] for i in push["items"]] == list(range(len(push["items"])))
    metrics = client.get("/metrics").text
    assert 'recsys_exposures_total{result="sent"}' in metrics
