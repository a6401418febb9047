"""Kafka -> feature store. At-least-once delivery made effectively-once.

Offsets are committed only after the store accepted every event before them; the store
de-duplicates by ``event_id``, so a redelivery after a crash changes nothing. A message that is not
a valid event goes to the dead-letter topic with the reason, and consumption goes on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from feature_service.config import FeatureServiceSettings
from feature_service.store import FeatureStore, StoreUnavailable
from features.events import Event

log = logging.getLogger(__name__)


def dead_letter_record(raw: bytes | None, reason: str, topic: str, partition: int, offset: int) -> bytes:
    return json.dumps({
        "reason": reason,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "payload": (raw or b"").decode("utf-8", errors="replace"),
    }).encode()


class FeatureConsumer:
    """One consumer-group member. Create it and call ``run`` in the same thread: a kafka-python
    consumer must never be shared across threads."""

    def __init__(self, settings: FeatureServiceSettings, store: FeatureStore,
                 on_applied: Callable[[Event], None] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.on_applied = on_applied
        self.applied = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.ready = threading.Event()  # set once partitions are assigned and polling

    def _connect(self) -> tuple[KafkaConsumer, KafkaProducer]:
        s = self.settings
        consumer = KafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.max_poll_records,
        )
        dead_letters = KafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers, acks="all")
        return consumer, dead_letters

    def _subscribe_when_topic_exists(self, consumer: KafkaConsumer, stop: threading.Event) -> None:
        """Join the group only once the topic's partitions are known: a member that joins
        before that is assigned nothing and stays idle until the next metadata refresh."""
        while not stop.is_set():
            if consumer.partitions_for_topic(self.settings.events_topic):
                consumer.subscribe([self.settings.events_topic])
                return
            log.info("waiting for topic %s to exist", self.settings.events_topic)
            stop.wait(self.settings.retry_backoff_ms / 1000)

    def run(self, stop: threading.Event) -> None:
        consumer, dead_letters = self._connect()
        try:
            self._subscribe_when_topic_exists(consumer, stop)
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
                if consumer.assignment():
                    self.ready.set()
                for tp, messages in batch.items():
                    self._process_partition(consumer, dead_letters, tp, messages)
        finally:
            consumer.close()
            dead_letters.close()

    def _process_partition(self, consumer: KafkaConsumer, dead_letters: KafkaProducer,
                           tp: TopicPartition, messages: list) -> None:
        next_offset = None
        for message in messages:
            try:
                self._handle(dead_letters, message)
            except StoreUnavailable as exc:
                # Do not commit past a failed write: rewind and retry after a pause.
                log.warning("store unavailable (%s); retrying %s@%d", exc, tp, message.offset)
                consumer.seek(tp, message.offset)
                time.sleep(self.settings.retry_backoff_ms / 1000)
                break
            next_offset = message.offset + 1
        if next_offset is not None:
            dead_letters.flush()  # the dead letters must be durable before their offsets commit
            consumer.commit({tp: OffsetAndMetadata(next_offset, None, -1)})

    def _handle(self, dead_letters: KafkaProducer, message) -> None:
        try:
            event = Event.from_bytes(message.value or b"")
        except ValidationError as exc:
            reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
            dead_letters.send(
                self.settings.dead_letter_topic,
                key=message.key,
                value=dead_letter_record(message.value, reason, message.topic, message.partition,
                                         message.offset),
            )
            self.dead_lettered += 1
            log.info("dead-lettered %s@%d: %s", message.topic, message.offset, reason)
            return
        if self.store.apply(event):
            self.applied += 1
            if self.on_applied is not None:
                self.on_applied(event)
        else:
            self.duplicates += 1


class BackgroundConsumer:
    """Runs a FeatureConsumer in a daemon thread (the embedded, single-process mode)."""

    def __init__(self, settings: FeatureServiceSettings, store: FeatureStore) -> None:
        self.consumer = FeatureConsumer(settings, store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feature-consumer", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.consumer.run(self._stop)
        except BaseException as exc:  # surfaced through readiness, not swallowed
            self.error = exc
            log.exception("feature consumer stopped")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
