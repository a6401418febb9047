"""The REST front end over the real service layer, with fakes for Triton and Kafka."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from feature_service.store import InMemoryStore, StoreUnavailable
from features import contract as sig
from features.behaviour import PAD_TYPE, type_code
from features.catalog import PAD_INDEX
from features.events import Event, EventType
from features.user_state import FeatureRules, RecentEvent, UserFeatures
from gateway.app import _policy, create_app
from gateway.config import GatewaySettings
from gateway.deps import get_service
from gateway.errors import InvalidRequest
from gateway.inventory import InMemoryInventory, RedisInventory
from gateway.served_model import ServedModel
from gateway.service import RecommendationService, ServicePolicy
from stack.ports import free_port
from tests.unit.gateway.fakes import FakePublisher, FakePusher, FakeRecommender

TOKEN = "s3cret-admin-token"


@dataclass
class Parts:
    client: TestClient
    service: RecommendationService
    recommender: FakeRecommender
    publisher: FakePublisher
    store: InMemoryStore
    pusher: FakePusher


def make_parts(catalog, **settings) -> Parts:
    store = InMemoryStore(FeatureRules(history_items=10))
    store.load_snapshot({"u1": ["a", "b"]})
    served = ServedModel(version=3, catalog=catalog, popular_items=["c", "a", "e", "b"], sequence_length=4)
    recommender, publisher, pusher = FakeRecommender(catalog), FakePublisher(), FakePusher()
    config = GatewaySettings(**settings)
    policy = ServicePolicy(max_k=config.max_k, deadline_ms=config.request_deadline_ms,
                           exclude_seen=config.exclude_seen, max_batch_events=config.max_batch_events)
    service = RecommendationService(served, store, recommender, publisher, InMemoryInventory(),
                                    policy, pusher=pusher)
    app = create_app(config)
    app.dependency_overrides[get_service] = lambda: service
    # no `with`: the lifespan (real Triton/Kafka clients) is not started
    return Parts(TestClient(app), service, recommender, publisher, store, pusher)


@pytest.fixture
def parts(catalog) -> Parts:
    return make_parts(catalog, admin_token=TOKEN)


def ids(body) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def recommend(parts, user="u1", **params):
    response = parts.client.get(f"/v1/users/{user}/recommendations", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_known_user_gets_model_recommendations_without_seen_items(parts, catalog):
    body = recommend(parts, k=3)
    assert not body["cold_start"] and not body["degraded"] and body["model_version"] == 3
    assert body["source"] == "model"
    assert ids(body) == ["f", "e", "d"]
    assert body["items"][0]["title"] == "Foxtrot" and body["items"][1]["categories"] == ["Drama", "Action"]
    history, exclude, k = parts.recommender.calls[0]
    assert history.tolist() == [0, 0, catalog.index_of("a"), catalog.index_of("b")]
    assert sorted(exclude.tolist()) == sorted(catalog.indices_of(["a", "b"]).tolist()) and k == 3


def test_the_model_reads_the_users_events_with_their_types_in_event_order(parts, catalog):
    now = int(time.time() * 1000)
    # applied out of time order, as a late event arrives: the request follows event time
    for item, event_type, ts_ms in [("c", "purchase", now), ("a", "view", now - 2000),
                                    ("c", "cart", now - 1000)]:
        parts.store.apply(Event(user_id="u2", item_id=item, event_type=event_type, ts_ms=ts_ms))
    recommend(parts, user="u2", k=2)
    inputs = parts.recommender.inputs[-1]
    a, c = catalog.index_of("a"), catalog.index_of("c")
    assert inputs.history.tolist() == [[PAD_INDEX, a, c, c]]  # the repeat is a step of its own
    assert inputs.history_types.tolist() == [
        [PAD_TYPE, type_code("view"), type_code("cart"), type_code("purchase")]]
    assert list(inputs.tensors()) == [sig.HISTORY, sig.HISTORY_TYPES, sig.EXCLUDE, sig.K]


class OneUserStore:
    """A store holding one user's recent events as given (event types as enums or as names)."""

    blocking = False

    def __init__(self, recent) -> None:
        self.recent = recent

    def get(self, user_id, now_ms=None):
        return UserFeatures(user_id, list(self.recent), seen_items={e.item_id for e in self.recent})

    def trending(self, k, now_ms=None):
        return []


@pytest.mark.parametrize("as_enum", [True, False])
def test_event_types_reach_the_request_whether_stored_as_enums_or_names(catalog, as_enum):
    def kind(name):
        return EventType(name) if as_enum else name

    # out of order and with a tie on time: sorted by (time, event id), as the stores keep them
    recent = [RecentEvent("e3", "d", kind("purchase"), 20), RecentEvent("e2", "b", kind("cart"), 10),
              RecentEvent("e1", "a", kind("click"), 10)]
    served = ServedModel(version=1, catalog=catalog, popular_items=[], sequence_length=3)
    recommender = FakeRecommender(catalog)
    service = RecommendationService(served, OneUserStore(recent), recommender, FakePublisher(),
                                    InMemoryInventory())
    body = asyncio.run(service.recommend("u", 2))
    assert body.source == "model"
    (inputs,) = recommender.inputs
    assert inputs.history.tolist() == [catalog.indices_of(["a", "b", "d"]).tolist()]
    assert inputs.history_types.tolist() == [[type_code("click"), type_code("cart"), type_code("purchase")]]


def test_exclude_param_and_out_of_stock_items_are_never_recommended(parts):
    assert ids(recommend(parts, k=3, exclude=["f"])) == ["e", "d", "c"]
    response = parts.client.put("/v1/admin/stock", json={"quantities": {"e": 0, "d": 5}},
                                headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.json() == {"out_of_stock": ["e"]}
    assert ids(recommend(parts, k=3, exclude=["f"])) == ["d", "c"]  # only 2 unseen items left
    assert ids(recommend(parts, user="stranger", k=2)) == ["c", "a"]  # fallbacks obey it too


def test_bought_items_are_excluded_even_when_seen_items_are_allowed(catalog):
    parts = make_parts(catalog, exclude_seen=False)
    now = int(time.time() * 1000)
    parts.store.apply(Event(user_id="u1", item_id="f", event_type="purchase", ts_ms=now))
    body = recommend(parts, k=6)
    assert "f" not in ids(body) and {"a", "b"} <= set(ids(body))  # seen, not bought: allowed


def test_category_filter_and_per_category_cap(parts):
    assert ids(recommend(parts, k=3, category=["Drama"])) == ["e", "d"]
    assert ids(recommend(parts, k=3, category=["Comedy", "Drama"])) == ["e", "d", "c"]
    # primary categories: f none, e Drama, d Drama, c Comedy
    assert ids(recommend(parts, k=3, max_per_category=1)) == ["f", "e", "c"]
    assert parts.recommender.calls[-1][2] == 6  # more than k (here: all): the cap may drop some


def test_unknown_user_gets_popular_items_flagged_cold_start(parts):
    body = recommend(parts, user="stranger", k=2)
    assert body["cold_start"] and not body["degraded"] and body["source"] == "popular"
    assert ids(body) == ["c", "a"]
    assert parts.recommender.calls == []


def test_cold_start_follows_what_is_trending_in_the_stream(parts):
    now = int(time.time() * 1000)
    parts.store.apply_many(
        [Event(user_id=f"v{i}", item_id="e", event_type="view", ts_ms=now) for i in range(3)]
        + [Event(user_id="w", item_id="d", event_type="purchase", ts_ms=now)])
    body = recommend(parts, user="stranger", k=3)
    assert body["cold_start"] and body["source"] == "trending"
    # trending first (a purchase weighs more than three views), then the training data's popular
    assert ids(body) == ["d", "e", "c"]
    assert body["items"][0]["score"] > body["items"][1]["score"] and body["items"][2]["score"] is None


def test_model_failure_degrades_to_unseen_popular_items(parts):
    parts.recommender.fail = True
    body = recommend(parts, k=2)
    assert body["degraded"] and not body["cold_start"] and ids(body) == ["c", "e"]
    assert body["source"] == "popular"


def test_a_model_slower_than_the_deadline_is_abandoned_for_the_fallback(catalog):
    parts = make_parts(catalog, request_deadline_ms=50)
    parts.recommender.delay_s = 5
    body = recommend(parts, k=2)
    assert body["degraded"] and ids(body) == ["c", "e"]
    metrics = parts.client.get("/metrics").text
    assert 'gateway_recommendations_total{reason="deadline",source="popular"}' in metrics


@pytest.mark.parametrize("params", [
    {"k": 0}, {"k": -1}, {"k": 101}, {"k": "ten"}, {"exclude": "no spaces"},
    {"exclude": [f"i{n}" for n in range(101)]}, {"category": "Western"},
    {"max_per_category": -1}, {"max_per_category": 101},
])
def test_invalid_parameters_are_422_with_a_reason(parts, params):
    response = parts.client.get("/v1/users/u1/recommendations", params=params)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]


def test_k_larger_than_catalog_is_422_with_reason(parts):
    response = parts.client.get("/v1/users/u1/recommendations", params={"k": 50})
    assert response.status_code == 422
    assert "between 1 and 6" in response.json()["error"]["message"]


def test_invalid_user_id_is_422(parts):
    assert parts.client.get("/v1/users/bad%20id/recommendations").status_code == 422


def test_valid_event_is_published_and_high_intent_events_trigger_a_push(parts):
    response = parts.client.post("/v1/events", json={"user_id": "u1", "item_id": "c", "event_type": "cart"})
    assert response.status_code == 202
    assert response.json()["event_id"] == parts.publisher.events[0].event_id
    parts.client.post("/v1/events", json={"user_id": "u1", "item_id": "c", "event_type": "view"})
    assert [e.event_type.value for e in parts.pusher.scheduled] == ["cart"]


def test_a_push_carries_what_a_get_without_k_answers_capped_at_max_k(parts):
    parts.client.post("/v1/events", json={"user_id": "u1", "item_id": "c", "event_type": "cart"})
    pushed = asyncio.run(parts.pusher.recommend("u1"))
    # push_k is 10 but the catalog has 6 items: the push answers with all it can, not an error
    assert pushed.source == "model" and pushed.user_id == "u1"
    assert [i.item_id for i in pushed.items] == ["f", "e", "d", "c"]
    assert parts.recommender.calls[-1][2] == 6


@pytest.mark.parametrize("payload, reason", [
    ({"user_id": "u1", "item_id": "zzz", "event_type": "view"}, "unknown item_id"),
    ({"user_id": "u1", "item_id": "c", "event_type": "teleport"}, "event_type"),
    ({"user_id": "u1", "event_type": "view"}, "item_id"),
    ({"user_id": "", "item_id": "c", "event_type": "view"}, "user_id"),
    ({"user_id": "u1", "item_id": "c", "event_type": "view", "ts_ms": 2 * int(time.time() * 1000)},
     "in the future"),
])
def test_bad_events_are_422_with_a_reason_and_nothing_is_published(parts, payload, reason):
    response = parts.client.post("/v1/events", json=payload)
    assert response.status_code == 422
    assert reason in response.text
    assert parts.publisher.events == []


def test_batch_is_published_whole_or_rejected_whole(parts):
    good = {"user_id": "u1", "item_id": "c", "event_type": "view"}
    response = parts.client.post("/v1/events:batch", json={"events": [good, good | {"item_id": "d"}]})
    assert response.status_code == 202 and len(response.json()["accepted"]) == 2
    bad = parts.client.post("/v1/events:batch", json={"events": [good, good | {"item_id": "nope"}]})
    assert bad.status_code == 422 and "events[1]" in bad.json()["error"]["message"]
    assert len(parts.publisher.events) == 2  # nothing of the bad batch


def test_batch_size_is_bounded(catalog):
    parts = make_parts(catalog, max_batch_events=2)
    event = {"user_id": "u1", "item_id": "c", "event_type": "view"}
    response = parts.client.post("/v1/events:batch", json={"events": [event] * 3})
    assert response.status_code == 422 and "between 1 and 2" in response.text
    assert parts.client.post("/v1/events:batch", json={"events": []}).status_code == 422


def test_malformed_json_body_is_422(parts):
    response = parts.client.post("/v1/events", content=b"{oops", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and parts.publisher.events == []


def test_oversized_bodies_are_413_before_they_are_read(catalog):
    parts = make_parts(catalog, max_body_bytes=1000)
    big = {"user_id": "u1", "item_id": "c", "event_type": "view", "context": {"x": "y" * 2000}}
    response = parts.client.post("/v1/events", json=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit is enforced as the body streams in
        yield b'{"events": ['
        for _ in range(50):
            yield b'{"user_id": "u1", "item_id": "c", "event_type": "view"},'
    streamed = parts.client.post("/v1/events:batch", content=chunks(),
                                 headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and parts.publisher.events == []


def test_admin_needs_the_bearer_token(parts, catalog):
    body = {"quantities": {"a": 0}}
    assert parts.client.put("/v1/admin/stock", json=body).status_code == 401
    wrong = parts.client.put("/v1/admin/stock", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    unknown = parts.client.put("/v1/admin/stock", json={"quantities": {"zzz": 0}}, headers=auth)
    assert unknown.status_code == 422
    assert parts.client.get("/v1/admin/stock", headers=auth).json() == {"out_of_stock": []}
    disabled = make_parts(catalog)  # no token configured: the admin API is off
    assert disabled.client.put("/v1/admin/stock", json=body,
                               headers={"Authorization": "Bearer x"}).status_code == 403


def test_model_calls_beyond_the_in_flight_cap_are_shed_to_the_fallback(catalog):
    parts = make_parts(catalog)
    parts.service.policy = ServicePolicy(max_inflight_model_calls=1, deadline_ms=5000)
    parts.recommender.delay_s = 0.2

    async def two_at_once():
        return await asyncio.gather(parts.service.recommend("u1", 2), parts.service.recommend("u1", 2))

    first, second = asyncio.run(two_at_once())
    assert first.source == "model" and second.degraded and second.source == "popular"
    assert len(parts.recommender.calls) == 1


def test_undecodable_body_is_422_in_the_error_shape(parts):
    response = parts.client.post("/v1/events", content=b"\xff&", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    assert parts.client.get("/v1/nowhere").json()["error"]["code"] == "not_found"


def test_a_version_with_another_input_shape_is_refused_on_reload(parts, catalog):
    from gateway.errors import Conflict

    other = ServedModel(version=4, catalog=catalog, popular_items=[], sequence_length=8)
    with pytest.raises(Conflict, match="sequence length 8"):
        parts.service.reload(other)
    assert parts.service.served.version == 3


# --- what the feature consumer would dead-letter is refused here (issue 15) ------------------------


def _event(**fields) -> dict:
    return {"user_id": "u1", "item_id": "c", "event_type": "view"} | fields


def test_an_event_larger_than_the_consumer_accepts_is_422_not_202(parts):
    # 5,000 characters of context: under the 256 KiB body limit, over the 4096-byte event limit
    # that features.events.parse_event applies to event.to_bytes() in the consumer.
    response = parts.client.post("/v1/events", json=_event(context={"note": "x" * 5000}))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "larger than the 4096-byte limit" in error["message"]
    assert parts.publisher.events == []


def test_a_batch_with_an_oversized_event_names_it_and_publishes_nothing(parts):
    events = [_event(), _event(context={"note": "x" * 5000}), _event()]
    response = parts.client.post("/v1/events:batch", json={"events": events})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith("events[1]: the event is ")
    assert parts.publisher.events == []


def test_the_event_limits_are_the_service_policys(parts):
    parts.service.policy = ServicePolicy(max_event_bytes=300, max_future_skew_ms=1000)
    too_big = parts.client.post("/v1/events", json=_event(context={"note": "x" * 250}))
    assert too_big.status_code == 422 and "larger than the 300-byte limit" in too_big.text
    # a minute ahead passes the default 5 minutes, not this consumer's one second
    ahead = parts.client.post("/v1/events", json=_event(ts_ms=int(time.time() * 1000) + 60_000))
    assert ahead.status_code == 422 and "at most 1000 ms allowed" in ahead.text
    assert parts.publisher.events == []


def test_the_gateway_takes_its_event_limits_from_the_consumers_settings(monkeypatch):
    # One source of truth: the embedded consumer's FeatureServiceSettings (RECSYS_FEATURES_*).
    monkeypatch.setenv("RECSYS_FEATURES_MAX_EVENT_BYTES", "1234")
    monkeypatch.setenv("RECSYS_FEATURES_MAX_FUTURE_SKEW_MS", "4321")
    settings = GatewaySettings()
    features = settings.features()
    policy = _policy(settings, features)
    assert (features.max_event_bytes, features.max_future_skew_ms) == (1234, 4321)
    assert (policy.max_event_bytes, policy.max_future_skew_ms) == (1234, 4321)


@pytest.mark.parametrize("request_", [
    ("get", "/v1/users/u1%0A/recommendations", {}),
    ("get", "/v1/users/u1/recommendations?exclude=a%0A", {}),
    ("post", "/v1/events", {"json": {"user_id": "u1\n", "item_id": "c", "event_type": "view"}}),
    ("post", "/v1/events", {"json": {"user_id": "u1", "item_id": "c\n", "event_type": "view"}}),
    ("post", "/v1/events:batch", {"json": {"events": [_event(), _event(event_id="e1\n")]}}),
])
def test_ids_with_a_trailing_newline_are_422(parts, request_):
    method, url, kwargs = request_
    response = getattr(parts.client, method)(url, **kwargs)
    assert response.status_code == 422, response.text
    assert parts.publisher.events == []


def test_exclude_with_a_trailing_newline_is_refused_by_the_service(parts):
    # The service layer (shared with gRPC) checks ids too, not only the REST route's pattern.
    with pytest.raises(InvalidRequest, match="invalid item id 'a\\\\n'"):
        asyncio.run(parts.service.recommend("u1", 2, exclude=["a\n"]))


class _FailingInventory(InMemoryInventory):
    def set_quantities(self, quantities: dict[str, int]) -> None:
        raise StoreUnavailable("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.mark.parametrize("inventory", [
    _FailingInventory,
    # the real Redis inventory, on a port where nothing listens
    lambda: RedisInventory(f"redis://127.0.0.1:{free_port()}/0", timeout_ms=200),
], ids=["fake", "redis-down"])
def test_setting_stock_with_the_store_down_is_the_documented_503(parts, inventory):
    parts.service.inventory = inventory()
    response = parts.client.put("/v1/admin/stock", json={"quantities": {"a": 0}},
                                headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable" and "stock store is unavailable" in error["message"]
    assert "6379" not in error["message"]  # the store's own error (its address) stays in the log
