"""The exposure log (gateway/exposure.py) with a fake Kafka producer, its wiring into the service
(REST, gRPC metadata, push, fallbacks), and the light checks of an event's attribution context."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from feature_service.store import InMemoryStore
from features.events import Event
from features.user_state import FeatureRules
from gateway import metrics
from gateway.exposure import (
    ExposureLog,
    exposure_record,
    is_valid_position,
    is_valid_request_id,
    request_id_or_new,
)
from gateway.schemas import Recommendations, RecommendedItem
from gateway.service import RecommendationService, attributable
from tests.unit.gateway.test_api import make_parts


class FakeFuture:
    def __init__(self) -> None:
        self.callbacks: list = []
        self.errbacks: list = []

    def add_callback(self, fn) -> None:
        self.callbacks.append(fn)

    def add_errback(self, fn) -> None:
        self.errbacks.append(fn)


class FakeProducer:
    """Takes every record (``fail``: raises like a send without metadata; ``block``: send waits
    for it); acknowledges at once unless ``ack`` is false (``nack``: fails instead)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict]] = []
        self.fail = False
        self.ack = True
        self.nack = False
        self.block: threading.Event | None = None
        self.flushed = False
        self.closed = False

    def send(self, topic: str, *, key: bytes, value: bytes) -> FakeFuture:
        if self.block is not None:
            self.block.wait(5)
        if self.fail:
            raise TimeoutError("no metadata")
        self.sent.append((topic, key, json.loads(value)))
        future = FakeFuture()
        if self.nack:
            future.add_errback = lambda fn: fn(RuntimeError("broker said no"))  # type: ignore[method-assign]
        elif self.ack:
            future.add_callback = lambda fn: fn(object())  # type: ignore[method-assign]
        return future

    def flush(self, timeout: float | None = None) -> None:
        self.flushed = True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class RecordingExposures:
    def __init__(self) -> None:
        self.records: list[tuple[Recommendations, str]] = []

    def record(self, recs: Recommendations, surface: str) -> None:
        self.records.append((recs, surface))


def counts() -> dict[str, float]:
    return {r: metrics.EXPOSURES.labels(r)._value.get() for r in ("sent", "dropped_full", "dropped_error")}


def delta(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in counts().items()}


async def until(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def recs(request_id: str = "r1", user_id: str = "u1", n: int = 3, source: str = "model") -> Recommendations:
    items = [RecommendedItem(item_id=f"i{n}", title="T", categories=["Drama"],
                             score=None if source == "popular" else 0.5 - n / 10) for n in range(n)]
    return Recommendations(request_id=request_id, user_id=user_id, items=items, cold_start=False,
                           degraded=source != "model", source=source, model_version=4)


# --- request ids and attribution values ------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0f" * 16, "a-b_c.d:e", "x" * 64])
def test_a_valid_request_id_is_kept(value):
    assert is_valid_request_id(value) and request_id_or_new(value) == value


@pytest.mark.parametrize("value", [None, "", "x" * 65, "a b", "a\n", "é", "a/b", "<script>"])
def test_anything_else_gets_a_fresh_uuid4_hex(value):
    fresh = request_id_or_new(value)
    assert fresh != value and len(fresh) == 32 and int(fresh, 16) >= 0
    assert request_id_or_new(value) != fresh  # fresh each time


@pytest.mark.parametrize("value, valid", [("0", True), ("9", True), ("999", True), ("1000", False),
                                          ("-1", False), ("1.5", False), ("", False), ("x", False),
                                          (" 1", False)])
def test_position_is_a_small_non_negative_integer(value, valid):
    assert is_valid_position(value) is valid


def test_attribution_keeps_valid_values_and_drops_bad_ones_with_a_counter():
    event = Event(user_id="u1", item_id="a", event_type="click",
                  context={"request_id": "r1", "position": "2", "page": "home"})
    assert attributable(event) is event
    plain = Event(user_id="u1", item_id="a", event_type="click")
    assert attributable(plain) is plain
    dropped = metrics.ATTRIBUTION_DROPPED.labels("request_id")._value.get()
    bad = Event(user_id="u1", item_id="a", event_type="click",
                context={"request_id": "a b", "position": "3", "page": "home"})
    kept = attributable(bad)
    assert kept.context == {"position": "3", "page": "home"} and kept.event_id == bad.event_id
    assert metrics.ATTRIBUTION_DROPPED.labels("request_id")._value.get() == dropped + 1
    only = attributable(Event(user_id="u1", item_id="a", event_type="click", context={"position": "-1"}))
    assert only.context is None


def test_an_event_with_bad_attribution_is_still_accepted(catalog):
    parts = make_parts(catalog)
    response = parts.client.post("/v1/events", json={
        "user_id": "u1", "item_id": "a", "event_type": "click",
        "context": {"request_id": "not valid!", "position": "1"}})
    assert response.status_code == 202, response.text
    assert parts.publisher.events[-1].context == {"position": "1"}
    response = parts.client.post("/v1/events:batch", json={"events": [
        {"user_id": "u1", "item_id": "a", "event_type": "click",
         "context": {"request_id": "r-7", "position": "many"}}]})
    assert response.status_code == 202, response.text
    assert parts.publisher.events[-1].context == {"request_id": "r-7"}


# --- the record -------------------------------------------------------------------------------------


def test_record_shape():
    record = exposure_record(recs(source="popular"), "push", 1234)
    assert record == {
        "request_id": "r1", "user_id": "u1", "surface": "push", "model_version": 4, "arm": None,
        "source": "popular", "degraded": True, "cold_start": False, "ts_ms": 1234,
        "items": [{"position": 0, "item_id": "i0", "score": None},
                  {"position": 1, "item_id": "i1", "score": None},
                  {"position": 2, "item_id": "i2", "score": None}]}
    assert json.loads(json.dumps(record)) == record


# --- the queue and the drain ------------------------------------------------------------------------


def test_records_are_sent_keyed_by_user_and_counted():
    producer = FakeProducer()

    async def main():
        log = ExposureLog(producer, "impressions", max_queue=10)
        log.start()
        for n in range(5):
            log.record(recs(f"r{n}", user_id=f"u{n % 2}"), "feed")
        await log.close()

    before = counts()
    asyncio.run(main())
    assert [(t, k, v["request_id"]) for t, k, v in producer.sent] == [
        ("impressions", f"u{n % 2}".encode(), f"r{n}") for n in range(5)]
    assert producer.sent[0][2]["surface"] == "feed" and producer.sent[0][2]["items"][2]["position"] == 2
    assert producer.flushed and producer.closed
    assert delta(before) == {"sent": 5, "dropped_full": 0, "dropped_error": 0}


def test_a_full_queue_drops_and_counts_without_blocking():
    producer = FakeProducer()
    producer.block = threading.Event()  # Kafka stuck: the drain holds one batch, the queue fills

    async def main():
        log = ExposureLog(producer, "impressions", max_queue=3, close_timeout_s=0.2)
        log.start()
        log.record(recs("first"), "feed")
        await until(lambda: log.queued == 0)  # the drain took "first" and is stuck in send()
        for n in range(10):
            log.record(recs(f"r{n}"), "feed")  # returns at once
        assert log.queued == 3
        producer.block.set()
        await log.close()

    before = counts()
    asyncio.run(main())
    assert [v["request_id"] for _, _, v in producer.sent] == ["first", "r0", "r1", "r2"]
    assert delta(before) == {"sent": 4, "dropped_full": 7, "dropped_error": 0}


def test_kafka_down_drops_the_batch_with_a_count_and_the_drain_goes_on():
    producer = FakeProducer()
    producer.fail = True

    async def main():
        log = ExposureLog(producer, "impressions")
        log.start()
        for n in range(4):
            log.record(recs(f"r{n}"), "feed")
        await until(lambda: delta(before)["dropped_error"] == 4)
        producer.fail = False
        log.record(recs("after"), "feed")
        await log.close()

    before = counts()
    asyncio.run(main())
    assert [v["request_id"] for _, _, v in producer.sent] == ["after"]
    assert delta(before) == {"sent": 1, "dropped_full": 0, "dropped_error": 4}


def test_a_failed_delivery_counts_as_dropped_error():
    producer = FakeProducer()
    producer.nack = True

    async def main():
        log = ExposureLog(producer, "impressions")
        log.start()
        log.record(recs(), "feed")
        await log.close()

    before = counts()
    asyncio.run(main())
    assert delta(before) == {"sent": 0, "dropped_full": 0, "dropped_error": 1}


def test_close_waits_a_bounded_time_and_counts_what_is_left():
    producer = FakeProducer()
    producer.block = threading.Event()  # never set: Kafka never takes the batch

    async def main():
        log = ExposureLog(producer, "impressions", close_timeout_s=0.2)
        log.start()
        log.record(recs("stuck"), "feed")
        await until(lambda: log.queued == 0)
        log.record(recs("queued"), "feed")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await log.close()
        assert loop.time() - started < 1.5
        log.record(recs("late"), "feed")  # after close: dropped, not queued

    before = counts()
    asyncio.run(main())
    producer.block.set()
    assert delta(before)["dropped_error"] == 2  # "queued" and "late"


# --- wiring: every served list is recorded once, with the id the client sees -------------------------


def with_exposures(parts) -> RecordingExposures:
    exposures = RecordingExposures()
    parts.service.exposures = exposures
    return exposures


def test_rest_echoes_a_valid_request_id_and_records_the_served_list(catalog):
    parts = make_parts(catalog)
    exposures = with_exposures(parts)
    response = parts.client.get("/v1/users/u1/recommendations", params={"k": 3},
                                headers={"X-Request-ID": "client-42"})
    body = response.json()
    assert body["request_id"] == "client-42" and response.headers["X-Request-ID"] == "client-42"
    [(served, surface)] = exposures.records
    assert surface == "feed" and served.request_id == "client-42"
    assert [i.item_id for i in served.items] == [i["item_id"] for i in body["items"]]


@pytest.mark.parametrize("header", [{}, {"X-Request-ID": "bad id"}, {"X-Request-ID": "x" * 200}])
def test_rest_without_a_valid_request_id_gets_a_fresh_one_never_an_error(catalog, header):
    parts = make_parts(catalog)
    exposures = with_exposures(parts)
    response = parts.client.get("/v1/users/u1/recommendations", params={"k": 2}, headers=header)
    assert response.status_code == 200
    rid = response.json()["request_id"]
    assert len(rid) == 32 and rid != header.get("X-Request-ID")
    assert exposures.records[0][0].request_id == rid


def test_fallbacks_are_recorded_too(catalog):
    parts = make_parts(catalog)
    exposures = with_exposures(parts)
    parts.recommender.fail = True
    degraded = parts.client.get("/v1/users/u1/recommendations", params={"k": 2}).json()
    cold = parts.client.get("/v1/users/stranger/recommendations", params={"k": 2}).json()
    assert degraded["degraded"] and cold["cold_start"]
    assert [(r.request_id, r.source, s) for r, s in exposures.records] == [
        (degraded["request_id"], degraded["source"], "feed"), (cold["request_id"], cold["source"], "feed")]


def test_an_invalid_request_records_nothing(catalog):
    parts = make_parts(catalog)
    exposures = with_exposures(parts)
    assert parts.client.get("/v1/users/u1/recommendations", params={"k": 0}).status_code == 422
    assert exposures.records == []


def test_push_lists_are_recorded_as_push(catalog):
    store = InMemoryStore(FeatureRules(history_items=10))
    parts = make_parts(catalog)
    service: RecommendationService = parts.service
    service.store = store
    exposures = with_exposures(parts)
    pushed = asyncio.run(service.recommend_for_push("u9"))
    [(served, surface)] = exposures.records
    assert surface == "push" and served is pushed and len(pushed.request_id) == 32
