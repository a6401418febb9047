"""Events into Kafka, keyed by user id so one user's events stay in order on one partition."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError

from features.events import Event
from gateway.errors import UpstreamUnavailable


@dataclass(frozen=True)
class Published:
    event_id: str
    topic: str
    partition: int
    offset: int


class EventProducer:
    def __init__(self, bootstrap_servers: str, topic: str, timeout_ms: int) -> None:
        self.topic = topic
        self.timeout_s = timeout_ms / 1000
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            # Retries cannot duplicate or reorder a user's events on a partition.
            enable_idempotence=True,
            retries=5,
            linger_ms=1,
            request_timeout_ms=timeout_ms,
            max_block_ms=timeout_ms,
        )

    @property
    def client(self) -> KafkaProducer:
        """The underlying producer (thread-safe), shared with the pusher."""
        return self._producer

    def _send(self, event: Event) -> Published:
        future = self._producer.send(self.topic, key=event.user_id.encode(), value=event.to_bytes())
        meta = future.get(timeout=self.timeout_s)
        return Published(event.event_id, meta.topic, meta.partition, meta.offset)

    def _send_many(self, events: Sequence[Event]) -> list[Published]:
        futures = [self._producer.send(self.topic, key=e.user_id.encode(), value=e.to_bytes())
                   for e in events]
        self._producer.flush(timeout=self.timeout_s)
        out = []
        for event, future in zip(events, futures, strict=True):
            meta = future.get(timeout=self.timeout_s)
            out.append(Published(event.event_id, meta.topic, meta.partition, meta.offset))
        return out

    async def publish(self, event: Event) -> Published:
        """Wait for the broker's acknowledgement: a 202 means the event is durable."""
        try:
            return await asyncio.to_thread(self._send, event)
        except KafkaError as exc:
            raise UpstreamUnavailable(f"Kafka: {exc}") from exc

    async def publish_many(self, events: Sequence[Event]) -> list[Published]:
        """Send all, then wait for every acknowledgement (one round of batching, not N)."""
        try:
            return await asyncio.to_thread(self._send_many, events)
        except KafkaError as exc:
            raise UpstreamUnavailable(f"Kafka: {exc}") from exc

    def connected(self) -> bool:
        """The broker answers metadata for our topic (bootstrap_connected() goes False once the
        bootstrap socket is closed, even on a healthy client)."""
        try:
            return bool(self._producer.partitions_for(self.topic))
        except KafkaError:
            return False

    def close(self) -> None:
        self._producer.close(timeout=self.timeout_s)
