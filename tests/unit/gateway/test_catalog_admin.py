"""PUT /v1/admin/items/{item_id} over the real service layer and the real CatalogPublisher, with a
fake kafka-python client: what reaches the catalog topic, what the client is told, and the stock
that applies at once."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from feature_service.store import StoreUnavailable
from features.catalog_updates import ItemUpdate
from gateway.catalog_updates import CatalogPublisher, get_catalog_publisher
from tests.unit.gateway.test_api import TOKEN, make_parts

AUTH = {"Authorization": f"Bearer {TOKEN}"}
KETTLE = {"title": "Kettle", "categories": ["Home", "Kitchen"], "price": 19.99, "year": 2024}


class FakeKafkaClient:
    """kafka-python's KafkaProducer.send: each record acknowledged at the next offset of partition
    0 (``mode`` "ack"), failed ("fail"), or never acknowledged ("hang")."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.mode = "ack"
        self.lock = threading.Lock()

    def send(self, topic, key=None, value=None) -> Future:
        future = Future()
        with self.lock:
            self.sent.append((topic, key, value))
            offset = len(self.sent) - 1
        if self.mode == "ack":
            future.success(SimpleNamespace(topic=topic, partition=0, offset=offset))
        elif self.mode == "fail":
            future.failure(KafkaTimeoutError("Expiring 1 record(s): delivery timeout"))
        return future


@pytest.fixture
def kafka() -> FakeKafkaClient:
    return FakeKafkaClient()


@pytest.fixture
def parts(catalog, kafka):
    parts = make_parts(catalog, admin_token=TOKEN, kafka_timeout_ms=200)
    parts.kafka = kafka
    publisher = CatalogPublisher(kafka, "catalog", 200)
    parts.client.app.dependency_overrides[get_catalog_publisher] = lambda: publisher
    return parts


def put(parts, item_id, body, headers=AUTH):
    return parts.client.put(f"/v1/admin/items/{item_id}", json=body, headers=headers)


def test_a_new_item_is_produced_keyed_by_its_id_and_acknowledged(parts):
    response = put(parts, "sku-1", KETTLE)
    assert response.status_code == 202, response.text
    assert response.json() == {"item_id": "sku-1", "in_catalog": False, "topic": "catalog",
                               "partition": 0, "offset": 0}
    [(topic, key, value)] = parts.kafka.sent
    assert (topic, key) == ("catalog", b"sku-1")
    record = ItemUpdate.from_bytes(value)
    assert record.item_id == "sku-1" and record.categories == ("Home", "Kitchen")
    assert record.price == 19.99 and record.year == 2024 and record.stock is None
    assert record.updated_at_ms > 0


def test_a_known_item_may_name_itself_in_the_body(parts):
    response = put(parts, "a", {"item_id": "a", "title": "Alpha 2"})
    assert response.status_code == 202 and response.json()["in_catalog"] is True
    assert json.loads(parts.kafka.sent[0][2])["title"] == "Alpha 2"


def test_stock_applies_to_the_inventory_at_once(parts):
    assert put(parts, "e", {"title": "Echo", "stock": 0}).status_code == 202
    assert parts.service.inventory.out_of_stock() == {"e"}
    body = parts.client.get("/v1/users/u1/recommendations", params={"k": 6}).json()
    assert "e" not in [i["item_id"] for i in body["items"]]
    assert parts.client.get("/v1/admin/stock", headers=AUTH).json() == {"out_of_stock": ["e"]}
    # a new item's level is kept for when it arrives; an update without stock leaves it as it was
    assert put(parts, "sku-2", {"title": "New", "stock": 0}).status_code == 202
    assert put(parts, "e", {"title": "Echo"}).status_code == 202
    assert parts.service.inventory.out_of_stock() == {"e", "sku-2"}
    assert put(parts, "e", {"title": "Echo", "stock": 4}).status_code == 202
    assert parts.service.inventory.out_of_stock() == {"sku-2"}


@pytest.mark.parametrize("item_id, body, where", [
    ("sku-1", {"item_id": "sku-2", "title": "K"}, "the body names 'sku-2', the path 'sku-1'"),
    ("sku-1", {"categories": ["x"]}, "body.title: Field required"),
    ("sku-1", {"title": "K", "price": -1}, "body.price: Input should be greater than or equal to 0"),
    ("sku-1", {"title": "K", "stock": -1}, "body.stock"),
    ("sku-1", {"title": "K", "year": 24}, "body.year"),
    ("sku-1", {"title": "K", "categories": ["a|b"]}, "may not contain '|'"),
    ("sku-1", {"title": "K", "colour": "red"}, "body.colour: Extra inputs are not permitted"),
    ("bad%20id", {"title": "K"}, "path.item_id"),
])
def test_bad_updates_are_422_in_the_error_shape_and_never_produced(parts, item_id, body, where):
    response = put(parts, item_id, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and where in error["message"]
    assert parts.kafka.sent == []
    assert parts.service.inventory.out_of_stock() == frozenset()


def test_malformed_json_is_422(parts):
    response = parts.client.put("/v1/admin/items/sku-1", content=b"{nope",
                                headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_needs_the_admin_token(parts, catalog):
    assert put(parts, "sku-1", KETTLE, headers={}).status_code == 401
    assert put(parts, "sku-1", KETTLE, headers={"Authorization": "Bearer nope"}).status_code == 401
    disabled = make_parts(catalog)
    assert disabled.client.put("/v1/admin/items/sku-1", json=KETTLE, headers=AUTH).status_code == 403
    assert parts.kafka.sent == []


@pytest.mark.parametrize("mode", ["fail", "hang"])
def test_kafka_not_acknowledging_is_a_503_and_no_stock_change(parts, mode):
    parts.kafka.mode = mode
    response = put(parts, "e", {"title": "Echo", "stock": 0})
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable" and "repeat the same PUT" in error["message"]
    assert parts.service.inventory.out_of_stock() == frozenset()


def test_stock_store_down_after_the_topic_took_it_is_a_503(parts, monkeypatch):
    def down(_quantities):
        raise StoreUnavailable("redis down")

    monkeypatch.setattr(parts.service.inventory, "set_quantities", down)
    response = put(parts, "e", {"title": "Echo", "stock": 0})
    assert response.status_code == 503
    assert "on the catalog topic, but the stock store is unavailable" in response.json()["error"]["message"]
    assert len(parts.kafka.sent) == 1


def test_the_publisher_is_made_from_the_event_producers_client(catalog, kafka):
    parts = make_parts(catalog, admin_token=TOKEN, catalog_topic="items-table")
    parts.service.publisher.client = kafka  # the EventProducer's kafka-python client
    assert put(parts, "sku-1", KETTLE).status_code == 202
    assert put(parts, "sku-1", KETTLE).json()["offset"] == 1  # one publisher, kept on the app
    assert [t for t, _, _ in kafka.sent] == ["items-table", "items-table"]


def test_without_a_kafka_client_catalog_updates_are_unavailable(catalog):
    parts = make_parts(catalog, admin_token=TOKEN)
    response = put(parts, "sku-1", KETTLE)
    assert response.status_code == 503 and "Kafka producer" in response.json()["error"]["message"]


def test_the_publisher_waits_without_blocking_the_loop(kafka):
    kafka.mode = "hang"
    publisher = CatalogPublisher(kafka, "catalog", 100)

    async def run():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with pytest.raises(Exception, match="no acknowledgement within 0.1 s"):
            await publisher.publish(ItemUpdate(item_id="x", title="X"))
        ticker.cancel()
        return ticks

    assert asyncio.run(run()) > 5
