"""GET /v1/items/{item_id}/similar over the real service layer, with the fakes for Triton and Kafka
(the fake model ranks by index, highest first: "f" > "e" > ... > "a")."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from feature_service.store import StoreUnavailable
from features import contract as sig
from features.events import Event
from gateway.exposure import exposure_record
from gateway.triton_client import TritonRecommender
from tests.unit.gateway.test_api import make_parts
from tests.unit.gateway.test_exposure import RecordingExposures


@pytest.fixture
def parts(catalog):
    parts = make_parts(catalog)
    parts.service.exposures = RecordingExposures()
    return parts


def similar(parts, item="c", status=200, **params):
    response = parts.client.get(f"/v1/items/{item}/similar", params=params)
    assert response.status_code == status, response.text
    return response.json()


def ids(body):
    return [i["item_id"] for i in body["items"]]


def test_model_answer_without_the_item_itself_pinned_to_the_served_version(parts, catalog):
    body = similar(parts, "f", k=3)
    assert ids(body) == ["e", "d", "c"]
    assert body["item_id"] == "f" and body["source"] == "model" and not body["degraded"]
    assert body["model_version"] == 3
    (index, exclude, k, version), = parts.recommender.similar_calls
    assert index == catalog.index_of("f") and exclude.tolist() == [catalog.index_of("f")]
    assert (k, version) == (3, 3)


def test_out_of_stock_items_are_excluded(parts, catalog):
    parts.service.inventory.set_quantities({"e": 0, "d": 5})
    assert ids(similar(parts, "f", k=3)) == ["d", "c", "b"]
    assert catalog.index_of("e") in parts.recommender.similar_calls[0][1].tolist()


def test_a_users_bought_items_are_excluded_when_a_user_is_given(parts):
    now = int(time.time() * 1000)
    parts.store.apply(Event(user_id="u1", item_id="e", event_type="purchase", ts_ms=now))
    assert ids(similar(parts, "f", k=2, user_id="u1")) == ["d", "c"]
    assert ids(similar(parts, "f", k=2)) == ["e", "d"]  # no user: nothing of theirs left out
    assert ids(similar(parts, "f", k=2, user_id="stranger")) == ["e", "d"]


def test_unknown_item_is_404_in_the_error_shape(parts):
    body = similar(parts, "nope", status=404)
    assert body["error"]["code"] == "unknown_item" and "nope" in body["error"]["message"]
    assert parts.recommender.similar_calls == []


def test_invalid_parameters_are_422(parts):
    assert similar(parts, "c", status=422, k=0)["error"]["code"] == "invalid_request"
    assert similar(parts, "c", status=422, k=7)["error"]["code"] == "invalid_request"  # > catalog


def test_model_failure_degrades_to_popular_items_of_the_same_category(parts):
    parts.recommender.fail = True
    body = similar(parts, "a", k=3)  # Action: b and e share it; popular = c, a, e, b
    assert body["degraded"] and body["source"] == "popular"
    assert ids(body) == ["e", "b"]


def test_a_repository_without_the_model_answers_501_and_the_feed_still_works(parts):
    parts.recommender.similar_served = False
    body = similar(parts, "a", status=501, k=2)
    assert body["error"]["code"] == "not_served"
    assert parts.client.get("/v1/users/u1/recommendations?k=2").status_code == 200


def test_the_answer_is_logged_as_surface_similar_with_the_query_item(parts):
    body = similar(parts, "f", k=2, user_id="u1")
    response = parts.client.get("/v1/items/f/similar?k=2", headers={"X-Request-ID": "req-7"})
    assert response.headers["X-Request-ID"] == "req-7"
    (first, surface), (second, _) = parts.service.exposures.records
    assert surface == "similar" and first.request_id == body["request_id"]
    record = exposure_record(first, surface, 1)
    assert record["item_id"] == "f" and record["user_id"] == "u1" and record["surface"] == "similar"
    assert [i["item_id"] for i in record["items"]] == ids(body)
    anonymous = exposure_record(second, "similar", 1)
    assert anonymous["user_id"] is None and anonymous["request_id"] == "req-7"
    assert json.loads(json.dumps(anonymous)) == anonymous


# --- the Triton client -----------------------------------------------------------------------------

def configs(target: str) -> dict:
    from google.protobuf import json_format

    from export.triton.repository import ServingConfig, model_configs

    return {name: json_format.MessageToDict(c, preserving_proto_field_name=True)
            for name, c in model_configs(4, 8, ServingConfig(), target).items()}


class Client:
    """Triton with the exporter's configs; ``similar_items`` missing unless ``with_similar``."""

    def __init__(self, target: str, with_similar: bool = True):
        from tritonclient.utils import InferenceServerException

        self.configs = configs(target)
        if not with_similar:
            del self.configs[sig.SIMILAR_ITEMS]
        self.error = InferenceServerException
        self.sent = []

    async def get_model_config(self, model, as_json):
        if model not in self.configs:
            raise self.error(f"Request for unknown model: '{model}' is not found")
        return {"config": self.configs[model]}

    async def infer(self, model, inputs, *, outputs, client_timeout, model_version):
        self.sent.append((model, model_version, [(i.name(), i.datatype(), i.shape()) for i in inputs]))
        names = [o.name() for o in outputs]
        arrays = dict(zip(names, (np.array([[4, 3]]), np.array([[0.9, 0.1]], np.float32)), strict=True))
        return type("Result", (), {"as_numpy": lambda self, name: arrays[name]})()

    async def close(self):
        pass


@pytest.mark.parametrize("target", ["python", "libtorch"])
def test_the_client_calls_similar_items_by_its_own_names_pinned_to_the_version(target):
    client = Client(target)
    triton = TritonRecommender("unused", 1000, sig.RECOMMEND_FUSED, client=client)

    async def scenario():
        await triton.connect()
        return await triton.similar(5, np.array([[5, 0, 0]]), 2, version=7)

    indices, scores = asyncio.run(scenario())
    assert indices.tolist() == [4, 3] and scores.tolist() == pytest.approx([0.9, 0.1])
    (model, version, inputs), = client.sent
    assert (model, version) == (sig.SIMILAR_ITEMS, "7")
    expected = ["INPUT__0", "INPUT__1", "INPUT__2"] if target == "libtorch" else [
        sig.ITEM, sig.EXCLUDE, sig.K]
    assert [name for name, _, _ in inputs] == expected
    assert [(d, s) for _, d, s in inputs] == [("INT64", [1, 1]), ("INT64", [1, 3]), ("INT32", [1, 1])]


def test_without_similar_items_start_up_succeeds_and_the_call_is_not_served():
    from gateway.errors import NotServed

    triton = TritonRecommender("unused", 1000, sig.RECOMMEND_FUSED, client=Client("python", False))
    asyncio.run(triton.connect())
    assert triton.sequence_length == 4 and triton.similar_names is None
    with pytest.raises(NotServed, match="re-export"):
        asyncio.run(triton.similar(5, np.zeros((1, 1), np.int64), 2, version=1))


def test_a_store_failure_still_answers_flagged_degraded(parts):
    class Down:
        blocking = False

        def get(self, user_id, now_ms=None):
            raise StoreUnavailable("redis down")

    parts.service.store = Down()
    body = similar(parts, "f", k=2, user_id="u1")
    assert body["degraded"] and body["source"] == "model" and ids(body) == ["e", "d"]
