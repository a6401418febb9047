"""Kafka -> Attribution: the impressions and events topics, read side by side in one thread.

State rebuild rule: the state is in memory only and is never committed anywhere. At start-up the
consumer assigns itself every partition of both topics (no consumer group, no committed offsets)
and reads them from the beginning of what Kafka retains, then follows them. A restart therefore
gives the same numbers as before it, over the retained data; numbers about lists older than the
topics' retention are lost with the records. Topics or partitions that appear later are picked up
(from their beginning) within ``topic_check_interval_ms``.

While replaying, the topic that is ahead in record time is paused until the other catches up, so
that the join sees lists and events in about the order they happened (an event read long before
its list would wait in the bounded pending buffer). Once every partition has reached the end it
had at assignment, the consumer is caught up and the wall clock moves the attribution's time too.

A message that is not a valid record is counted (``bad_records`` by topic and reason) and skipped;
nothing a message holds stops the thread. A Kafka error is logged and retried after a pause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from online_metrics.attribution import Attribution
from online_metrics.config import OnlineMetricsSettings
from online_metrics.records import REASONS, BadRecord, parse_exposure, parse_user_event

log = logging.getLogger(__name__)

RETRY_PAUSE_S = 1.0  # after a Kafka error: the client reconnects by itself meanwhile
TOPICS = ("impressions", "events")  # the label of each topic in bad_records


class OnlineMetricsConsumer:
    """``start()`` runs the consumer in a daemon thread; ``snapshot()`` may be called from any
    thread (the state changes under ``lock``, one poll's batch at a time)."""

    def __init__(self, settings: OnlineMetricsSettings, attribution: Attribution | None = None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.attribution = attribution or Attribution.from_settings(settings)
        self.lock = threading.Lock()
        self.bad_records: Counter[tuple[str, str]] = Counter(
            {(topic, reason): 0 for topic in TOPICS for reason in (*REASONS, "error")})
        self.kafka_errors = 0
        self.records = 0
        self.caught_up = threading.Event()
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kind = {settings.impressions_topic: "impressions", settings.events_topic: "events"}
        self._catch_up: dict[TopicPartition, int] = {}  # partition -> end offset to reach
        self._paused: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}  # next offset to read, per partition

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="online-metrics-consumer",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run(self) -> None:
        """Consume until ``stop()``; never raises (a failure is logged, and retried)."""
        while not self._stop.is_set():
            try:
                consumer = KafkaConsumer(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers, group_id=None,
                    enable_auto_commit=False, auto_offset_reset="earliest",
                    max_poll_records=self.settings.max_poll_records)
            except Exception as exc:  # NoBrokersAvailable at start-up: wait for Kafka
                self._failed(exc)
                continue
            try:
                self._follow(consumer)
            except Exception as exc:
                self._failed(exc)
            finally:
                try:
                    consumer.close()
                except Exception as exc:  # a broken client must not end the thread
                    log.warning("online metrics consumer: closing the client failed: %r", exc)

    def _failed(self, exc: Exception) -> None:
        log.warning("online metrics consumer: %r; retrying in %.0f s", exc, RETRY_PAUSE_S)
        with self.lock:
            self.kafka_errors += 1
        self._stop.wait(RETRY_PAUSE_S)

    def _follow(self, consumer: KafkaConsumer) -> None:
        self._paused = set()  # a new client: nothing paused on it
        check_every_s = self.settings.topic_check_interval_ms / 1000
        next_check = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_check:
                self._assign_new(consumer)
                next_check = time.monotonic() + check_every_s
            if not consumer.assignment():
                self._stop.wait(min(check_every_s, 0.5))
                continue
            try:
                batch = consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
            except KafkaError as exc:
                self._failed(exc)
                continue
            self.handle(batch)
            self._pace(consumer)

    def _assign_new(self, consumer: KafkaConsumer) -> None:
        """Add the partitions that exist now and are not assigned yet: from their beginning, or,
        after a reconnect (a fresh client has no assignment), from where this process was, so
        that the state in memory sees no record twice."""
        wanted = set(consumer.assignment())
        for topic in self._kind:
            wanted |= {TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()}
        new = wanted - consumer.assignment()
        if not new:
            return
        consumer.assign(sorted(wanted))
        resumed = {tp: self._positions[tp] for tp in new if tp in self._positions}
        fresh = new - resumed.keys()
        if fresh:
            consumer.seek_to_beginning(*fresh)
        for tp, offset in resumed.items():
            consumer.seek(tp, offset)
        ends = consumer.end_offsets(list(new))
        with self.lock:
            self._catch_up.update(ends)
        log.info("reading %s", ", ".join(
            f"{tp.topic}[{tp.partition}] from {resumed.get(tp, 'the beginning')}"
            for tp in sorted(new)))

    # --- records ---------------------------------------------------------------------------------

    def handle(self, batch: dict[TopicPartition, list]) -> None:
        """One poll's records: the lists first (fewer events wait for their list), then events."""
        order = sorted(batch, key=lambda tp: self._kind.get(tp.topic) != "impressions")
        with self.lock:
            for tp in order:
                for message in batch[tp]:
                    self.handle_message(tp.topic, message.value)
                if batch[tp]:
                    self._positions[tp] = batch[tp][-1].offset + 1

    def handle_message(self, topic: str, value: bytes | None) -> None:
        """One record (call with ``lock`` held). A bad one is counted, never raised."""
        kind = self._kind.get(topic)
        if kind is None:
            return
        self.records += 1
        try:
            if kind == "impressions":
                self.attribution.add_exposure(parse_exposure(value))
            else:
                self.attribution.add_event(parse_user_event(value))
        except BadRecord as exc:
            self.bad_records[(kind, exc.reason)] += 1
        except Exception:  # a bug must not stop the metrics: count it, say where, go on
            log.exception("online metrics: a %s record could not be handled", kind)
            self.bad_records[(kind, "error")] += 1

    def _pace(self, consumer: KafkaConsumer) -> None:
        """Catching up: pause the topic ahead in record time. Caught up: move the clock."""
        if self.caught_up.is_set():
            with self.lock:
                self.attribution.advance(int(self._clock() * 1000))
            return
        behind = {tp for tp, end in self._catch_up.items() if consumer.position(tp) < end}
        if not behind:
            consumer.resume(*self._paused)
            self._paused.clear()
            self.caught_up.set()
            log.info("caught up with %d partitions", len(self._catch_up))
            return
        events_ms, lists_ms = self.attribution.watermarks
        lists_behind = {tp for tp in behind if self._kind[tp.topic] == "impressions"}
        events_behind = behind - lists_behind
        ahead: set[TopicPartition] = set()
        if lists_behind and events_ms > lists_ms + self.attribution.grace_ms:
            ahead = {tp for tp in consumer.assignment() if self._kind[tp.topic] == "events"}
        elif events_behind and lists_ms > events_ms + self.attribution.window_ms:
            ahead = {tp for tp in consumer.assignment() if self._kind[tp.topic] == "impressions"}
        if ahead != self._paused:
            consumer.resume(*(self._paused - ahead))
            consumer.pause(*(ahead - self._paused))
            self._paused = ahead

    # --- output ----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            snap = self.attribution.snapshot()
            snap["bad_records"] = [{"topic": t, "reason": r, "count": n}
                                   for (t, r), n in sorted(self.bad_records.items())]
            snap["consumer"] = {"caught_up": self.caught_up.is_set(), "records": self.records,
                                "kafka_errors": self.kafka_errors,
                                "partitions": len(self._catch_up)}
        return snap
