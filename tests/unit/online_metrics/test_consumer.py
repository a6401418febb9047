"""The consumer's dealings with Kafka, against a fake client: where each partition is read from,
the pacing of the replay, and the order of a poll's records."""

from __future__ import annotations

from collections import namedtuple

from kafka import TopicPartition

from online_metrics.config import OnlineMetricsSettings
from online_metrics.consumer import OnlineMetricsConsumer
from tests.unit.online_metrics.helpers import T0, event, record

Message = namedtuple("Message", "offset value")
IMP0, IMP1, EV0 = TopicPartition("imp", 0), TopicPartition("imp", 1), TopicPartition("ev", 0)


class FakeKafka:
    """What the consumer calls on a kafka-python KafkaConsumer; ``ends`` and ``positions`` are
    set by the test."""

    def __init__(self, partitions: dict[str, set[int]], ends: dict[TopicPartition, int]) -> None:
        self.partitions, self.ends = partitions, ends
        self.assigned: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int | str]] = []

    def partitions_for_topic(self, topic):
        return self.partitions.get(topic)

    def assignment(self):
        return set(self.assigned)

    def assign(self, partitions):
        self.assigned = set(partitions)

    def seek_to_beginning(self, *partitions):
        for tp in partitions:
            self.seeks.append((tp, "beginning"))
            self.positions[tp] = 0

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    def end_offsets(self, partitions):
        return {tp: self.ends.get(tp, 0) for tp in partitions}

    def position(self, tp):
        return self.positions[tp]

    def pause(self, *partitions):
        self.paused |= set(partitions)

    def resume(self, *partitions):
        self.paused -= set(partitions)


def consumer(clock=lambda: T0 / 1000) -> OnlineMetricsConsumer:
    return OnlineMetricsConsumer(OnlineMetricsSettings(impressions_topic="imp", events_topic="ev"),
                                 clock=clock)


def test_partitions_are_read_from_the_beginning_then_new_ones_picked_up():
    c, kafka = consumer(), FakeKafka({"imp": {0}}, {IMP0: 5})
    c._assign_new(kafka)
    assert kafka.assigned == {IMP0} and kafka.seeks == [(IMP0, "beginning")]
    kafka.partitions = {"imp": {0, 1}, "ev": {0}}  # created later
    c._assign_new(kafka)
    assert kafka.assigned == {IMP0, IMP1, EV0}
    assert sorted(kafka.seeks[1:]) == [(EV0, "beginning"), (IMP1, "beginning")]


def test_after_a_reconnect_reading_goes_on_where_it_was():
    c, kafka = consumer(), FakeKafka({"imp": {0}, "ev": {0}}, {})
    c._assign_new(kafka)
    c.handle({IMP0: [Message(0, record("r1")), Message(1, record("r2"))]})
    fresh = FakeKafka({"imp": {0}, "ev": {0}}, {})
    c._assign_new(fresh)
    assert sorted(fresh.seeks) == [(EV0, "beginning"), (IMP0, 2)]


def test_a_polls_lists_are_handled_before_its_events():
    c = consumer()
    c.handle({EV0: [Message(0, event("click", ts_ms=T0 + 1000).to_bytes())],
              IMP0: [Message(0, record("r1"))]})
    snap = c.snapshot()
    assert snap["keys"][0]["totals"]["clicks"] == 1 and snap["state"]["pending_events"] == 0


def test_the_replay_pauses_the_topic_ahead_in_time_until_the_other_catches_up():
    c, kafka = consumer(clock=lambda: (T0 + 3_600_000) / 1000), \
        FakeKafka({"imp": {0}, "ev": {0}}, {IMP0: 2, EV0: 2})
    c._assign_new(kafka)
    # events read an hour ahead of the lists: the events wait
    c.handle({EV0: [Message(0, event("view", ts_ms=T0 + 3_600_000).to_bytes())]})
    c.handle({IMP0: [Message(0, record("r1"))]})
    kafka.positions = {IMP0: 1, EV0: 1}
    c._pace(kafka)
    assert kafka.paused == {EV0} and not c.caught_up.is_set()
    c.handle({IMP0: [Message(1, record("r2", ts_ms=T0 + 3_600_000))]})
    kafka.positions[IMP0] = 2
    c._pace(kafka)
    assert kafka.paused == set()
    kafka.positions[EV0] = 2
    c._pace(kafka)
    assert c.caught_up.is_set()
    with c.lock:
        c.attribution.add_event(event("click", request_id="gone", ts_ms=T0))
    c._pace(kafka)  # caught up: the wall clock gives up the wait at once
    assert c.snapshot()["unattributed"]["unknown_request"] == 1


def test_lists_far_ahead_of_the_events_wait_for_them():
    c, kafka = consumer(), FakeKafka({"imp": {0}, "ev": {0}}, {IMP0: 3, EV0: 3})
    c._assign_new(kafka)
    c.handle({IMP0: [Message(0, record("r1", ts_ms=T0 + 31 * 60_000))]})
    kafka.positions = {IMP0: 1, EV0: 0}
    c._pace(kafka)
    assert kafka.paused == {IMP0}
