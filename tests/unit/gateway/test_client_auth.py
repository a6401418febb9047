"""RECSYS_GATEWAY_API_TOKEN: when set, event ingestion (REST and gRPC) and push streams need it as a
bearer token (401 in the project's error shape otherwise); unset, they stay open (development)."""

from __future__ import annotations

import grpc
import pytest

from gateway.proto import recsys_pb2 as pb
from tests.unit.gateway.test_api import make_parts
from tests.unit.gateway.test_grpc_server import call, error_code, rpc_error

API_TOKEN = "client-s3cret"
EVENT = {"user_id": "u1", "item_id": "a", "event_type": "view"}
BATCH = {"events": [EVENT, {**EVENT, "user_id": "u2"}]}


@pytest.fixture
def guarded(catalog):
    return make_parts(catalog, api_token=API_TOKEN, admin_token="admin-only")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), bearer("admin-only"),
                                     {"Authorization": API_TOKEN}])
@pytest.mark.parametrize("method, path, body", [("POST", "/v1/events", EVENT),
                                                ("POST", "/v1/events:batch", BATCH),
                                                ("GET", "/v1/users/u1/push", None)])
def test_without_the_api_token_ingestion_and_push_are_401(guarded, headers, method, path, body):
    response = guarded.client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert guarded.publisher.events == []


def test_with_the_api_token_events_are_accepted_and_push_gets_past_auth(guarded):
    assert guarded.client.post("/v1/events", json=EVENT, headers=bearer(API_TOKEN)).status_code == 202
    response = guarded.client.post("/v1/events:batch", json=BATCH, headers=bearer(API_TOKEN))
    assert response.status_code == 202 and len(guarded.publisher.events) == 3
    # past auth: this app runs no push hub, which is a 503, not a 401
    assert guarded.client.get("/v1/users/u1/push", headers=bearer(API_TOKEN)).status_code == 503


def test_recommendations_need_no_api_token(guarded):
    assert guarded.client.get("/v1/users/u1/recommendations", params={"k": 3}).status_code == 200


def test_unset_the_api_token_leaves_ingestion_open(catalog):
    parts = make_parts(catalog)
    assert parts.client.post("/v1/events", json=EVENT).status_code == 202


def _ingest(metadata=None):
    async def fn(stub):
        return await stub.Ingest(pb.IngestRequest(event=pb.Event(
            user_id="u1", item_id="a", event_type=pb.EVENT_TYPE_VIEW)), metadata=metadata)
    return fn


def _ingest_batch(metadata=None):
    async def fn(stub):
        return await stub.IngestBatch(pb.IngestBatchRequest(events=[pb.Event(
            user_id="u1", item_id="a", event_type=pb.EVENT_TYPE_VIEW)]), metadata=metadata)
    return fn


@pytest.mark.parametrize("rpc", [_ingest, _ingest_batch])
@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong"),),
                                      (("authorization", API_TOKEN),)])
def test_grpc_ingest_without_the_api_token_is_unauthenticated(guarded, rpc, metadata):
    service = guarded.service
    error = rpc_error(lambda: service, rpc(metadata), api_token=guarded.client.app.state.settings.api_token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error_code(error) == "unauthorized"
    assert guarded.publisher.events == []


def test_grpc_ingest_with_the_api_token_is_accepted_and_recommend_needs_none(guarded):
    service, token = guarded.service, guarded.client.app.state.settings.api_token
    metadata = (("authorization", f"Bearer {API_TOKEN}"),)
    call(lambda: service, _ingest(metadata), api_token=token)
    call(lambda: service, _ingest_batch(metadata), api_token=token)
    assert len(guarded.publisher.events) == 2

    async def recommend(stub):
        return await stub.Recommend(pb.RecommendRequest(user_id="u1", k=2))
    assert len(call(lambda: service, recommend, api_token=token).items) == 2
