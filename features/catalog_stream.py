"""Read the catalog topic as a table: every item's latest update, from the beginning of the topic to
its end at the time of the call.

Here, in the layer training and serving share, so that the cold-item path (export/) and the refresh
job read the topic the same way; refresh/catalog_feed.py is the refresh job's face of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition

from features.catalog_updates import InvalidItemUpdate, ItemUpdate, parse_item_update

log = logging.getLogger(__name__)

# Every skipped record is counted; only the first few are logged one by one, so that a topic full
# of garbage does not drown the log of the job that reads it.
LOGGED_INVALID = 20


@dataclass
class CatalogRead:
    """What one read of the catalog topic found."""

    topic: str
    updates: dict[str, ItemUpdate] = field(default_factory=dict)  # item id -> its latest update
    records: int = 0  # records read, of every kind
    invalid: int = 0  # skipped: not an ItemUpdate, or keyed by another id than the item's
    deleted: int = 0  # tombstones (null values): the item's earlier updates are dropped as well
    topic_exists: bool = True

    def summary(self) -> str:
        if not self.topic_exists:
            return f"catalog topic {self.topic!r}: does not exist (no updates)"
        return (f"catalog topic {self.topic!r}: {self.records} records, {len(self.updates)} items, "
                f"{self.invalid} invalid skipped, {self.deleted} tombstones")


def read_catalog_topic(bootstrap_servers: str, topic: str, timeout_s: float = 30) -> CatalogRead:
    """Every item's latest valid update on ``topic`` (latest by offset: an item's records are on one
    partition, its key's). Reads up to the end offsets as they were when the read began, so a
    producer that keeps writing cannot keep the call from returning. A topic that does not exist
    holds no updates. Raises TimeoutError when the end is not reached within ``timeout_s``: a
    partial read would leave out items, silently."""
    result = CatalogRead(topic)
    deadline = time.monotonic() + timeout_s
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                             group_id=None, request_timeout_ms=max(1000, int(timeout_s * 1000)))
    try:
        if topic not in consumer.topics():
            result.topic_exists = False
            log.info("%s", result.summary())
            return result
        partitions = consumer.partitions_for_topic(topic) or set()
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        pending = {tp for tp, end in ends.items() if consumer.position(tp) < end}
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"catalog topic {topic!r}: not read to its end within "
                                   f"{timeout_s:g} s ({result.records} records read)")
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for record in batch:
                    if record.offset < ends[tp]:  # later records belong to the next read
                        _apply(result, record)
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
    finally:
        consumer.close()
    log.info("%s", result.summary())
    return result


def _apply(result: CatalogRead, record) -> None:
    result.records += 1
    if record.value is None and record.key is not None:
        # A tombstone deletes the key on compaction: reading before or after it gives one answer.
        result.deleted += 1
        result.updates.pop(record.key.decode(errors="replace"), None)
        return
    try:
        update = parse_item_update(record.value, key=record.key)
    except InvalidItemUpdate as exc:
        result.invalid += 1
        if result.invalid <= LOGGED_INVALID:
            log.warning("catalog topic %s partition %d offset %d: skipped: %s", record.topic,
                        record.partition, record.offset, exc.reason)
        return
    result.updates[update.item_id] = update
