"""Read a topic to its end, deterministically: polling once for a while may return some
partitions' records and not yet the others'."""

from __future__ import annotations

import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


def read_topic(bootstrap_servers: str, topic: str, *,
               until: Callable[[list[ConsumerRecord]], bool] | None = None,
               timeout_s: float = 30) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning of each partition to its end offset (in
    partition order; no order across partitions). With ``until``: the topic may still be
    growing, so read until ``until(records)`` holds, then to the end offsets of that moment.
    Fails after ``timeout_s``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not (partitions := consumer.partitions_for_topic(topic)):
            assert time.monotonic() < deadline, f"topic {topic} does not exist"
            time.sleep(0.2)
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records: list[ConsumerRecord] = []
        while True:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if until is None or until(records):
                ends = consumer.end_offsets(parts)
                if all(consumer.position(tp) >= end for tp, end in ends.items()):
                    return records
            assert time.monotonic() < deadline, (
                f"read {len(records)} records of {topic} in {timeout_s} s"
                + ("" if until is None or until(records) else ", not yet what was awaited"))
    finally:
        consumer.close()
