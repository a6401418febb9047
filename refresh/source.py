"""The new events: the events topic from where the last refresh stopped to the end seen at start.

The refresh job reads with its own consumer group (``RefreshSettings.group_id``) and assigns every
partition itself (no group membership: a run that trains for minutes is never rebalanced away).
It reads up to the end offsets seen when the read starts, so a run has a fixed set of events
however busy the topic is. Offsets are committed only by ``commit``, which the job calls after a
successful publish (or a recorded decision not to promote): a run that crashes before commits
nothing, and the next run reads the same events again.

Messages that are not valid events are counted by reason and skipped; they never fail a run (the
feature service dead-letters them already).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from features.events import InvalidEvent, parse_event
from refresh.data import event_row

log = logging.getLogger(__name__)


class SourceTimeout(RuntimeError):
    """The read did not reach the end offsets in time: the run stops, nothing committed."""


@dataclass
class ReadResult:
    """What one read got: the valid events as (user, item, ts_ms, event id, type) tuples (a million
    pydantic objects would hold about a gigabyte), invalid messages by reason, and the offsets
    read (per partition ``[start, end)``; ``end`` is what ``commit`` records)."""

    rows: list[tuple]
    invalid: Counter = field(default_factory=Counter)
    start: dict[int, int] = field(default_factory=dict)
    end: dict[int, int] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return sum(self.end.values()) - sum(self.start.values())

    def offsets(self) -> dict[str, list[int]]:
        """``{"partition": [start, end]}``, for the history."""
        return {str(p): [self.start[p], self.end[p]] for p in sorted(self.end)}


class KafkaEventSource:
    """One reader per run: ``read`` once, then ``commit`` (or just ``close``). ``consumer_factory``
    stands in for ``KafkaConsumer`` in tests."""

    def __init__(self, bootstrap_servers: str, topic: str, group_id: str, *,
                 timeout_s: float = 600.0, max_poll_records: int = 5_000,
                 consumer_factory: Callable[..., KafkaConsumer] = KafkaConsumer,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self._clock = clock
        self._consumer = consumer_factory(
            bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=max_poll_records,
            # Whole partitions are read at once: larger fetches than the default cut round trips.
            fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        self._read: ReadResult | None = None

    def read(self) -> ReadResult:
        consumer = self._consumer
        partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
        if not partitions:
            log.warning("topic %s does not exist or has no partitions: no events", self.topic)
            self._read = ReadResult([])
            return self._read
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        beginnings = consumer.beginning_offsets(tps)
        ends = consumer.end_offsets(tps)
        start: dict[int, int] = {}
        for tp in tps:
            committed = consumer.committed(tp)
            # Retention may have deleted what the last run did not reach: start at what is left.
            start[tp.partition] = max(committed if committed is not None else 0, beginnings[tp])
            consumer.seek(tp, start[tp.partition])
        result = ReadResult([], start=start, end={tp.partition: ends[tp] for tp in tps})
        remaining = {tp for tp in tps if start[tp.partition] < ends[tp]}
        if remaining:
            consumer.pause(*(set(tps) - remaining))
        deadline = self._clock() + self.timeout_s
        now_ms = int(time.time() * 1000)
        while remaining:
            if self._clock() > deadline:
                raise SourceTimeout(f"read {len(result.rows)} events in {self.timeout_s:.0f} s but "
                                    f"{len(remaining)} partition(s) are short of their end offsets")
            for tp, records in consumer.poll(timeout_ms=500).items():
                end = ends[tp]
                for record in records:
                    if record.offset >= end:  # written after the read started: the next run's
                        break
                    try:
                        result.rows.append(event_row(parse_event(record.value, now_ms)))
                    except InvalidEvent as exc:
                        result.invalid[exc.reason.split(":")[0]] += 1
                if consumer.position(tp) >= end or (records and records[-1].offset >= end - 1):
                    remaining.discard(tp)
                    consumer.pause(tp)
        if result.invalid:
            log.warning("%d invalid messages skipped: %s", sum(result.invalid.values()),
                        dict(result.invalid))
        log.info("read %d events from %s, offsets %s", len(result.rows), self.topic, result.offsets())
        self._read = result
        return result

    def commit(self) -> None:
        """Record the end offsets of the read as this group's position (idempotent)."""
        if self._read is None or not self._read.end:
            return
        self._consumer.commit({TopicPartition(self.topic, p): OffsetAndMetadata(end, None, -1)
                               for p, end in self._read.end.items()})
        log.info("committed offsets %s", self._read.offsets())

    def close(self) -> None:
        self._consumer.close(autocommit=False)
