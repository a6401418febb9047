"""The push hub survives Kafka failing: it reconnects with backoff, and /readyz says why it is not
ready meanwhile (before, one error at start stopped it for good)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from kafka.errors import KafkaConnectionError, KafkaError

from gateway import components, push
from gateway.push import PushHub
from tests.support.waiting import wait_for


class FlakyKafka:
    """A consumer factory: while ``down``, making a consumer fails; once up, its consumers follow
    one partition and hand out what the test puts in ``records``, or fail a poll when told."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.records: list[tuple[bytes, bytes]] = []
        self.fail_poll = False

    def __call__(self, **config):
        self.calls += 1
        if self.down:
            raise KafkaConnectionError()
        return SimpleNamespace(partitions_for_topic=lambda topic: {0}, assign=lambda parts: None,
                               seek_to_end=lambda *parts: None, position=lambda tp: 0,
                               poll=self._poll, close=lambda: None)

    def _poll(self, timeout_ms):
        if self.fail_poll:
            self.fail_poll = False
            raise KafkaError("broker went away")
        taken, self.records = self.records, []
        return {"tp": [SimpleNamespace(key=k, value=v) for k, v in taken]} if taken else {}


def readiness(hub):
    checks = components.readiness_checks(SimpleNamespace(ready=None), SimpleNamespace(), SimpleNamespace(),
                                         None, hub)
    reasons = components.readiness_reasons(SimpleNamespace(not_ready_reason=None), None, hub)
    ok = asyncio.run(checks["push"]())
    return ok, (None if ok else reasons["push"]())


def test_the_hub_retries_until_kafka_answers_and_readiness_says_why_meanwhile(monkeypatch):
    kafka = FlakyKafka()
    monkeypatch.setattr(push, "KafkaConsumer", kafka)

    async def run():
        hub = PushHub("unused:9092", "recommendations", retry_initial_ms=1, retry_max_ms=20)
        hub.start()
        try:
            await asyncio.to_thread(wait_for, lambda: kafka.calls >= 3, "three failed connects")
            down = await asyncio.to_thread(readiness, hub)
            kafka.down = False
            await asyncio.to_thread(wait_for, hub.ready.is_set, "the hub following the topic")
            up = await asyncio.to_thread(readiness, hub)
            queue = hub.subscribe("u1")
            kafka.records.append((b"u1", b'{"hello": 1}'))
            message = await asyncio.wait_for(queue.get(), 30)
            return down, up, message, hub.alive
        finally:
            hub.stop()

    down, up, message, alive = asyncio.run(run())
    assert alive
    ok, reason = down
    assert not ok and "KafkaConnectionError" in reason and "retrying" in reason
    assert up == (True, None)
    assert message == '{"hello": 1}'


def test_a_failed_poll_reconnects_instead_of_stopping(monkeypatch):
    kafka = FlakyKafka()
    kafka.down = False
    monkeypatch.setattr(push, "KafkaConsumer", kafka)

    async def run():
        hub = PushHub("unused:9092", "r", retry_initial_ms=1, retry_max_ms=5)
        hub.start()
        try:
            await asyncio.to_thread(wait_for, hub.ready.is_set, "the hub following the topic")
            kafka.fail_poll = True
            await asyncio.to_thread(wait_for, lambda: kafka.calls >= 2 and hub.ready.is_set(),
                                    "a second consumer, following")
            return hub.alive
        finally:
            hub.stop()

    assert asyncio.run(run())


def test_the_backoff_doubles_up_to_its_cap_with_jitter():
    hub = PushHub("unused:9092", "r", retry_initial_ms=100, retry_max_ms=1000)
    for failures, ceiling_s in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (60, 1.0)]:
        delays = {hub.backoff_s(failures) for _ in range(20)}
        assert all(ceiling_s / 2 <= d <= ceiling_s for d in delays) and len(delays) > 1
