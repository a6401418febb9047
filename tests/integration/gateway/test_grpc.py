"""The gRPC front end against real services: it answers exactly what the REST API answers, and
its events reach the feature store through Kafka."""

from __future__ import annotations

import time

import grpc
import httpx
import pytest

from gateway.proto import recsys_pb2 as pb
from gateway.proto import recsys_pb2_grpc as pb_grpc
from stack.gateway import GatewayProcess
from tests.support.gateway import gateway_settings
from tests.support.grpc import as_dict
from tests.support.ranking import assert_same_recommendations
from tests.support.waiting import wait_for

USER = "1"

# Each comparison below is of two answers from separate model calls: Triton's dynamic batching
# changes float summation order between them, so scores agree to within float error and items
# tied within it may swap (assert_same_recommendations), not bit for bit.


@pytest.fixture
def stub(gateway):
    port = gateway.app.state.grpc_port
    assert isinstance(port, int) and port > 0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.RecommenderStub(channel)


def rest_and_grpc(gateway, stub, user_id, k, *, exclude=(), categories=(), max_per_category=None):
    params = {"k": k, "exclude": list(exclude), "category": list(categories)}
    if max_per_category is not None:
        params["max_per_category"] = max_per_category
    response = gateway.get(f"/v1/users/{user_id}/recommendations", params=params)
    assert response.status_code == 200, response.text
    request = pb.RecommendRequest(user_id=user_id, k=k, exclude=exclude, categories=categories,
                                  max_per_category=max_per_category)
    return response.json(), as_dict(stub.Recommend(request, timeout=30))


def test_grpc_recommend_answers_what_rest_answers(gateway, stub, exported):
    dataset = exported.result.dataset
    users = list(dataset.user_sequences())
    first = gateway.get(f"/v1/users/{USER}/recommendations", params={"k": 10}).json()
    top = [i["item_id"] for i in first["items"]]
    genre = first["items"][0]["categories"][0]
    cases = [
        (USER, 10, {}),
        (USER, 10, {"exclude": top[:3]}),  # what the model liked best, excluded
        (USER, 7, {"categories": [genre, "Comedy"]}),
        (USER, 10, {"max_per_category": 1}),
        (users[1], 5, {"categories": ["Drama"], "max_per_category": 2}),
        (users[2], 1, {}),
        ("never-seen-before", 5, {}),  # cold start
        ("never-seen-either", 8, {"exclude": top[:2], "categories": ["Action", "Horror"]}),
    ]
    sources = set()
    for user_id, k, kwargs in cases:
        rest, via_grpc = rest_and_grpc(gateway, stub, user_id, k, **kwargs)
        assert_same_recommendations(via_grpc, rest, context=(user_id, k, kwargs))
        assert 0 < len(rest["items"]) <= k and not rest["degraded"]
        sources.add(rest["source"])
        if user_id.startswith("never"):
            assert rest["cold_start"] and rest["features_updated_at_ms"] is None
        else:
            assert not rest["cold_start"] and all(i["score"] is not None for i in rest["items"])
        excluded = set(kwargs.get("exclude", ()))
        assert not excluded & {i["item_id"] for i in rest["items"]}
        if kwargs.get("categories"):
            assert all(set(i["categories"]) & set(kwargs["categories"]) for i in rest["items"])
    assert sources == {"model", "popular"}


def test_grpc_rejects_what_rest_rejects(gateway, stub):
    for k in (0, 101, 5000):
        assert gateway.get(f"/v1/users/{USER}/recommendations", params={"k": k}).status_code == 422
        with pytest.raises(grpc.RpcError) as info:
            stub.Recommend(pb.RecommendRequest(user_id=USER, k=k))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"got {k}" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Ingest(pb.IngestRequest(event=pb.Event(user_id=USER, item_id="no-such-item",
                                                    event_type=pb.EVENT_TYPE_VIEW)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown item_id 'no-such-item'" in info.value.details()


@pytest.mark.parametrize("gateway", ["memory", "redis"], indirect=True)
def test_grpc_events_reach_the_feature_store(gateway, stub, exported):
    store = gateway.app.state.service.store
    before = stub.Recommend(pb.RecommendRequest(user_id=USER, k=10), timeout=30)
    seen = set(exported.result.dataset.user_sequences()[USER])
    fresh = [i.item_id for i in exported.result.dataset.catalog.items if i.item_id not in seen][:3]

    now_ms = int(time.time() * 1000)  # distinct times: the store orders by time, then event id
    single = stub.Ingest(pb.IngestRequest(event=pb.Event(
        event_id=f"grpc-{time.time_ns()}", user_id=USER, item_id=fresh[0],
        event_type=pb.EVENT_TYPE_VIEW, ts_ms=now_ms, context={"via": "grpc"})), timeout=30)
    batch = stub.IngestBatch(pb.IngestBatchRequest(events=[
        pb.Event(user_id=USER, item_id=fresh[1], event_type=pb.EVENT_TYPE_CART, ts_ms=now_ms + 1),
        pb.Event(user_id=USER, item_id=fresh[2], event_type=pb.EVENT_TYPE_PURCHASE, ts_ms=now_ms + 2),
    ]), timeout=30)
    accepted = [single.accepted, *batch.accepted]
    assert accepted[0].event_id.startswith("grpc-") and all(a.event_id for a in accepted)
    assert {a.topic for a in accepted} == {gateway.app.state.settings.events_topic}

    want = {a.event_id for a in accepted}
    wait_for(lambda: want <= {e.event_id for e in store.get(USER).recent},
             "the gRPC events to reach the feature store", timeout_s=20)
    features = store.get(USER)
    assert features.recent_items[-3:] == fresh and fresh[2] in features.bought_items

    after = stub.Recommend(pb.RecommendRequest(user_id=USER, k=10), timeout=30)
    assert after.features_updated_at_ms != before.features_updated_at_ms
    assert not set(fresh) & {i.item_id for i in after.items}
    rest = gateway.get(f"/v1/users/{USER}/recommendations", params={"k": 10}).json()
    assert_same_recommendations(as_dict(after), rest)


def test_gateway_process_serves_grpc_on_its_grpc_port(exported, triton, kafka, topic, tmp_path):
    settings = gateway_settings(exported, triton, kafka, topic)
    with GatewayProcess(settings, log_path=tmp_path / "gateway.log") as gateway:
        assert gateway.grpc_target == f"127.0.0.1:{gateway.grpc_port}" and gateway.grpc_port != gateway.port
        rest = httpx.get(f"{gateway.url}/v1/users/{USER}/recommendations", params={"k": 5}).json()
        with grpc.insecure_channel(gateway.grpc_target) as channel:
            response = pb_grpc.RecommenderStub(channel).Recommend(
                pb.RecommendRequest(user_id=USER, k=5), timeout=30)
        assert rest["source"] == "model"
        assert_same_recommendations(as_dict(response), rest)
