"""The gateway's event producer against a broker of its own that goes down: a 503 is honest."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition

from features.events import Event, EventType
from gateway.errors import UpstreamUnavailable
from gateway.producer import EventProducer
from gateway.push import PushHub
from stack.kafka import KafkaBroker, kafka_unavailable_reason
from stack.testing import require_service
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[KafkaBroker]:
    """A broker of its own: this test stops it."""
    require_service(kafka_unavailable_reason())
    with KafkaBroker(tmp_path_factory.mktemp("down-kafka")) as b:
        yield b


def view(user_id: str = "u1") -> Event:
    return Event(user_id=user_id, item_id="a", event_type=EventType.VIEW)


def event_ids_in(broker: KafkaBroker, topic: str) -> list[str]:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        ids: list[str] = []
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=500).values():
                ids += [Event.from_bytes(r.value).event_id for r in records]
        return ids
    finally:
        consumer.close()


def test_an_event_answered_503_while_the_broker_is_down_is_not_delivered_later(broker):
    """Before: the producer kept the record for 120 s after the 503 and delivered it once the
    broker was back, so a client's retry (with a new server-assigned id) made two events."""
    topic = f"events-{uuid.uuid4().hex[:8]}"
    broker.create_topics([topic], partitions=1)
    producer = EventProducer(broker.bootstrap_servers, topic, timeout_ms=2000)
    try:
        first = view()
        asyncio.run(producer.publish(first))
        broker.stop()
        lost = view()
        with pytest.raises(UpstreamUnavailable) as raised:
            asyncio.run(producer.publish(lost))
        broker.start()
        # Same user, same partition, in order: once this one is acknowledged, anything the
        # producer still held for the partition would have been written before it.
        after = view()
        deadline = time.monotonic() + 60
        while True:
            try:
                asyncio.run(producer.publish(after))
                break
            except UpstreamUnavailable:
                if time.monotonic() > deadline:
                    raise
        ids = event_ids_in(broker, topic)
        assert lost.event_id not in ids
        assert ids[0] == first.event_id and ids[-1] == after.event_id
        assert raised.value.details == [{"event_id": lost.event_id}]  # retry with it
    finally:
        producer.close()


def test_the_push_hub_waits_out_a_broker_that_is_down_at_start(broker):
    """Before: the hub's thread died on the first Kafka error and push stayed down until a
    restart. Now /readyz's reason says why while the broker is down, and it recovers."""
    topic = f"recs-{uuid.uuid4().hex[:8]}"
    broker.create_topics([topic], partitions=2)
    broker.stop()

    async def run():
        hub = PushHub(broker.bootstrap_servers, topic, retry_initial_ms=100, retry_max_ms=1000)
        hub.start()
        try:
            await asyncio.to_thread(wait_for, lambda: hub.not_ready_reason not in (None, "starting"),
                                    "the hub to say why it is not ready", 60)
            down = (hub.ready.is_set(), hub.not_ready_reason, hub.alive)
            await asyncio.to_thread(broker.start)
            await asyncio.to_thread(wait_for, hub.ready.is_set, "the hub following the topic", 90)
            return down, hub.not_ready_reason, hub.alive
        finally:
            await asyncio.to_thread(hub.stop)

    (was_ready, reason, was_alive), reason_after, alive = asyncio.run(run())
    assert not was_ready and was_alive and reason
    assert reason_after is None and alive


def test_the_producer_recovers_after_the_broker_comes_back(tmp_path):
    """Before: with kafka-python's idempotent producer and a delivery timeout as short as the
    request's wait, records that expired during a broker restart left it failing every send after
    the broker was back (the soak test saw 503s for minutes, until the end of the run)."""
    topic = f"events-{uuid.uuid4().hex[:8]}"
    # A broker of its own, fresh: the module's has been stopped and started by the tests above.
    with KafkaBroker(tmp_path / "kafka") as broker:
        broker.create_topics([topic], partitions=3)
        _publish_through_a_restart(broker, topic)


def _publish_through_a_restart(broker: KafkaBroker, topic: str) -> None:
    producer = EventProducer(broker.bootstrap_servers, topic, timeout_ms=2000)

    async def publish_all(events) -> list[bool]:
        async def one(event):
            try:
                await producer.publish(event)
                return True
            except UpstreamUnavailable:
                return False
        return await asyncio.gather(*(one(e) for e in events))

    try:
        assert all(asyncio.run(publish_all([view(f"u{i}") for i in range(10)])))
        # sends keep coming while it goes down and comes back, some in flight when it stops
        sending, outcomes = threading.Event(), []

        def keep_sending() -> None:
            while not sending.is_set():
                outcomes.extend(asyncio.run(publish_all([view(f"u{i}") for i in range(5)])))
                time.sleep(0.1)

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            wait_for(lambda: len(outcomes) >= 10, "sends before the stop")
            broker.stop()
            wait_for(lambda: not all(outcomes), "a send refused")
            assert not producer.connected()  # readiness asks the broker, not the cached metadata
            assert "unreachable" in producer.not_ready_reason
            broker.start()
        finally:
            sending.set()
            sender.join()
        deadline = time.monotonic() + 60
        while not all(asyncio.run(publish_all([view(f"u{i}") for i in range(10)]))):
            assert time.monotonic() < deadline, "the producer still fails a minute after the restart"
        # and it stays healthy
        assert all(asyncio.run(publish_all([view(f"u{i}") for i in range(20)])))
        assert producer.connected() and producer.not_ready_reason is None
    finally:
        producer.close()
