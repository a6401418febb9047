"""FeatureConsumer.process with fake Kafka clients: what is applied, dead-lettered, committed."""

import base64
import hashlib
import json
import random
import time
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaTimeoutError, MessageSizeTooLargeError
from prometheus_client import REGISTRY

from feature_service.background import BackgroundConsumer
from feature_service.config import FeatureServiceSettings
from feature_service.consumer import FeatureConsumer
from feature_service.dead_letters import dead_letter_record
from feature_service.store import InMemoryStore, StoreUnavailable
from features.events import Event
from features.user_state import FeatureRules

TOPIC = "user-events"
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class FakeFuture:
    def __init__(self, error=None):
        self.error = error

    def get(self, timeout=None):
        if self.error:
            raise self.error


PRODUCER_MAX_REQUEST_BYTES = 1024 * 1024  # kafka-python's max_request_size default


class FakeProducer:
    """Like KafkaProducer: a record over the size limit is refused by send() itself; ``send_error``
    is raised by send() too (a topic without metadata blocks, then raises)."""

    def __init__(self, error=None, send_error=None):
        self.sent, self.error, self.send_error, self.attempts = [], error, send_error, 0

    def send(self, topic, key=None, value=None):
        self.attempts += 1
        if self.send_error:
            raise self.send_error
        if len(key or b"") + len(value) > PRODUCER_MAX_REQUEST_BYTES:
            raise MessageSizeTooLargeError(f"{len(value)} bytes")
        self.sent.append((topic, key, value))
        return FakeFuture(self.error)

    def flush(self, timeout=None):
        pass

    def close(self):
        pass


class FakeConsumer:
    def __init__(self, commit_error=None, assigned=(TP0, TP1)):
        self.commits, self.seeks, self.commit_error = [], [], commit_error
        self.assigned = set(assigned)

    def assignment(self):
        return self.assigned

    def commit(self, offsets):
        if self.commit_error:
            raise self.commit_error
        self.commits.append({tp: o.offset for tp, o in offsets.items()})

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))

    def end_offsets(self, partitions):
        return {tp: 1_000 for tp in partitions}


class DurableStore(InMemoryStore):
    durable = True


class DownStore(DurableStore):
    def apply_many(self, events, positions=None):
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
    consumer = FeatureConsumer(FeatureServiceSettings(), DurableStore(), sleep=lambda s: None)
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


# --- issue 15: one message must not stop the consumer -----------------------------------------

def emoji_event(n_bytes=400_000) -> bytes:
    """A JSON event whose context holds ``n_bytes`` of emoji, as raw UTF-8 (escaped, 3x larger)."""
    return json.dumps({"user_id": "u", "item_id": "1", "event_type": "view",
                       "context": {"note": "\U0001F600" * (n_bytes // 4)}}, ensure_ascii=False).encode()


def test_an_oversized_message_is_dead_lettered_as_a_bounded_prefix_and_the_offset_advances():
    raw = emoji_event()
    assert len(dead_letter_record(raw, "r", TOPIC, 0, 0, max_payload_bytes=len(raw))) > 1_100_000
    store, dlq, kafka = DurableStore(), FakeProducer(), FakeConsumer()
    consumer = FeatureConsumer(FeatureServiceSettings(), store, sleep=lambda s: None)
    consumer.process(kafka, dlq, {TP0: [message(raw, 41), message(good("e1"), 42)]})
    assert kafka.commits == [{TP0: 43}] and not kafka.seeks
    assert consumer.dead_lettered == 1 and consumer.applied == 1
    [(_, key, value)] = dlq.sent
    assert key == b"u" and len(value) < 400_000  # 64 KiB of emoji, escaped: ~192 KiB
    record = json.loads(value)
    assert record["payload_truncated"] is True
    assert record["payload_bytes"] == len(raw)
    assert record["payload_sha256"] == hashlib.sha256(raw).hexdigest()
    # a prefix of the original text, cut at a character boundary
    assert 64 * 1024 - 4 < len(record["payload"].encode()) <= 64 * 1024
    assert raw.decode().startswith(record["payload"])
    assert "4096-byte limit" in record["reason"]


def test_small_payloads_are_kept_whole_with_their_size_and_digest():
    record = json.loads(dead_letter_record(b"\xff\xfe\x00", "bad", "t", 0, 1))
    assert base64.b64decode(record["payload_base64"]) == b"\xff\xfe\x00"
    assert (record["payload_bytes"], record["payload_truncated"]) == (3, False)
    assert record["payload_sha256"] == hashlib.sha256(b"\xff\xfe\x00").hexdigest()


def test_binary_payloads_and_keys_are_bounded_too():
    raw, key = bytes(range(256)) * 4000, b"k" * 5000
    value = dead_letter_record(raw, "bad", "t", 0, 1, max_payload_bytes=1000, key=key)
    record = json.loads(value)
    assert base64.b64decode(record["payload_base64"]) == raw[:1000] and record["payload_truncated"]
    assert record["key_bytes"] == 5000 and record["key_sha256"] == hashlib.sha256(key).hexdigest()
    dlq = FakeProducer()
    consumer = FeatureConsumer(FeatureServiceSettings(), DurableStore())
    consumer.process(FakeConsumer(), dlq, {TP0: [SimpleNamespace(**{**vars(message(raw)), "key": key})]})
    assert len(dlq.sent[0][1]) == 1024


class FixedRandom(random.Random):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def random(self):
        return self.value


@pytest.mark.parametrize("jitter", [0.0, 0.999])
def test_rewinds_back_off_exponentially_with_jitter_up_to_the_cap_and_reset_after_a_success(jitter):
    slept = []
    settings = FeatureServiceSettings(retry_backoff_ms=100, retry_backoff_max_ms=1000)
    store = DownStore()
    consumer = FeatureConsumer(settings, store, sleep=slept.append, rng=FixedRandom(jitter))
    kafka = FakeConsumer()
    for _ in range(6):
        consumer.process(kafka, FakeProducer(), {TP0: [message(good("e1"), 3)]})
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert slept == pytest.approx([c * (0.5 + 0.5 * jitter) for c in ceilings])
    assert kafka.seeks == [(TP0, 3)] * 6
    store.apply_many = DurableStore().apply_many  # back
    consumer.process(kafka, FakeProducer(), {TP0: [message(good("e1"), 3)]})
    assert len(slept) == 6 and kafka.commits == [{TP0: 4}]
    del store.apply_many
    consumer.process(kafka, FakeProducer(), {TP0: [message(good("e2"), 4)]})
    assert slept[-1] == pytest.approx(0.1 * (0.5 + 0.5 * jitter))


def test_dead_letter_failures_back_off_too():
    slept = []
    consumer = FeatureConsumer(FeatureServiceSettings(retry_backoff_ms=200), DurableStore(),
                               sleep=slept.append, rng=FixedRandom(0.0))
    for _ in range(3):
        consumer.process(FakeConsumer(), FakeProducer(error=KafkaTimeoutError()), {TP0: [message(b"junk")]})
    assert slept == pytest.approx([0.1, 0.2, 0.4])


def test_only_the_partitions_whose_dead_letters_failed_are_rewound():
    kafka, store = FakeConsumer(), DurableStore()
    consumer = FeatureConsumer(FeatureServiceSettings(), store, sleep=lambda s: None)
    batch = {TP0: [message(good("e1"), 3), message(b"junk", 4)], TP1: [message(good("e2"), 8, 1)]}
    consumer.process(kafka, FakeProducer(error=KafkaTimeoutError()), batch)
    assert kafka.seeks == [(TP0, 3)] and kafka.commits == [{TP1: 9}]


def test_a_missing_dead_letter_topic_is_not_waited_on_once_per_message():
    kafka, dlq = FakeConsumer(), FakeProducer(send_error=KafkaTimeoutError("no metadata"))
    consumer = FeatureConsumer(FeatureServiceSettings(), DurableStore(), sleep=lambda s: None)
    consumer.process(kafka, dlq, {TP0: [message(b"junk", 4), message(b"junk", 5)],
                                  TP1: [message(b"junk", 6, 1)]})
    assert dlq.attempts == 1 and sorted(kafka.seeks) == [(TP0, 4), (TP1, 6)] and not kafka.commits


def failures_gauge(label):
    return REGISTRY.get_sample_value("feature_consumer_consecutive_failures", {"partition": label})


def test_a_stuck_partition_shows_in_the_metrics_and_makes_the_consumer_not_ready():
    now = [1000.0]
    settings = FeatureServiceSettings(unready_after_failures=3)
    consumer = FeatureConsumer(settings, DurableStore(), sleep=lambda s: now.__setitem__(0, now[0] + s),
                               clock=lambda: now[0])
    kafka = FakeConsumer()
    assert not consumer.ready.is_set() and consumer.not_ready_reason == "partitions not assigned yet"
    consumer._update_ready(kafka)
    assert consumer.ready.is_set() and consumer.not_ready_reason is None
    broken = FakeProducer(error=KafkaTimeoutError())
    for attempt in range(1, 4):
        assert consumer.ready.is_set()
        consumer.process(kafka, broken, {TP0: [message(b"junk", 7)], TP1: [message(good("e1"), 2, 1)]})
        assert failures_gauge("user-events[0]") == attempt
    assert not consumer.ready.is_set()
    assert REGISTRY.get_sample_value("feature_consumer_ready") == 0
    assert consumer.stuck == {"user-events[0]": 3}
    reason = consumer.not_ready_reason
    assert "user-events[0]: 3 consecutive failed attempts" in reason and "dead-letter topic" in reason
    assert REGISTRY.get_sample_value("feature_consumer_stuck_seconds") > 0
    # the other partition kept going, and is not the stuck one
    assert kafka.commits == [{TP1: 3}] * 3 and TP1 not in consumer._failing
    consumer.process(kafka, FakeProducer(), {TP0: [message(b"junk", 7)]})  # the topic is back
    assert consumer.ready.is_set() and consumer.not_ready_reason is None and consumer.stuck == {}
    assert failures_gauge("user-events[0]") == 0
    assert REGISTRY.get_sample_value("feature_consumer_stuck_seconds") == 0
    assert REGISTRY.get_sample_value("feature_consumer_ready") == 1


def test_a_partition_taken_by_a_rebalance_no_longer_counts_as_stuck():
    consumer = FeatureConsumer(FeatureServiceSettings(unready_after_failures=1), DownStore(),
                               sleep=lambda s: None)
    kafka = FakeConsumer()
    consumer._update_ready(kafka)
    consumer.process(kafka, FakeProducer(), {TP1: [message(good("e1"), 2, 1)]})
    assert not consumer.ready.is_set() and consumer.stuck == {"user-events[1]": 1}
    consumer._forget_revoked({TP0})
    assert consumer.ready.is_set() and consumer.stuck == {}


def test_polling_errors_back_off_and_an_answered_poll_resets_them(monkeypatch):
    import threading

    stop, slept = threading.Event(), []

    class PollingConsumer(FakeConsumer):
        polls = 0

        def poll(self, timeout_ms=None):
            self.polls += 1
            if self.polls <= 3:
                raise KafkaTimeoutError()
            stop.set()
            return {}

        def close(self):
            pass

    settings = FeatureServiceSettings(create_topics=False, retry_backoff_ms=100,
                                      unready_after_failures=3)
    consumer = FeatureConsumer(settings, DurableStore(), sleep=slept.append, rng=FixedRandom(0.0))
    monkeypatch.setattr(consumer, "_connect", lambda: (PollingConsumer(), FakeProducer()))
    monkeypatch.setattr(consumer, "_attach", lambda kafka, stop: None)
    states = []
    monkeypatch.setattr(consumer, "_wait", lambda s: states.append(consumer.stuck) or slept.append(s))
    consumer.run(stop)
    assert slept == pytest.approx([0.05, 0.1, 0.2])
    assert states[-1] == {"all": 3}
    assert consumer.stuck == {} and consumer.ready.is_set()


def test_a_redelivery_is_dropped_by_offset_after_its_event_id_was_forgotten():
    # A consumer group reset replays the topic: the ids fell out of the users' windows long ago.
    store = DurableStore(FeatureRules(dedup_events_per_user=1))
    consumer = FeatureConsumer(FeatureServiceSettings(), store)
    batch = {TP0: [message(good("e1"), 5), message(good("e2"), 6)]}
    consumer.process(FakeConsumer(), FakeProducer(), batch)
    consumer.process(FakeConsumer(), FakeProducer(), batch)
    assert (consumer.applied, consumer.duplicates) == (2, 2)
    assert [e.event_id for e in store.get("u").recent] == ["e1", "e2"]
    assert store.applied_offsets() == {(TOPIC, 0): 6}


def test_applied_offsets_beyond_a_partitions_end_are_forgotten():
    # the topic was deleted and re-created: offsets start at 0 again
    store = DurableStore()
    store.apply_many([Event(user_id="u", item_id="1", event_type="view")], [(TOPIC, 0, 5_000)])
    store.apply_many([Event(user_id="u", item_id="1", event_type="view")], [(TOPIC, 1, 10)])
    consumer = FeatureConsumer(FeatureServiceSettings(), store)
    consumer._check_offsets(FakeConsumer())  # both partitions end at offset 1,000
    assert store.applied_offsets() == {(TOPIC, 1): 10}
    consumer.process(FakeConsumer(), FakeProducer(), {TP0: [message(good("n1"), 0)]})
    assert consumer.applied == 1


class ReplayingConsumer(FakeConsumer):
    """A consumer that assigns partitions itself, with the offsets a group committed."""

    def __init__(self, committed):
        super().__init__()
        self._committed = committed

    def partitions_for_topic(self, topic):
        return {0, 1}

    def assign(self, partitions):
        self.assigned = set(partitions)

    def seek_to_beginning(self, *partitions):
        pass

    def committed(self, tp):
        return self._committed.get(tp)


def test_a_replay_does_not_dead_letter_again_what_an_earlier_process_did():
    import threading

    consumer = FeatureConsumer(FeatureServiceSettings(events_topic=TOPIC), InMemoryStore())
    kafka, dlq = ReplayingConsumer({TP0: 3}), FakeProducer()
    consumer._attach(kafka, threading.Event())
    consumer.process(kafka, dlq, {TP0: [message(b"junk", 1), message(good("e1"), 2),
                                        message(b"junk", 4), message(good("e2"), 5)],
                                  TP1: [message(good("e3"), 0, 1)]})
    assert [json.loads(v)["source"]["offset"] for _, _, v in dlq.sent] == [4]
    assert consumer.applied == 3
    # the mark moves past this batch's dead letters; partitions without any are not committed
    assert kafka.commits == [{TP0: 6}]


def test_the_background_consumer_starts_again_after_a_failure(monkeypatch):
    import threading

    runs, done = [], threading.Event()
    background = BackgroundConsumer(FeatureServiceSettings(retry_backoff_ms=1), InMemoryStore())

    def run(stop):
        runs.append(1)
        if len(runs) <= 2:
            raise KafkaTimeoutError("no broker")
        background.consumer.ready.set()
        done.set()
        stop.wait()

    monkeypatch.setattr(background.consumer, "run", run)
    background.start()
    assert done.wait(10)
    assert background.restarts == 2 and background.alive
    assert "restarting" not in (background.not_ready_reason or "")  # running again
    background.stop()
    assert not background.alive


def test_a_background_consumer_that_is_restarting_says_why(monkeypatch):
    background = BackgroundConsumer(FeatureServiceSettings(retry_backoff_ms=60_000), InMemoryStore())
    monkeypatch.setattr(background.consumer, "run",
                        lambda stop: (_ for _ in ()).throw(KafkaTimeoutError("no broker")))
    background.start()
    for _ in range(200):
        if background.restarts:
            break
        time.sleep(0.01)
    assert "restarting after KafkaTimeoutError" in background.not_ready_reason
    background.stop()



class LogConsumer(FakeConsumer):
    """A consumer over an in-memory log: poll returns up to ``per_poll`` messages per partition
    from the position, seek moves it; it stops the run once ``stop_when`` holds."""

    def __init__(self, log, stop, stop_when, per_poll=2):
        super().__init__(assigned=log)
        self.log, self.stop, self.stop_when, self.per_poll = log, stop, stop_when, per_poll
        self.position_of = {tp: 0 for tp in log}

    def poll(self, timeout_ms=None):
        if self.stop_when():
            self.stop.set()
        batch = {}
        for tp, messages in self.log.items():
            got = messages[self.position_of[tp]:self.position_of[tp] + self.per_poll]
            if got:
                batch[tp] = got
                self.position_of[tp] += len(got)
        return batch

    def seek(self, tp, offset):
        super().seek(tp, offset)
        self.position_of[tp] = offset

    def close(self):
        pass


class FlakyNetworkStore(DurableStore):
    """A network store (``blocking``) that refuses the batches numbered in ``fail_calls``."""

    blocking = True

    def __init__(self, fail_calls=()):
        super().__init__()
        self.calls, self.fail_calls, self.batches = 0, set(fail_calls), []

    def apply_many(self, events, positions=None):
        self.calls += 1
        if self.calls in self.fail_calls:
            raise StoreUnavailable("connection reset")
        self.batches.append([e.event_id for e in events])
        return super().apply_many(events, positions)


def run_pipelined(store, log, monkeypatch, until):
    import threading

    stop = threading.Event()
    kafka = LogConsumer(log, stop, lambda: until(store))
    consumer = FeatureConsumer(FeatureServiceSettings(create_topics=False, retry_backoff_ms=1),
                               store, sleep=lambda s: None)
    monkeypatch.setattr(consumer, "_connect", lambda: (kafka, FakeProducer()))
    monkeypatch.setattr(consumer, "_attach", lambda kafka, stop: None)
    consumer.run(stop)
    return consumer, kafka


def test_a_network_store_is_written_while_the_next_batch_is_polled_in_order(monkeypatch):
    log = {TP0: [message(good(f"a{i}"), i) for i in range(5)],
           TP1: [message(good(f"b{i}"), i, 1) if i != 2 else message(b"junk", i, 1) for i in range(4)]}
    store = FlakyNetworkStore()
    consumer, kafka = run_pipelined(store, log, monkeypatch, lambda s: s.calls >= 3)
    # in order per partition, every batch committed after the store took it, the last one too
    assert store.batches == [["a0", "a1", "b0", "b1"], ["a2", "a3", "b3"], ["a4"]]
    assert kafka.commits[-1] == {TP0: 5} and consumer.applied == 8 and consumer.dead_lettered == 1
    assert {tp for c in kafka.commits for tp in c} == {TP0, TP1}


def test_when_a_batch_fails_the_one_polled_behind_it_is_dropped_and_all_come_again(monkeypatch):
    log = {TP0: [message(good(f"a{i}"), i) for i in range(6)]}
    store = FlakyNetworkStore(fail_calls={2})
    consumer, kafka = run_pipelined(store, log, monkeypatch,
                                    lambda s: s.get("u") is not None and len(s.get("u").recent) == 6)
    assert (TP0, 2) in kafka.seeks  # back to the failed batch's first message
    assert sorted(e.event_id for e in store.get("u").recent) == [f"a{i}" for i in range(6)]
    assert store.batches == [["a0", "a1"], ["a2", "a3"], ["a4", "a5"]]
    assert consumer.applied == 6 and consumer.duplicates == 0  # the batch behind was never applied
    assert kafka.commits[-1] == {TP0: 6}


def test_a_dead_letter_failure_never_lets_the_batch_in_the_store_behind_it_commit_past_it(monkeypatch):
    import threading

    timeline = []

    class FlakyDeadLetters(FakeProducer):
        def send(self, topic, key=None, value=None):
            if self.attempts == 0:
                self.attempts += 1
                return FakeFuture(KafkaTimeoutError())
            timeline.append("dead letter written")
            return super().send(topic, key, value)

    class RecordingLog(LogConsumer):
        def commit(self, offsets):
            timeline.append({tp: o.offset for tp, o in offsets.items()})
            super().commit(offsets)

    log = {TP0: [message(good("a0"), 0), message(b"junk", 1)]
           + [message(good(f"a{i}"), i) for i in range(2, 6)]}
    store, stop = FlakyNetworkStore(), threading.Event()
    kafka = RecordingLog(log, stop, lambda: store.get("u") is not None and len(store.get("u").recent) == 5
                         and timeline and timeline[-1] == {TP0: 6})
    consumer = FeatureConsumer(FeatureServiceSettings(create_topics=False, retry_backoff_ms=1),
                               store, sleep=lambda s: None)
    monkeypatch.setattr(consumer, "_connect", lambda: (kafka, FlakyDeadLetters()))
    monkeypatch.setattr(consumer, "_attach", lambda kafka, stop: None)
    consumer.run(stop)
    assert timeline[0] == "dead letter written"  # nothing committed before the dead letter was
    assert consumer.dead_lettered == 1
    assert sorted(e.event_id for e in store.get("u").recent) == ["a0", "a2", "a3", "a4", "a5"]
    assert consumer.applied == 5  # the redelivered ones were dropped by offset
