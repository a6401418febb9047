"""The REST front end over the real service layer, with fakes for Triton and Kafka."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from feature_service.store import InMemoryStore
from features.events import Event
from features.user_state import FeatureRules
from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.deps import get_service
from gateway.errors import UpstreamUnavailable
from gateway.producer import Published
from gateway.served_model import ServedModel
from gateway.service import RecommendationService


class FakeRecommender:
    def __init__(self, catalog):
        self.catalog = catalog
        self.calls = []
        self.fail = False

    async def recommend(self, history, exclude, k):
        self.calls.append((history.copy(), exclude.copy(), k))
        if self.fail:
            raise UpstreamUnavailable("triton down")
        # the best-scored unexcluded items, highest index first
        candidates = [i for i in range(self.catalog.num_embeddings - 1, 1, -1) if i not in set(exclude)]
        picked = np.array(candidates[:k])
        scores = np.linspace(0.9, 0.5, len(picked)).astype(np.float32)
        return picked, scores


class FakePublisher:
    def __init__(self):
        self.events = []

    async def publish(self, event):
        self.events.append(event)
        return Published(event.event_id, "user-events", 0, len(self.events) - 1)


@pytest.fixture
def parts(catalog):
    store = InMemoryStore(FeatureRules(history_items=10))
    store.load_snapshot({"u1": ["a", "b"]})
    served = ServedModel(version=3, catalog=catalog, popular_items=["c", "a", "e", "b"], sequence_length=4)
    recommender, publisher = FakeRecommender(catalog), FakePublisher()
    service = RecommendationService(served, store, recommender, publisher, max_k=100)
    app = create_app(GatewaySettings())
    app.dependency_overrides[get_service] = lambda: service
    # no `with`: the lifespan (real Triton/Kafka clients) is not started
    return TestClient(app), recommender, publisher, store


def test_known_user_gets_model_recommendations_without_seen_items(parts, catalog):
    client, recommender, _, _ = parts
    response = client.get("/v1/users/u1/recommendations", params={"k": 3})
    assert response.status_code == 200
    body = response.json()
    assert not body["cold_start"] and not body["degraded"] and body["model_version"] == 3
    assert [i["item_id"] for i in body["items"]] == ["f", "e", "d"]
    assert body["items"][0]["title"] == "Foxtrot"
    history, exclude, k = recommender.calls[0]
    assert history.tolist() == [0, 0, catalog.index_of("a"), catalog.index_of("b")]
    assert sorted(exclude.tolist()) == sorted(catalog.indices_of(["a", "b"]).tolist()) and k == 3


def test_unknown_user_gets_popular_items_flagged_cold_start(parts):
    client, recommender, _, _ = parts
    body = client.get("/v1/users/stranger/recommendations", params={"k": 2}).json()
    assert body["cold_start"] and not body["degraded"] and body["source"] == "popular"
    assert [i["item_id"] for i in body["items"]] == ["c", "a"]
    assert recommender.calls == []


def test_cold_start_follows_what_is_trending_in_the_stream(parts):
    client, _, _, store = parts
    now = int(time.time() * 1000)
    store.apply_many([Event(user_id=f"v{i}", item_id="e", event_type="view", ts_ms=now) for i in range(3)]
                     + [Event(user_id="w", item_id="d", event_type="purchase", ts_ms=now)])
    body = client.get("/v1/users/stranger/recommendations", params={"k": 3}).json()
    assert body["cold_start"] and body["source"] == "trending"
    # trending first (purchase weighs more than three views), then the training data's popular
    assert [i["item_id"] for i in body["items"]] == ["d", "e", "c"]
    assert body["items"][0]["score"] > body["items"][1]["score"] and body["items"][2]["score"] is None


def test_model_failure_degrades_to_unseen_popular_items(parts):
    client, recommender, _, _ = parts
    recommender.fail = True
    response = client.get("/v1/users/u1/recommendations", params={"k": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["degraded"] and [i["item_id"] for i in body["items"]] == ["c", "e"]
    assert body["source"] == "popular"


@pytest.mark.parametrize("k", [0, -1, 101, "ten"])
def test_k_out_of_range_is_422(parts, k):
    client, _, _, _ = parts
    assert client.get("/v1/users/u1/recommendations", params={"k": k}).status_code == 422


def test_k_larger_than_catalog_is_422_with_reason(parts):
    client, _, _, _ = parts
    response = client.get("/v1/users/u1/recommendations", params={"k": 50})
    assert response.status_code == 422
    assert "between 1 and 6" in response.json()["error"]["message"]


def test_valid_event_is_published(parts):
    client, _, publisher, _ = parts
    response = client.post("/v1/events", json={"user_id": "u1", "item_id": "c", "event_type": "cart"})
    assert response.status_code == 202
    assert response.json()["event_id"] == publisher.events[0].event_id


@pytest.mark.parametrize("payload, reason", [
    ({"user_id": "u1", "item_id": "zzz", "event_type": "view"}, "unknown item_id"),
    ({"user_id": "u1", "item_id": "c", "event_type": "teleport"}, "event_type"),
    ({"user_id": "u1", "event_type": "view"}, "item_id"),
    ({"user_id": "", "item_id": "c", "event_type": "view"}, "user_id"),
    ({"user_id": "u1", "item_id": "c", "event_type": "view", "ts_ms": 2 * int(time.time() * 1000)},
     "in the future"),
])
def test_bad_events_are_422_with_a_reason_and_nothing_is_published(parts, payload, reason):
    client, _, publisher, _ = parts
    response = client.post("/v1/events", json=payload)
    assert response.status_code == 422
    assert reason in response.text
    assert publisher.events == []


def test_malformed_json_body_is_422(parts):
    client, _, publisher, _ = parts
    response = client.post("/v1/events", content=b"{oops", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and publisher.events == []
