"""Catalog updates from the admin API onto the ``catalog`` topic, keyed by item id: the topic is
compacted (created so by ``gateway.components.event_producer``), so it keeps every item's latest
update and the refresh job and the cold-item path read it as a table (features/catalog_stream.py).

The updates share the event producer's kafka-python client (thread-safe, already connected), not a
producer of their own: they are rare, and one more client would be one more thing to watch.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Protocol

from fastapi import Depends, Request
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.future import Future as KafkaFuture
from pydantic import BaseModel, Field

from features.catalog_updates import ItemAttributes, ItemUpdate
from features.events import ID_PATTERN
from gateway.deps import ServiceDep
from gateway.errors import InvalidRequest, UpstreamUnavailable
from gateway.producer import settle_on


class ItemUpdateBody(ItemAttributes):
    """The item's whole state (a PUT replaces it: the compacted topic keeps only the latest record
    of an item, so a record must not depend on earlier ones). ``item_id`` may be left out; if
    given, it must be the path's."""

    item_id: str | None = Field(default=None, pattern=ID_PATTERN)

    def for_item(self, item_id: str) -> ItemUpdate:
        if self.item_id is not None and self.item_id != item_id:
            raise InvalidRequest(f"item_id: the body names {self.item_id!r}, the path {item_id!r}")
        return ItemUpdate(item_id=item_id, **self.model_dump(exclude={"item_id"}))


class CatalogAccepted(BaseModel):
    item_id: str
    # False: a new item, recommendable once a refresh (or the cold-item path) has added it.
    in_catalog: bool
    topic: str
    partition: int
    offset: int


class KafkaClient(Protocol):
    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None) -> KafkaFuture: ...


class CatalogPublisher:
    def __init__(self, client: KafkaClient, topic: str, timeout_ms: int) -> None:
        self.client = client
        self.topic = topic
        self.timeout_s = timeout_ms / 1000

    async def publish(self, update: ItemUpdate) -> tuple[int, int]:
        """(partition, offset) once the broker has acknowledged the update."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.timeout_s
        try:
            # send() blocks while the topic's metadata is missing; admin updates are rare, so the
            # default executor may take that wait.
            future = await asyncio.to_thread(self.client.send, self.topic,
                                             key=update.item_id.encode(), value=update.to_bytes())
            remaining = max(0.0, deadline - time.monotonic())
            try:
                meta = await asyncio.wait_for(settle_on(loop, future), timeout=remaining + 1.0)
            except TimeoutError:
                raise KafkaTimeoutError(f"no acknowledgement within {self.timeout_s:g} s") from None
        except KafkaError as exc:
            raise UpstreamUnavailable(
                f"Kafka: {exc}; the update may or may not have been written: repeat the same PUT "
                "(the topic keeps the latest update of an item, so a repeat is harmless)") from exc
        return meta.partition, meta.offset


def get_catalog_publisher(request: Request, service: ServiceDep) -> CatalogPublisher:
    """The app's publisher, made on first use from the service's event producer (created here, not
    in the lifespan, so the lifespan and the service stay as they are)."""
    publisher = getattr(request.app.state, "catalog_publisher", None)
    if publisher is None:
        client = getattr(service.publisher, "client", None)
        if client is None:
            raise UpstreamUnavailable("catalog updates need the gateway's Kafka producer")
        settings = request.app.state.settings
        publisher = CatalogPublisher(client, settings.catalog_topic, settings.kafka_timeout_ms)
        request.app.state.catalog_publisher = publisher
    return publisher


CatalogPublisherDep = Annotated[CatalogPublisher, Depends(get_catalog_publisher)]
