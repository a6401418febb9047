"""EventProducer over a fake kafka-python client: what a 503 promises, and that waiting for
acknowledgements holds no worker thread of the pool the feature-store reads run on."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from feature_service.store import InMemoryStore, store_call
from features.events import Event, EventType
from features.user_state import FeatureRules
from gateway import producer as producer_module
from gateway.errors import UpstreamUnavailable
from gateway.producer import EventProducer


class RecordFuture(Future):
    """kafka-python's FutureRecordMetadata: callbacks, and a blocking ``get``."""

    def __init__(self) -> None:
        super().__init__()
        self._settled = threading.Event()
        self.add_both(lambda _: self._settled.set())

    def get(self, timeout=None):
        if not self._settled.wait(timeout):
            raise KafkaTimeoutError(f"no acknowledgement within {timeout} s")
        if self.failed():
            raise self.exception
        return self.value


class FakeKafka:
    """kafka-python's KafkaProducer: records its config; ``send`` returns a future that the test
    settles (``ack``/``fail``), or that is settled at once when ``auto`` is set."""

    def __init__(self, **config) -> None:
        self.config = config
        self.futures: list[Future] = []
        self.auto: str | None = None  # "ack" | "fail"
        self.lock = threading.Lock()

    def send(self, topic, key=None, value=None) -> Future:
        future = RecordFuture()
        with self.lock:
            self.futures.append(future)
            offset = len(self.futures) - 1
        if self.auto == "ack":
            future.success(SimpleNamespace(topic=topic, partition=0, offset=offset))
        elif self.auto == "fail":
            future.failure(KafkaTimeoutError("Expiring 1 record(s): delivery timeout"))
        return future

    def flush(self, timeout=None) -> None:
        pass

    def close(self, timeout=None) -> None:
        pass


@pytest.fixture
def make_producer(monkeypatch):
    made: list[EventProducer] = []
    monkeypatch.setattr(producer_module, "KafkaProducer", FakeKafka)

    def make(timeout_ms: int = 5000) -> EventProducer:
        made.append(EventProducer("127.0.0.1:9", "user-events", timeout_ms))
        return made[-1]

    yield make
    for p in made:
        p.close()


def event(user: str = "u1", event_id: str | None = None) -> Event:
    fields = {"event_id": event_id} if event_id else {}
    return Event(user_id=user, item_id="a", event_type=EventType.VIEW, **fields)


def test_the_producer_gives_a_record_up_within_the_requests_wait(make_producer):
    """kafka-python keeps an unacknowledged record for delivery_timeout_ms (120 s by default) and
    may deliver it long after the client got its 503: the wait and the delivery timeout agree."""
    config = make_producer(timeout_ms=2000).client.config
    assert config["delivery_timeout_ms"] == 2000
    assert config["request_timeout_ms"] + config["linger_ms"] <= config["delivery_timeout_ms"]
    assert config["max_block_ms"] <= 2000


def test_a_503_carries_the_event_ids_the_server_assigned(make_producer):
    producer = make_producer()
    producer.client.auto = "fail"
    events = [event("u1"), event("u2", event_id="mine-1")]
    with pytest.raises(UpstreamUnavailable) as raised:
        asyncio.run(producer.publish_many(events))
    assert raised.value.details == [{"event_id": e.event_id} for e in events]
    with pytest.raises(UpstreamUnavailable) as raised:
        asyncio.run(producer.publish(events[0]))
    assert raised.value.details == [{"event_id": events[0].event_id}]


def test_acknowledged_events_are_published_in_order(make_producer):
    producer = make_producer()
    producer.client.auto = "ack"

    async def run():
        one = await producer.publish(event())
        many = await producer.publish_many([event("u2"), event("u3")])
        return one, many

    one, many = asyncio.run(run())
    assert one.offset == 0 and [p.offset for p in many] == [1, 2]


def test_waiting_for_kafka_holds_no_thread_a_store_read_needs(make_producer):
    """Kafka down: many event POSTs wait for acknowledgements that do not come. A feature-store
    read (on the default executor, as every Redis read is) still runs at once, not after they
    give up."""
    # The test settles the acknowledgements itself, after the read; a producer that holds a
    # thread per wait frees them only when its 2 s wait is over, and the read comes after.
    producer = make_producer(timeout_ms=2000)
    store = InMemoryStore(FeatureRules(history_items=10))
    store.load_snapshot({"u1": ["a", "b"]})

    async def run():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=4))
        posts = [asyncio.create_task(producer.publish(event(f"u{i}"))) for i in range(32)]
        # every POST has handed its record to the client (or is queued for it) before the read
        while len(producer.client.futures) < len(posts):
            await asyncio.sleep(0.01)
        features = await store_call(store, store.get, "u1")
        pending = sum(not p.done() for p in posts)
        for future in producer.client.futures:  # the broker comes back: everything is acked
            future.success(SimpleNamespace(topic="user-events", partition=0, offset=0))
        await asyncio.gather(*posts, return_exceptions=True)
        return features, pending

    features, pending = asyncio.run(run())
    assert features is not None and pending == 32


def test_a_rest_503_to_an_event_post_names_the_event_ids(make_producer, catalog):
    from tests.unit.gateway.test_api import make_parts

    parts = make_parts(catalog)
    parts.service.publisher = producer = make_producer()
    producer.client.auto = "fail"
    response = parts.client.post("/v1/events", json={"user_id": "u1", "item_id": "a",
                                                     "event_type": "view"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "upstream_unavailable"
    [detail] = error["details"]
    assert len(detail["event_id"]) == 32  # the id the server gave the event
    response = parts.client.post("/v1/events:batch", json={"events": [
        {"user_id": "u1", "item_id": "a", "event_type": "view", "event_id": "e-1"},
        {"user_id": "u2", "item_id": "b", "event_type": "view", "event_id": "e-2"}]})
    assert response.status_code == 503
    assert response.json()["error"]["details"] == [{"event_id": "e-1"}, {"event_id": "e-2"}]


def test_a_grpc_unavailable_to_ingest_names_the_event_ids(make_producer, catalog):
    import grpc

    from gateway.grpc_server import EVENT_IDS_KEY
    from gateway.proto import recsys_pb2 as pb
    from tests.unit.gateway.test_api import make_parts
    from tests.unit.gateway.test_grpc_server import rpc_error

    service = make_parts(catalog).service
    service.publisher = producer = make_producer()
    producer.client.auto = "fail"
    events = [pb.Event(user_id="u1", item_id="a", event_type=pb.EVENT_TYPE_VIEW, event_id="e-1"),
              pb.Event(user_id="u2", item_id="b", event_type=pb.EVENT_TYPE_VIEW, event_id="e-2")]
    error = rpc_error(lambda: service,
                      lambda stub: stub.IngestBatch(pb.IngestBatchRequest(events=events)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(error.trailing_metadata())[EVENT_IDS_KEY] == "e-1,e-2"


def test_a_push_waiting_for_kafka_holds_no_thread_a_store_read_needs():
    """The pusher produces on the same client: its waits for acknowledgements hold no thread of
    the default executor either."""
    from gateway.push import FrequencyCap, Pusher
    from tests.unit.gateway.test_push import cart, fake_recommend

    kafka = FakeKafka()  # never acknowledges until the test says so
    store = InMemoryStore(FeatureRules(history_items=10))
    users = [f"u{i}" for i in range(8)]
    for user in users:
        store.apply(cart(user=user, event_id=f"e-{user}"))

    async def run():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
        pusher = Pusher(store, kafka, "recommendations", FrequencyCap(0),
                        produce_timeout_ms=2000)
        for user in users:
            pusher.schedule(cart(user=user, event_id=f"e-{user}"), fake_recommend)
        while len(kafka.futures) < len(users):
            await asyncio.sleep(0.01)
        features = await store_call(store, store.get, "u0")
        pending = len(pusher._tasks)
        for future in kafka.futures:
            future.success(SimpleNamespace(topic="recommendations", partition=0, offset=0))
        await asyncio.sleep(0.05)
        await pusher.close()
        return features, pending

    features, pending = asyncio.run(run())
    assert features is not None and pending == len(users)


def test_recommendations_keep_their_threads_while_event_posts_wait_for_kafka(make_producer, catalog):
    """The finding itself: Kafka not answering, many event POSTs in flight, and a recommendation
    still reads the store in time (before, its read queued behind the POSTs' waits, and it
    answered from the fallback, degraded)."""
    import httpx

    from tests.unit.gateway.test_api import make_parts

    parts = make_parts(catalog)
    parts.service.publisher = producer = make_producer(timeout_ms=2000)
    posts_n = 32

    async def run():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=4))
        transport = httpx.ASGITransport(app=parts.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            posts = [asyncio.create_task(client.post("/v1/events", json={
                "user_id": f"u{i}", "item_id": "a", "event_type": "view"}))
                for i in range(posts_n)]
            while len(producer.client.futures) < posts_n:
                await asyncio.sleep(0.01)
            answer = await client.get("/v1/users/u1/recommendations", params={"k": 3})
            pending = sum(not p.done() for p in posts)
            for future in producer.client.futures:
                future.success(SimpleNamespace(topic="user-events", partition=0, offset=0))
            statuses = [r.status_code for r in await asyncio.gather(*posts)]
        return answer, pending, statuses

    answer, pending, statuses = asyncio.run(run())
    assert answer.status_code == 200 and answer.json()["source"] == "model"
    assert not answer.json()["degraded"]
    assert pending == posts_n and statuses == [202] * posts_n


def test_kafka_readiness_asks_the_broker_after_a_failed_send_and_recovers_without_traffic(
        make_producer, monkeypatch):
    """Before: readiness read the producer's cached metadata, so /readyz said ready through a
    whole broker outage (soak test). A gateway out of rotation gets no events to tell it the broker
    is back: the probe must."""
    producer = make_producer()
    broker_up, probes = [True], []

    def probe():
        probes.append(1)
        return None if broker_up[0] else "Kafka unreachable: KafkaConnectionError()"

    monkeypatch.setattr(producer, "_probe", probe)
    producer.client.auto = "ack"
    asyncio.run(producer.publish(event()))
    assert producer.connected() and not probes  # a fresh acknowledgement: no need to ask
    broker_up[0] = False
    producer.client.auto = "fail"
    with pytest.raises(UpstreamUnavailable):
        asyncio.run(producer.publish(event()))
    assert not producer.connected()
    assert producer.not_ready_reason.startswith("Kafka unreachable")
    assert "the last send failed" in producer.not_ready_reason
    broker_up[0] = True  # back, and no event has come since
    assert producer.connected() and producer.not_ready_reason is None
    assert producer.connected() and len(probes) == 2  # answered: no probe until idle again


def test_an_idle_producer_asks_the_broker_before_saying_ready(make_producer, monkeypatch):
    producer = make_producer()
    monkeypatch.setattr(producer, "_probe", lambda: "Kafka unreachable: KafkaTimeoutError()")
    monkeypatch.setattr(producer, "_last_ack_at", producer_module.time.monotonic()
                        - producer_module.PROBE_AFTER_IDLE_S - 1)
    assert not producer.connected() and "unreachable" in producer.not_ready_reason
