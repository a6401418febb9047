"""Two consumer processes in one group split the partitions; the rebalances when the second joins
and when the first leaves, both mid-stream, lose and double-count nothing."""

from __future__ import annotations

import re
import uuid

from feature_service.store import RedisStore
from stack.feature_service import FeatureServiceProcess
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

APPLIED = ("feature_events_total", 'outcome="applied"')


def test_two_consumers_split_partitions_and_a_rebalance_loses_and_doubles_nothing(
        kafka, redis_server, tmp_path):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    kafka.create_topics([topic, f"{topic}.dlq"], partitions=6)
    stream = make_stream(seed=1)
    settings = feature_settings(kafka, topic, store="redis", redis_url=redis_server.url,
                                redis_key_prefix=topic,
                                catalog_path=write_catalog(tmp_path / "catalog.json"))
    first = FeatureServiceProcess(settings, log_path=tmp_path / "first.log").start()
    second = FeatureServiceProcess(settings, log_path=tmp_path / "second.log")
    producer = SteadyProducer(kafka.bootstrap_servers, topic, stream.messages, rate_per_s=2000)
    try:
        producer.start()
        producer.wait_acked(0.25)
        second.start()  # rebalance 1: the partitions are split between the two
        wait_for(lambda: second.metric(*APPLIED) > 0, "the second consumer to get partitions")
        first_mid = first.metric(*APPLIED)
        wait_for(lambda: first.metric(*APPLIED) > first_mid, "the first to keep consuming")
        producer.wait_acked(0.6)
        first.stop()  # rebalance 2: SIGTERM, the first leaves the group, the second takes all
        producer.finish()
        store = RedisStore(redis_server.url, RULES, prefix=topic, item_categories=CATEGORIES)
        wait_until_converged(store, oracle(stream), describe=second.log_tail)
        # Each valid event was applied by exactly one of the two (duplicates are counted apart).
        first_total = int(re.findall(r"stopped: (\d+) applied", first.log_tail())[-1])
        assert first_total > 0 and second.metric(*APPLIED) > 0
        # The counter moves just after a batch's store write: it may trail the converged store.
        wait_for(lambda: first_total + second.metric(*APPLIED) >= len(stream.valid),
                 "the second's applied count to catch up with its store writes", timeout_s=10)
        assert first_total + second.metric(*APPLIED) == len(stream.valid)
    finally:
        first.stop()
        second.stop()
    keys = dead_letter_keys(kafka.bootstrap_servers, f"{topic}.dlq", stream.malformed_keys)
    assert set(keys) == stream.malformed_keys
