import json
from types import SimpleNamespace

from feature_service.config import FeatureServiceSettings
from feature_service.consumer import FeatureConsumer, dead_letter_record
from feature_service.store import InMemoryStore
from features.events import Event


class FakeProducer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, key, value))


def message(value: bytes, offset: int = 0):
    return SimpleNamespace(value=value, key=b"u", topic="user-events", partition=0, offset=offset)


def test_valid_events_are_applied_once_and_invalid_ones_dead_lettered():
    store = InMemoryStore()
    consumer = FeatureConsumer(FeatureServiceSettings(), store)
    dlq = FakeProducer()
    event = Event(user_id="u", item_id="1", event_type="click")
    consumer._handle(dlq, message(event.to_bytes()))
    consumer._handle(dlq, message(event.to_bytes(), offset=1))  # redelivery
    consumer._handle(dlq, message(b'{"user_id": "u"}', offset=2))
    consumer._handle(dlq, message(b"\xff not json", offset=3))
    assert store.get("u").recent_items == ["1"]
    assert (consumer.applied, consumer.duplicates, consumer.dead_lettered) == (1, 1, 2)
    topics = {t for t, _, _ in dlq.sent}
    assert topics == {"user-events.dlq"}
    first = json.loads(dlq.sent[0][2])
    assert "item_id" in first["reason"] and first["source"]["offset"] == 2


def test_dead_letter_record_keeps_undecodable_payloads():
    record = json.loads(dead_letter_record(b"\xff\xfe", "bad", "t", 1, 7))
    assert record["source"] == {"topic": "t", "partition": 1, "offset": 7}
    assert record["payload"]

