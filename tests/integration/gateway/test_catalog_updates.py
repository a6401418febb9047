"""Catalog updates on the real broker: PUT through an in-process gateway onto a compacted catalog
topic, read back by the refresh job's reader as each item's latest update, a malformed record
written straight to the topic counted and skipped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from features.catalog_stream import read_catalog_topic
from features.catalog_updates import ItemUpdate
from gateway.app import create_app
from gateway.config import GatewaySettings
from refresh.catalog_feed import read_catalog_updates
from tests.support.gateway import gateway_settings, wait_ready

TOKEN = "catalog-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def catalog_gateway(exported, triton, kafka, topic) -> Iterator[TestClient]:
    settings = GatewaySettings(**gateway_settings(
        exported, triton, kafka, topic, admin_token=TOKEN, catalog_topic=f"{topic}.catalog"))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def put(client: TestClient, item_id: str, body: dict) -> dict:
    response = client.put(f"/v1/admin/items/{item_id}", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    return response.json()


def cleanup_policy(bootstrap_servers: str, topic: str) -> str | None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    text = repr(found)
    return "compact" if "'compact'" in text or '"compact"' in text else text


def test_the_latest_update_of_each_item_is_read_back_and_garbage_skipped(catalog_gateway, kafka, topic):
    client = catalog_gateway
    catalog_topic = f"{topic}.catalog"
    known = client.get("/v1/catalog", params={"limit": 1}).json()["items"][0]["item_id"]
    assert cleanup_policy(kafka.bootstrap_servers, catalog_topic) == "compact"

    first = put(client, "new-sku-1", {"title": "Kettle", "categories": ["Home"], "price": 20.0})
    assert first["in_catalog"] is False and first["topic"] == catalog_topic
    second = put(client, "new-sku-1", {"item_id": "new-sku-1", "title": "Kettle 2",
                                       "categories": ["Home", "Kitchen"], "price": 18.5, "year": 2025})
    # one key, one partition: the later update is the later offset
    assert second["partition"] == first["partition"] and second["offset"] > first["offset"]
    assert put(client, known, {"title": "Known item", "stock": 0})["in_catalog"] is True
    # the stock applied at once, before any refresh
    assert known in client.get("/v1/admin/stock", headers=AUTH).json()["out_of_stock"]
    bad = client.put("/v1/admin/items/new-sku-2", json={"title": "x", "price": -1}, headers=AUTH)
    assert bad.status_code == 422

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    try:
        producer.send(catalog_topic, key=b"junk", value=b'{"item_id": "junk", "price": "free"}').get(30)
    finally:
        producer.close()

    updates = read_catalog_updates(kafka.bootstrap_servers, catalog_topic, timeout_s=30)
    assert set(updates) == {"new-sku-1", known}
    latest = updates["new-sku-1"]
    assert isinstance(latest, ItemUpdate)
    assert (latest.title, latest.categories, latest.price, latest.year) == \
        ("Kettle 2", ("Home", "Kitchen"), 18.5, 2025)
    assert updates[known].stock == 0 and updates[known].title == "Known item"

    read = read_catalog_topic(kafka.bootstrap_servers, catalog_topic)
    assert (read.records, read.invalid, read.deleted) == (4, 1, 0)
    assert read.updates == updates


def test_a_topic_that_does_not_exist_holds_no_updates(kafka, topic):
    read = read_catalog_topic(kafka.bootstrap_servers, f"{topic}.no-such-catalog", timeout_s=10)
    assert read.updates == {} and not read.topic_exists
