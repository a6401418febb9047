"""The gRPC front end over the real service layer (fakes for Triton and Kafka), through a real
in-process grpc.aio server on a free port."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from feature_service.store import InMemoryStore
from features.events import Event
from features.user_state import FeatureRules
from gateway import errors
from gateway.grpc_server import ERROR_CODE_KEY, start_grpc_server, status_for
from gateway.inventory import InMemoryInventory
from gateway.proto import recsys_pb2 as pb
from gateway.proto import recsys_pb2_grpc as pb_grpc
from gateway.served_model import ServedModel
from gateway.service import RecommendationService, ServicePolicy
from stack.ports import free_port
from tests.support.grpc import as_dict
from tests.unit.gateway.fakes import FakePublisher, FakeRecommender


@pytest.fixture
def service(catalog) -> RecommendationService:
    store = InMemoryStore(FeatureRules(history_items=10))
    store.load_snapshot({"u1": ["a", "b"]})
    served = ServedModel(version=3, catalog=catalog, popular_items=["c", "a", "e", "b"], sequence_length=4)
    return RecommendationService(served, store, FakeRecommender(catalog), FakePublisher(),
                                 InMemoryInventory(), ServicePolicy(max_batch_events=3))


def call(service_getter, fn, **server_kwargs):
    """Start a server on a free port, run ``await fn(stub)``, stop the server; the result."""
    async def main():
        server, port = await start_grpc_server(service_getter, "127.0.0.1", -1, **server_kwargs)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await fn(pb_grpc.RecommenderStub(channel))
        finally:
            await server.stop(None)
    return asyncio.run(main())


def rpc_error(service_getter, fn, **server_kwargs) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        call(service_getter, fn, **server_kwargs)
    return info.value


def error_code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(ERROR_CODE_KEY)


# --- Recommend -------------------------------------------------------------------------------------


@pytest.mark.parametrize("user_id, k, kwargs", [
    ("u1", 3, {}),  # the model
    ("u1", 4, {"exclude": ["f"], "categories": ["Action", "Drama"]}),
    ("u1", 4, {"max_per_category": 1}),
    ("u1", 2, {"max_per_category": 0}),
    ("stranger", 2, {}),  # cold start: popular
    ("stranger", 3, {"exclude": ["c"], "categories": ["Action"]}),
])
def test_recommend_returns_what_the_service_returns(service, user_id, k, kwargs):
    async def both(stub):
        got = await stub.Recommend(pb.RecommendRequest(user_id=user_id, k=k, **kwargs),
                                   metadata=(("x-request-id", "req-1"),))
        expected = await service.recommend(user_id, k, request_id="req-1", **kwargs)
        return got, expected

    got, expected = call(lambda: service, both)
    assert as_dict(got) == expected.model_dump()
    assert got.items  # not vacuous


def test_recommend_model_response_fields(service):
    got = call(lambda: service, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="u1", k=3)))
    assert [i.item_id for i in got.items] == ["f", "e", "d"] and got.items[0].title == "Foxtrot"
    assert got.source == pb.SOURCE_MODEL and not got.cold_start and not got.degraded
    assert got.model_version == 3 and not got.HasField("features_updated_at_ms")  # snapshot only
    service.store.apply(Event(user_id="u1", item_id="c", event_type="view"))
    got = call(lambda: service, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="u1", k=3)))
    assert got.features_updated_at_ms == service.store.get("u1").updated_at_ms
    assert [i.item_id for i in got.items] == ["f", "e", "d"]
    assert got.items[0].score == pytest.approx(0.9)


def test_recommend_trending_has_scores_and_popular_has_none(service):
    now = int(time.time() * 1000)
    service.store.apply_many([Event(user_id="v", item_id="d", event_type="purchase", ts_ms=now)])

    async def both(stub):
        return (await stub.Recommend(pb.RecommendRequest(user_id="stranger", k=3),
                                     metadata=(("x-request-id", "req-2"),)),
                await service.recommend("stranger", 3, request_id="req-2"))

    got, expected = call(lambda: service, both)
    want = expected.model_dump()
    for item in want["items"]:  # trending scores decay between the two calls
        if item["score"] is not None:
            item["score"] = pytest.approx(item["score"], rel=1e-3)
    assert as_dict(got) == want
    assert got.cold_start and got.source == pb.SOURCE_TRENDING
    assert [i.HasField("score") for i in got.items] == [True, False, False]
    assert not got.HasField("features_updated_at_ms")


def test_recommend_model_failure_is_degraded_not_an_error(service):
    service.recommender.fail = True
    got = call(lambda: service, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="u1", k=2)))
    assert got.degraded and got.source == pb.SOURCE_POPULAR
    assert [i.item_id for i in got.items] == ["c", "e"]


def test_unset_k_means_10_as_in_rest(service):
    # 10 is more than this six-item catalog holds: rejected, like GET .../recommendations
    error = rpc_error(lambda: service, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="u1")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "k must be between 1 and 6, got 10"


@pytest.mark.parametrize("k", [0, -1, 7, 101, 2**31 - 1])
def test_k_out_of_range_is_invalid_argument_with_reason(service, k):
    error = rpc_error(lambda: service, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="u1", k=k)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"k must be between 1 and 6, got {k}"
    assert error_code(error) == "invalid_request"
    assert service.recommender.calls == []


def test_k_is_capped_at_100_as_in_rest(catalog):
    from features.catalog import Item, ItemCatalog
    big = ItemCatalog.from_items([Item(f"i{n}", f"Item {n}", ("Action",)) for n in range(150)])
    served = ServedModel(version=1, catalog=big, popular_items=[f"i{n}" for n in range(150)],
                         sequence_length=4)
    service = RecommendationService(served, InMemoryStore(), FakeRecommender(big), FakePublisher(),
                                    InMemoryInventory(), ServicePolicy(max_k=500))
    ok = call(lambda: service, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="x", k=100)))
    assert len(ok.items) == 100
    error = rpc_error(lambda: service, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="x", k=101)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "between 1 and 100" in error.details()
    default = call(lambda: service, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="x")))
    assert len(default.items) == 10


@pytest.mark.parametrize("user_id", ["", "bad id", "a/b", "x" * 65, "ü", "u1\n"])
def test_bad_user_id_is_invalid_argument(service, user_id):
    error = rpc_error(lambda: service,
                      lambda stub: stub.Recommend(pb.RecommendRequest(user_id=user_id, k=2)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("user_id: should match pattern")


@pytest.mark.parametrize("kwargs, reason", [
    ({"exclude": ["ok", "not ok"]}, "exclude: invalid item id 'not ok'"),
    ({"exclude": ["a\n"]}, "exclude: invalid item id 'a\\n'"),  # as REST's pattern: no trailing newline
    ({"exclude": [f"i{n}" for n in range(101)]}, "exclude: at most 100 item ids"),
    ({"categories": ["Horror"]}, "category: unknown 'Horror'"),
    ({"categories": [""]}, "category: unknown ''"),
    ({"max_per_category": 101}, "max_per_category must be between 0 and 100"),
    ({"max_per_category": -1}, "max_per_category must be between 0 and 100"),
])
def test_bad_filters_are_invalid_argument_with_reason(service, kwargs, reason):
    error = rpc_error(lambda: service,
                      lambda stub: stub.Recommend(pb.RecommendRequest(user_id="u1", k=2, **kwargs)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in error.details()


# --- Ingest ----------------------------------------------------------------------------------------


def test_ingest_publishes_the_event(service):
    message = pb.Event(event_id="e-1", user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_CART,
                       ts_ms=1_700_000_000_000, context={"page": "home"})
    got = call(lambda: service, lambda stub: stub.Ingest(pb.IngestRequest(event=message)))
    assert got.accepted == pb.Accepted(event_id="e-1", topic="user-events", partition=0, offset=0)
    assert service.publisher.events == [Event(event_id="e-1", user_id="u1", item_id="c",
                                              event_type="cart", ts_ms=1_700_000_000_000,
                                              context={"page": "home"})]


def test_ingest_defaults_event_id_time_and_context(service):
    before = int(time.time() * 1000)
    message = pb.Event(user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_VIEW)
    got = call(lambda: service, lambda stub: stub.Ingest(pb.IngestRequest(event=message)))
    (event,) = service.publisher.events
    assert got.accepted.event_id == event.event_id and len(event.event_id) == 32
    assert before <= event.ts_ms <= int(time.time() * 1000)
    assert event.context is None and event.event_type == "view"


@pytest.mark.parametrize("message, reason, code", [
    (pb.Event(user_id="u1", item_id="zzz", event_type=pb.EVENT_TYPE_VIEW),
     "unknown item_id 'zzz'", "unknown_item"),
    (pb.Event(user_id="u1", item_id="c"), "event.event_type: must be one of EVENT_TYPE_VIEW", None),
    (pb.Event(user_id="u1", item_id="c", event_type=42), "got 42", None),
    (pb.Event(user_id="", item_id="c", event_type=pb.EVENT_TYPE_VIEW), "event.user_id: String", None),
    (pb.Event(user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_VIEW, event_id="no spaces"),
     "event.event_id: String should match pattern", None),
    (pb.Event(user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_VIEW, ts_ms=-5),
     "event.ts_ms: Input should be greater than or equal to 0", None),
    (pb.Event(user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_VIEW,
              ts_ms=2 * int(time.time() * 1000)), "in the future", None),
    (pb.Event(user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_VIEW,
              context={str(n): "x" for n in range(17)}), "event.context: Dictionary should have at most 16",
     None),
    (None, "event: required", None),
])
def test_bad_events_are_invalid_argument_and_nothing_is_published(service, message, reason, code):
    request = pb.IngestRequest() if message is None else pb.IngestRequest(event=message)
    error = rpc_error(lambda: service, lambda stub: stub.Ingest(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in error.details()
    assert error_code(error) == (code or "invalid_request")
    assert service.publisher.events == []


def test_kafka_down_is_unavailable(service):
    service.publisher.fail = errors.UpstreamUnavailable("Kafka did not acknowledge the event")
    message = pb.Event(user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_VIEW)
    error = rpc_error(lambda: service, lambda stub: stub.Ingest(pb.IngestRequest(event=message)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "Kafka did not acknowledge the event"
    assert error_code(error) == "upstream_unavailable"


def test_a_bug_is_internal_without_details(service):
    service.publisher.fail = KeyError("secret internals")
    message = pb.Event(user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_VIEW)
    error = rpc_error(lambda: service, lambda stub: stub.Ingest(pb.IngestRequest(event=message)))
    assert error.code() == grpc.StatusCode.INTERNAL and error.details() == "internal error"


def test_no_service_yet_is_unavailable():
    error = rpc_error(lambda: None, lambda stub: stub.Recommend(pb.RecommendRequest(user_id="u1", k=1)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


# --- IngestBatch -----------------------------------------------------------------------------------


def _view(user_id: str, item_id: str) -> pb.Event:
    return pb.Event(user_id=user_id, item_id=item_id, event_type=pb.EVENT_TYPE_VIEW)


def test_ingest_batch_publishes_all_in_order(service):
    request = pb.IngestBatchRequest(events=[_view("u1", "a"), _view("u2", "b"), _view("u1", "c")])
    got = call(lambda: service, lambda stub: stub.IngestBatch(request))
    assert [a.offset for a in got.accepted] == [0, 1, 2]
    assert [a.event_id for a in got.accepted] == [e.event_id for e in service.publisher.events]
    assert [e.item_id for e in service.publisher.events] == ["a", "b", "c"]


@pytest.mark.parametrize("events, reason", [
    ([_view("u1", "a"), _view("u1", "zzz")], "events[1]: unknown item_id 'zzz'"),
    ([_view("u1", "a"), _view("bad id", "b")], "events[1].user_id: String should match pattern"),
    ([], "events: between 1 and 3 per batch, got 0"),
    ([_view("u1", "a")] * 4, "events: between 1 and 3 per batch, got 4"),
])
def test_bad_batches_are_rejected_whole(service, events, reason):
    error = rpc_error(lambda: service, lambda stub: stub.IngestBatch(pb.IngestBatchRequest(events=events)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in error.details()
    assert service.publisher.events == []


# --- the server --------------------------------------------------------------------------------------


def test_the_service_is_read_at_call_time(service, catalog):
    holder = {"service": service}
    other = RecommendationService(
        ServedModel(version=9, catalog=catalog, popular_items=["d"], sequence_length=4),
        InMemoryStore(), FakeRecommender(catalog), FakePublisher(), InMemoryInventory())

    async def swap_between_calls(stub):
        first = await stub.Recommend(pb.RecommendRequest(user_id="stranger", k=1))
        holder["service"] = other
        second = await stub.Recommend(pb.RecommendRequest(user_id="stranger", k=1))
        return first, second

    first, second = call(lambda: holder["service"], swap_between_calls)
    assert (first.model_version, first.items[0].item_id) == (3, "c")
    assert (second.model_version, second.items[0].item_id) == (9, "d")


def test_oversized_requests_are_resource_exhausted(service):
    request = pb.IngestBatchRequest(events=[_view("u1", "a")] * 3)
    request.events[0].context["blob"] = "x" * 2000
    error = rpc_error(lambda: service, lambda stub: stub.IngestBatch(request), max_message_bytes=1024)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert service.publisher.events == []


def test_binds_a_given_port(service):
    port = free_port()

    async def main():
        server, bound = await start_grpc_server(lambda: service, "127.0.0.1", port)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.RecommenderStub(channel)
                return bound, await stub.Recommend(pb.RecommendRequest(user_id="u1", k=1))
        finally:
            await server.stop(None)

    bound, response = asyncio.run(main())
    assert bound == port and len(response.items) == 1


def test_a_taken_port_is_an_error(service):
    async def main():
        server, port = await start_grpc_server(lambda: service, "127.0.0.1", -1)
        try:
            with pytest.raises(RuntimeError, match="cannot bind"):
                await start_grpc_server(lambda: service, "127.0.0.1", port)
        finally:
            await server.stop(None)

    asyncio.run(main())


@pytest.mark.parametrize("port", [0, -2, 70000])
def test_bad_ports_are_refused(service, port):
    with pytest.raises(ValueError, match="gRPC port"):
        asyncio.run(start_grpc_server(lambda: service, "127.0.0.1", port))


@pytest.mark.parametrize("exc, code", [
    (errors.InvalidRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.UnknownItem("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.Forbidden("x"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.Conflict("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UpstreamUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.RecsysError("x"), grpc.StatusCode.INTERNAL),
])
def test_error_classes_map_to_grpc_status_codes(exc, code):
    assert status_for(exc) == code


# --- what the feature consumer would dead-letter is refused here (issue 15) ------------------------


def test_user_id_with_a_trailing_newline_is_refused_as_in_rest(service):
    # re.match(ID_PATTERN) takes "u1\n" (`$` matches before a final newline); REST refuses it.
    error = rpc_error(lambda: service,
                      lambda stub: stub.Recommend(pb.RecommendRequest(user_id="u1\n", k=2)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in error.details()
    message = pb.Event(user_id="u1\n", item_id="c", event_type=pb.EVENT_TYPE_VIEW)
    error = rpc_error(lambda: service, lambda stub: stub.Ingest(pb.IngestRequest(event=message)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "event.user_id" in error.details()
    assert service.publisher.events == []


def test_an_event_larger_than_the_consumer_accepts_is_invalid_argument(service):
    message = pb.Event(user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_VIEW, context={"note": "x" * 5000})
    error = rpc_error(lambda: service, lambda stub: stub.Ingest(pb.IngestRequest(event=message)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than the 4096-byte limit" in error.details()
    assert error_code(error) == "invalid_request"
    assert service.publisher.events == []


def test_a_batch_with_an_oversized_event_names_it(service):
    request = pb.IngestBatchRequest(events=[_view("u1", "a"), _view("u1", "b")])
    request.events[1].context["note"] = "x" * 5000
    error = rpc_error(lambda: service, lambda stub: stub.IngestBatch(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("events[1]: the event is ")
    assert service.publisher.events == []


def test_future_skew_is_the_policys(service):
    service.policy = ServicePolicy(max_future_skew_ms=1000)
    message = pb.Event(user_id="u1", item_id="c", event_type=pb.EVENT_TYPE_VIEW,
                       ts_ms=int(time.time() * 1000) + 60_000)
    error = rpc_error(lambda: service, lambda stub: stub.Ingest(pb.IngestRequest(event=message)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000 ms allowed" in error.details()
    assert service.publisher.events == []
