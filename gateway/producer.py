"""Events into Kafka, keyed by user id so one user's events stay in order on one partition.

Waiting for an acknowledgement holds no thread: kafka-python settles its futures on its own sender
thread, and their callbacks settle asyncio futures on the event loop. Only ``send()`` itself, which
blocks while the topic's metadata is missing (up to ``max_block_ms``), runs on a thread, one of its
own: with Kafka down, event POSTs queue there, not on the default executor, where the feature-store
reads of every recommendation run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.future import Future as KafkaFuture

from features.events import Event
from gateway.errors import UpstreamUnavailable

LINGER_MS = 1
# Readiness: after this long without an acknowledgement (an idle gateway), or after a failed send,
# the broker is asked directly; the producer's cached metadata says nothing about it being up.
PROBE_AFTER_IDLE_S = 10.0
# How long after the producer's own delivery timeout an acknowledgement is still awaited: the
# sender thread expires records on its next pass, which may come a little late.
_BACKSTOP_S = 1.0


@dataclass(frozen=True)
class Published:
    event_id: str
    topic: str
    partition: int
    offset: int


def settle_on(loop: asyncio.AbstractEventLoop, future: KafkaFuture) -> asyncio.Future:
    """An asyncio future settled, on ``loop``, when kafka-python's ``future`` is."""
    settled = loop.create_future()

    def settle(value: object, failed: bool) -> None:
        if settled.done():
            return
        if failed:
            settled.set_exception(value)  # type: ignore[arg-type]
        else:
            settled.set_result(value)

    def later(value: object, failed: bool) -> None:
        try:
            loop.call_soon_threadsafe(settle, value, failed)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    future.add_callback(later, failed=False)
    future.add_errback(later, failed=True)
    return settled


class EventProducer:
    def __init__(self, bootstrap_servers: str, topic: str, timeout_ms: int) -> None:
        self.topic = topic
        self.timeout_s = timeout_ms / 1000
        request_timeout_ms = max(1, timeout_ms - LINGER_MS)
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            # Not idempotent: kafka-python's idempotent producer, once records expired in flight
            # (a broker restart outlasting the short delivery timeout below), failed every send
            # after the broker was back, for minutes (tests/integration/gateway/test_kafka_down.py).
            # A retry's duplicate is harmless (every event has an id; the feature store drops a
            # repeated id) and one request in flight per broker keeps each user's events in order.
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
            retries=5,
            linger_ms=LINGER_MS,
            request_timeout_ms=request_timeout_ms,
            # A record not acknowledged within the request's wait is given up on, not kept for
            # delivery later (kafka-python's default keeps it 120 s): after a 503 the producer no
            # longer holds the event, so a client's retry cannot be the second of two copies --
            # unless the broker took the request and only its answer was lost, which is why the
            # 503 names the event ids (see docs/api.md).
            delivery_timeout_ms=max(timeout_ms, request_timeout_ms + LINGER_MS),
            max_block_ms=timeout_ms,
        )
        # send() blocks while metadata is missing: on a thread of its own (one keeps each user's
        # events in the order they were posted), never the default executor's.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-send")
        self._bootstrap_servers = bootstrap_servers
        self._last_ack_at = time.monotonic()  # constructed: the broker answered
        self._last_failure: tuple[float, str] | None = None  # (when, why)
        self.not_ready_reason: str | None = None  # set by ``connected``

    @property
    def client(self) -> KafkaProducer:
        """The underlying producer (thread-safe), shared with the pusher."""
        return self._producer

    def _enqueue(self, events: Sequence[Event], deadline: float) -> list[KafkaFuture]:
        # Queued behind other sends past the request's wait: the client has its 503 (or is about
        # to), so nothing may be sent for it.
        if time.monotonic() >= deadline:
            raise KafkaTimeoutError("not sent: the wait for the Kafka client was over first")
        return [self._producer.send(self.topic, key=e.user_id.encode(), value=e.to_bytes())
                for e in events]

    async def _publish(self, events: Sequence[Event]) -> list[Published]:
        loop = asyncio.get_running_loop()
        try:
            futures = await loop.run_in_executor(self._sender, self._enqueue, events,
                                                 time.monotonic() + self.timeout_s)
            acks = [settle_on(loop, f) for f in futures]
            done, _ = await asyncio.wait(acks, timeout=self.timeout_s + _BACKSTOP_S)
            if len(done) < len(acks):
                raise KafkaTimeoutError(f"no acknowledgement within {self.timeout_s:g} s")
            failures = [a.exception() for a in acks if a.exception() is not None]  # all retrieved
            if failures:
                raise failures[0]
            self._last_ack_at = time.monotonic()
            return [Published(e.event_id, meta.topic, meta.partition, meta.offset)
                    for e, meta in zip(events, (a.result() for a in acks), strict=True)]
        except KafkaError as exc:
            self._last_failure = (time.monotonic(), repr(exc))
            # The ids let a client retry these very events (the consumer applies an id once): a
            # retry without them gets new ids, and the store would apply both copies if the
            # broker did take this one.
            raise UpstreamUnavailable(
                f"Kafka: {exc}; the events may or may not have been written: retry with these "
                "event ids", details=[{"event_id": e.event_id} for e in events]) from exc

    async def publish(self, event: Event) -> Published:
        """Wait for the broker's acknowledgement: a 202 means the event is durable."""
        return (await self._publish([event]))[0]

    async def publish_many(self, events: Sequence[Event]) -> list[Published]:
        """Send all, then wait for every acknowledgement (one round of batching, not N)."""
        return await self._publish(events)

    def connected(self) -> bool:
        """Whether events can be published now; ``not_ready_reason`` says why not. Recent
        acknowledgements answer at once. After a failed send, or a quiet spell, the broker is asked
        for the topic's metadata on a connection of its own: the producer's cached metadata stays
        "fine" while the broker is down, and a gateway taken out of rotation must still notice
        when the broker is back (no event would come to tell it)."""
        now = time.monotonic()
        failed = self._last_failure is not None and self._last_failure[0] > self._last_ack_at
        if not failed and now - self._last_ack_at < PROBE_AFTER_IDLE_S:
            self.not_ready_reason = None
            return True
        reason = self._probe()
        if reason is None:
            self._last_ack_at = time.monotonic()
        elif failed:
            when, why = self._last_failure
            reason += f"; the last send failed {now - when:.0f} s ago: {why}"
        self.not_ready_reason = reason
        return reason is None

    def _probe(self) -> str | None:
        wait_ms = max(1, int(self.timeout_s * 1000))
        try:
            admin = KafkaAdminClient(bootstrap_servers=self._bootstrap_servers,
                                     request_timeout_ms=wait_ms, bootstrap_timeout_ms=wait_ms)
        except KafkaError as exc:
            return f"Kafka unreachable: {exc!r}"
        try:
            topics = admin.describe_topics([self.topic])
        except KafkaError as exc:
            return f"Kafka unreachable: {exc!r}"
        finally:
            admin.close()
        if not topics or topics[0].get("error_code"):
            return f"topic {self.topic!r} not available: {topics!r}"
        return None

    def close(self) -> None:
        self._sender.shutdown(wait=False, cancel_futures=True)
        self._producer.close(timeout=self.timeout_s)
