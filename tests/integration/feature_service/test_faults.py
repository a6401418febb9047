"""Faults mid-stream against a real broker and a real Redis, N = 10,000 events each (1 in 40
malformed): the broker restarted, the consumer SIGKILLed and restarted, Redis restarted.

After each, every valid event is reflected exactly once in the final state (compared event by
event, plus affinities and trending, with an oracle that applied each exactly once), every
malformed message is in the dead-letter topic, and nothing else is there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from feature_service.background import BackgroundConsumer
from feature_service.config import FeatureServiceSettings
from feature_service.store import InMemoryStore, RedisStore
from stack.feature_service import FeatureServiceProcess
from stack.kafka import KafkaBroker, kafka_unavailable_reason
from stack.redis import RedisServer, redis_unavailable_reason
from stack.testing import require_service
from tests.integration.feature_service.streams import (
    CATEGORIES,
    RULES,
    SteadyProducer,
    dead_letter_keys,
    feature_settings,
    make_stream,
    oracle,
    wait_until_converged,
    write_catalog,
)
from tests.support.waiting import wait_for

PARTITIONS = 6


@pytest.fixture(scope="module")
def stream():
    return make_stream()


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[KafkaBroker]:
    """A broker of its own: these tests restart it."""
    require_service(kafka_unavailable_reason())
    with KafkaBroker(tmp_path_factory.mktemp("fault-kafka")) as b:
        yield b


@pytest.fixture(scope="module")
def durable_redis(tmp_path_factory) -> Iterator[RedisServer]:
    """Persistent (AOF, fsync per write): these tests restart it and expect every write kept."""
    require_service(redis_unavailable_reason())
    log = tmp_path_factory.mktemp("fault-redis") / "redis.log"
    with RedisServer(log_path=log, persistent=True) as server:
        yield server


@pytest.fixture
def topic(broker) -> str:
    name = f"events-{uuid.uuid4().hex[:8]}"
    broker.create_topics([name, f"{name}.dlq"], partitions=PARTITIONS)
    return name


@pytest.fixture
def catalog_path(tmp_path):
    return write_catalog(tmp_path / "catalog.json")


def redis_consumer(broker, topic, redis, catalog_path, tmp_path, name="consumer"):
    return FeatureServiceProcess(
        feature_settings(broker, topic, store="redis", redis_url=redis.url, redis_key_prefix=topic,
                         catalog_path=catalog_path),
        log_path=tmp_path / f"{name}.log")


def assert_dead_letters_complete(broker, topic, stream):
    keys = dead_letter_keys(broker.bootstrap_servers, f"{topic}.dlq", stream.malformed_keys)
    assert set(keys) == stream.malformed_keys  # all of them, and no valid event among them


def test_broker_restart_mid_stream_with_redis_store(broker, durable_redis, topic, stream,
                                                     catalog_path, tmp_path):
    with redis_consumer(broker, topic, durable_redis, catalog_path, tmp_path) as consumer:
        producer = SteadyProducer(broker.bootstrap_servers, topic, stream.messages)
        producer.start()
        producer.wait_acked(0.4)
        broker.restart()
        producer.finish()
        store = RedisStore(durable_redis.url, RULES, prefix=topic, item_categories=CATEGORIES)
        wait_until_converged(store, oracle(stream), describe=consumer.log_tail)
        assert consumer.running
    assert_dead_letters_complete(broker, topic, stream)


def test_broker_restart_mid_stream_with_in_process_store_which_replays_on_start(
        broker, topic, stream):
    settings = FeatureServiceSettings(**feature_settings(broker, topic, store="memory"))
    store = InMemoryStore(RULES, item_categories=CATEGORIES)
    consumer = BackgroundConsumer(settings, store)
    consumer.start()
    try:
        assert consumer.consumer.ready.wait(30)
        producer = SteadyProducer(broker.bootstrap_servers, topic, stream.messages)
        producer.start()
        producer.wait_acked(0.4)
        broker.restart()
        producer.finish()
        expected = oracle(stream)
        wait_until_converged(store, expected)
        assert consumer.alive
    finally:
        consumer.stop()
    assert_dead_letters_complete(broker, topic, stream)
    letters = dead_letter_keys(broker.bootstrap_servers, f"{topic}.dlq", stream.malformed_keys)
    # A new process's store starts empty and is rebuilt from the topic, duplicates dropped.
    rebuilt = InMemoryStore(RULES, item_categories=CATEGORIES)
    replay = BackgroundConsumer(settings, rebuilt)
    replay.start()
    try:
        assert replay.consumer.ready.wait(60)  # ready only once caught up with the topic's end
        wait_until_converged(rebuilt, expected, timeout_s=5)
    finally:
        replay.stop()
    # ... without writing the dead letters again
    again = dead_letter_keys(broker.bootstrap_servers, f"{topic}.dlq", stream.malformed_keys)
    assert len(again) == len(letters)


def test_a_reset_consumer_group_replays_the_topic_and_applies_nothing_twice(
        broker, durable_redis, topic, catalog_path, tmp_path):
    """The group's offsets are gone (reset, or expired while idle): a member starts from the
    beginning of the topic. With the event ids long out of the users' windows (one id kept
    here), the offsets the store applied are what drops the redeliveries."""
    stream = make_stream(2_000)
    settings = feature_settings(broker, topic, store="redis", redis_url=durable_redis.url,
                                redis_key_prefix=topic, catalog_path=catalog_path,
                                dedup_events_per_user=1)
    store = RedisStore(durable_redis.url, RULES, prefix=topic, item_categories=CATEGORIES)
    with FeatureServiceProcess(settings, log_path=tmp_path / "first.log") as first:
        producer = SteadyProducer(broker.bootstrap_servers, topic, stream.messages)
        producer.start()
        producer.finish()
        wait_until_converged(store, oracle(stream), describe=first.log_tail)
    with FeatureServiceProcess({**settings, "group_id": f"reset-{topic}"},
                               log_path=tmp_path / "second.log") as second:
        wait_for(lambda: second.metric("feature_events_total", 'outcome="duplicate"')
                 >= len(stream.valid), "the new group member to read the whole topic")
        assert second.metric("feature_events_total", 'outcome="applied"') == 0
    wait_until_converged(store, oracle(stream), timeout_s=5)


def test_consumer_sigkilled_mid_stream_and_restarted(broker, durable_redis, topic, stream,
                                                     catalog_path, tmp_path):
    producer = SteadyProducer(broker.bootstrap_servers, topic, stream.messages)
    with redis_consumer(broker, topic, durable_redis, catalog_path, tmp_path, "first") as first:
        producer.start()
        producer.wait_acked(0.4)
        # killed once it has applied something (on a busy box that may take longer than 40 %)
        wait_for(lambda: first.metric("feature_events_total", 'outcome="applied"') > 0,
                 "the first consumer to apply events")
        first.kill()
    producer.wait_acked(0.6)  # the stream goes on while no consumer runs
    with redis_consumer(broker, topic, durable_redis, catalog_path, tmp_path, "second") as second:
        producer.finish()
        store = RedisStore(durable_redis.url, RULES, prefix=topic, item_categories=CATEGORIES)
        wait_until_converged(store, oracle(stream), describe=second.log_tail)
    assert_dead_letters_complete(broker, topic, stream)


def test_redis_restarted_mid_stream(broker, durable_redis, topic, stream, catalog_path, tmp_path):
    with redis_consumer(broker, topic, durable_redis, catalog_path, tmp_path) as consumer:
        producer = SteadyProducer(broker.bootstrap_servers, topic, stream.messages)
        producer.start()
        producer.wait_acked(0.4)
        durable_redis.restart()
        producer.finish()
        store = RedisStore(durable_redis.url, RULES, prefix=topic, item_categories=CATEGORIES)
        wait_until_converged(store, oracle(stream), describe=consumer.log_tail)
        assert consumer.running
    assert_dead_letters_complete(broker, topic, stream)
