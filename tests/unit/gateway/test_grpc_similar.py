"""The gRPC SimilarItems rpc: what the service's ``similar`` answers, and the same errors (NOT_FOUND
for an unknown item, UNIMPLEMENTED without a similar_items model)."""

from __future__ import annotations

import grpc
from google.protobuf import json_format

from gateway.proto import recsys_pb2 as pb
from tests.unit.gateway.test_grpc_server import call, error_code, rpc_error, service  # noqa: F401


def test_similar_items_returns_what_the_service_returns(service):  # noqa: F811
    async def both(stub):
        got = await stub.SimilarItems(pb.SimilarItemsRequest(item_id="f", k=3, user_id="u1"),
                                      metadata=(("x-request-id", "req-9"),))
        expected = await service.similar("f", 3, user_id="u1", request_id="req-9")
        return got, expected

    got, expected = call(lambda: service, both)
    body = json_format.MessageToDict(got, preserving_proto_field_name=True)
    assert body["request_id"] == "req-9" and body["item_id"] == "f"
    assert [i["item_id"] for i in body["items"]] == [i.item_id for i in expected.items] == ["e", "d", "c"]
    assert got.source == pb.SOURCE_MODEL and not got.degraded and got.model_version == 3


def similar_error(service, **fields):  # noqa: F811
    return rpc_error(lambda: service, lambda stub: stub.SimilarItems(pb.SimilarItemsRequest(**fields)))


def test_unknown_item_and_missing_model_map_to_their_status_codes(service):  # noqa: F811
    error = similar_error(service, item_id="zz", k=2)
    assert error.code() == grpc.StatusCode.NOT_FOUND and error_code(error) == "unknown_item"
    service.recommender.similar_served = False
    error = similar_error(service, item_id="a", k=2)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED and error_code(error) == "not_served"
    error = similar_error(service, item_id="a b")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
