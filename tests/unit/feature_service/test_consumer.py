"""FeatureConsumer.process with fake Kafka clients: what is applied, dead-lettered, committed."""

import base64
import json
import time
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaTimeoutError

from feature_service.config import FeatureServiceSettings
from feature_service.consumer import FeatureConsumer, dead_letter_record
from feature_service.store import InMemoryStore, StoreUnavailable
from features.events import Event

TOPIC = "user-events"
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class FakeFuture:
    def __init__(self, error=None):
        self.error = error

    def get(self, timeout=None):
        if self.error:
            raise self.error


class FakeProducer:
    def __init__(self, error=None):
        self.sent, self.error = [], error

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, key, value))
        return FakeFuture(self.error)

    def flush(self, timeout=None):
        pass


class FakeConsumer:
    def __init__(self, commit_error=None):
        self.commits, self.seeks, self.commit_error = [], [], commit_error

    def commit(self, offsets):
        if self.commit_error:
            raise self.commit_error
        self.commits.append({tp: o.offset for tp, o in offsets.items()})

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))


class DurableStore(InMemoryStore):
    durable = True


class DownStore(DurableStore):
    def apply_many(self, events):
        raise StoreUnavailable("connection refused")


def message(value, offset=0, partition=0):
    return SimpleNamespace(value=value, key=b"u", topic=TOPIC, partition=partition, offset=offset,
                           timestamp=int(time.time() * 1000))


def event(**fields) -> bytes:
    return Event(**{"user_id": "u", "item_id": "1", "event_type": "click", **fields}).to_bytes()


def good(event_id):
    return event(event_id=event_id)


BAD = {
    "malformed JSON": b'{"user_id": "u", ',
    "missing field": b'{"user_id": "u", "event_type": "view"}',
    "wrong type": b'{"user_id": "u", "item_id": "1", "event_type": "view", "ts_ms": "soon"}',
    "unknown event type": b'{"user_id": "u", "item_id": "1", "event_type": "like"}',
    "unknown field": b'{"user_id": "u", "item_id": "1", "event_type": "view", "price": 3}',
    "oversized": event(context={"note": "x" * 5000}),
    "future timestamp": event(ts_ms=int(time.time() * 1000) + 3600_000),
    "tombstone": None,
    "not UTF-8": b"\xff\xfe\x00",
}


def test_invalid_messages_are_dead_lettered_with_reasons_and_valid_ones_applied():
    store, dlq, kafka = DurableStore(), FakeProducer(), FakeConsumer()
    consumer = FeatureConsumer(FeatureServiceSettings(events_topic=TOPIC), store)
    messages = [message(good("e1"), 0)] + [message(v, i + 1) for i, v in enumerate(BAD.values())]
    consumer.process(kafka, dlq, {TP0: messages})
    assert store.get("u").recent_items == ["1"]
    assert (consumer.applied, consumer.dead_lettered) == (1, len(BAD))
    records = [json.loads(value) for _, _, value in dlq.sent]
    assert {topic for topic, _, _ in dlq.sent} == {"user-events.dlq"}
    assert [r["source"]["offset"] for r in records] == list(range(1, len(BAD) + 1))
    reasons = dict(zip(BAD, (r["reason"] for r in records), strict=True))
    assert "item_id" in reasons["missing field"] and "Field required" in reasons["missing field"]
    assert "event_type" in reasons["unknown event type"]
    assert "ts_ms" in reasons["wrong type"] and "ts_ms" in reasons["future timestamp"]
    assert "4096-byte limit" in reasons["oversized"]
    assert "tombstone" in reasons["tombstone"]
    # the exact bytes are kept, even when they are not text
    assert base64.b64decode(records[-1]["payload_base64"]) == BAD["not UTF-8"]
    assert kafka.commits == [{TP0: len(BAD) + 1}] and not kafka.seeks


def test_redelivered_events_are_counted_once_and_offsets_committed_per_partition():
    store, kafka = DurableStore(), FakeConsumer()
    consumer = FeatureConsumer(FeatureServiceSettings(), store)
    batch = {TP0: [message(good("e1"), 5)], TP1: [message(good("e2"), 7, 1), message(good("e1"), 8, 1)]}
    consumer.process(kafka, FakeProducer(), batch)
    assert (consumer.applied, consumer.duplicates) == (2, 1)
    assert kafka.commits == [{TP0: 6, TP1: 9}]


def test_store_outage_rewinds_the_batch_without_committing():
    kafka = FakeConsumer()
    consumer = FeatureConsumer(FeatureServiceSettings(retry_backoff_ms=1), DownStore())
    consumer.process(kafka, FakeProducer(), {TP0: [message(good("e1"), 3), message(good("e2"), 4)]})
    assert kafka.seeks == [(TP0, 3)] and kafka.commits == []


def test_dead_letter_failure_rewinds_instead_of_losing_the_record():
    kafka = FakeConsumer()
    consumer = FeatureConsumer(FeatureServiceSettings(), DurableStore())
    consumer.process(kafka, FakeProducer(error=KafkaTimeoutError()), {TP0: [message(b"junk", 9)]})
    assert kafka.seeks == [(TP0, 9)] and kafka.commits == []


def test_a_failed_commit_after_a_rebalance_is_survived():
    store = DurableStore()
    consumer = FeatureConsumer(FeatureServiceSettings(), store)
    consumer.process(FakeConsumer(commit_error=CommitFailedError()), FakeProducer(),
                     {TP0: [message(good("e1"))]})
    assert store.get("u") is not None  # applied; the next owner's redelivery is de-duplicated


def test_in_process_store_replays_instead_of_committing():
    kafka = FakeConsumer()
    consumer = FeatureConsumer(FeatureServiceSettings(), InMemoryStore())
    assert not consumer.group_mode
    consumer.process(kafka, FakeProducer(), {TP0: [message(good("e1"))]})
    assert consumer.applied == 1 and kafka.commits == []


def test_on_applied_gets_new_events_with_their_record_timestamp():
    seen = []
    consumer = FeatureConsumer(FeatureServiceSettings(), InMemoryStore(),
                               on_applied=lambda e, ts: seen.append((e.event_id, ts)))
    msgs = [message(good("e1")), message(good("e1"), 1)]
    consumer.process(FakeConsumer(), FakeProducer(), {TP0: msgs})
    assert seen == [("e1", msgs[0].timestamp)]


@pytest.mark.parametrize("events_topic, dlq", [("clicks", "clicks.dlq")])
def test_dead_letter_topic_follows_the_events_topic(events_topic, dlq):
    assert FeatureServiceSettings(events_topic=events_topic).dlq_topic == dlq
    assert FeatureServiceSettings(dead_letter_topic="x").dlq_topic == "x"


def test_dead_letter_record_keeps_text_payloads_verbatim():
    record = json.loads(dead_letter_record(b'{"a": 1}', "bad", "t", 1, 7))
    assert record["source"] == {"topic": "t", "partition": 1, "offset": 7}
    assert record["payload"] == '{"a": 1}' and record["reason"] == "bad"
