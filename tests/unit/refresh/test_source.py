"""Reading the events topic: from the committed offsets to the end seen at start; invalid
messages counted; offsets committed only when asked."""

from __future__ import annotations

from collections import namedtuple

import pytest

from features.events import Event
from refresh.source import KafkaEventSource, SourceTimeout

Record = namedtuple("Record", "offset value")


class FakeConsumer:
    """Partitions of messages; ``committed`` offsets per partition; ``poll`` hands out up to
    ``batch`` records of each unpaused partition."""

    def __init__(self, partitions: dict[int, list[bytes]], committed=None, batch: int = 2, **_):
        self.messages = partitions
        self.committed_offsets = dict(committed or {})
        self.batch = batch
        self.positions: dict = {}
        self.paused: set = set()
        self.commits: list[dict] = []

    def partitions_for_topic(self, topic):
        return set(self.messages)

    def assign(self, tps):
        self.assigned = list(tps)

    def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}

    def end_offsets(self, tps):
        return {tp: len(self.messages[tp.partition]) for tp in tps}

    def committed(self, tp):
        return self.committed_offsets.get(tp.partition)

    def seek(self, tp, offset):
        self.positions[tp] = offset

    def pause(self, *tps):
        self.paused |= set(tps)

    def position(self, tp):
        return self.positions[tp]

    def poll(self, timeout_ms):
        out = {}
        for tp, pos in self.positions.items():
            if tp in self.paused:
                continue
            chunk = self.messages[tp.partition][pos:pos + self.batch]
            out[tp] = [Record(pos + i, v) for i, v in enumerate(chunk)]
            self.positions[tp] = pos + len(chunk)
        return out

    def commit(self, offsets):
        self.commits.append({tp.partition: o.offset for tp, o in offsets.items()})

    def close(self, autocommit=True):
        assert autocommit is False


def event(i: int) -> bytes:
    return Event(event_id=f"e{i}", user_id="u1", item_id="a", event_type="view", ts_ms=i).to_bytes()


def source(consumer) -> KafkaEventSource:
    return KafkaEventSource("kafka:9092", "events", "recsys-refresh", consumer_factory=lambda **_: consumer)


def test_reads_from_the_committed_offsets_to_the_end_and_counts_invalid_messages():
    consumer = FakeConsumer({0: [event(0), event(1), b"{not json", event(3)], 1: [event(10), None]},
                            committed={0: 1})
    src = source(consumer)
    result = src.read()
    assert sorted(row[3] for row in result.rows) == ["e1", "e10", "e3"]
    assert sum(result.invalid.values()) == 2  # the broken body and the tombstone
    assert result.offsets() == {"0": [1, 4], "1": [0, 2]} and result.messages == 5
    assert consumer.commits == []  # reading commits nothing
    src.commit()
    assert consumer.commits == [{0: 4, 1: 2}]


def test_messages_after_the_end_seen_at_start_are_left_for_the_next_run():
    consumer = FakeConsumer({0: [event(0), event(1)]}, batch=10)
    src = source(consumer)
    ends = consumer.end_offsets

    def later(tps):  # the end as seen at start; then two more messages arrive
        seen = ends(tps)
        consumer.messages[0] += [event(2), event(3)]
        return seen

    consumer.end_offsets = later
    result = src.read()
    assert [row[3] for row in result.rows] == ["e0", "e1"] and result.end == {0: 2}


def test_a_read_that_cannot_reach_the_end_fails_without_committing():
    consumer = FakeConsumer({0: [event(0), event(1)]})
    consumer.poll = lambda timeout_ms: {}
    ticks = iter(range(0, 10_000, 100))
    src = KafkaEventSource("k", "events", "g", timeout_s=250, consumer_factory=lambda **_: consumer,
                           clock=lambda: next(ticks))
    with pytest.raises(SourceTimeout):
        src.read()
    assert consumer.commits == []


def test_an_absent_topic_is_no_events():
    consumer = FakeConsumer({})
    src = source(consumer)
    assert src.read().rows == []
    src.commit()
    assert consumer.commits == []
