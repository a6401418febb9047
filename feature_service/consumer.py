"""Kafka -> feature store. At-least-once delivery made effectively-once.

Two ways to consume, chosen by the store:

* **durable store (Redis)** — a consumer-group member. Offsets are committed only after the store
  accepted the events before them (and their dead letters are acknowledged), so a crash re-delivers
  and the store drops what it already applied (by offset, below). Several processes
  in one group split the partitions; a rebalance re-delivers at most the uncommitted tail.
* **in-process store** — the state dies with the process, so committed offsets would lie about it.
  The consumer reads every partition from the beginning of the topic (no group membership),
  rebuilding the state on start; each gateway process holds every user. It commits only under
  ``<group_id>.dead-letters``, to record how far the invalid messages were dead-lettered, so a
  restart does not write them again.

Each event goes to the store with its position: the store drops a redelivery (offset at or below
the last it applied from that partition) however old, so a reset or expired consumer group that
replays the topic applies nothing twice. A partition whose recorded offset is beyond the topic's
end (the topic was deleted and re-created) has its record dropped, with an error in the log.

A message that is not a valid event goes to the dead-letter topic with the reason and a bounded
prefix of its bytes (with its size and digest), so that the record always fits; consumption goes on.
When the store is unreachable, or dead letters cannot be written, the partitions concerned are
rewound and retried after an exponential backoff with jitter; a partition that fails
``UNREADY_AFTER_FAILURES`` times in a row makes the consumer not ready, with the reason.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from feature_service import metrics
from feature_service.backoff import backoff_s
from feature_service.batches import Batch, outcome_of
from feature_service.config import FeatureServiceSettings
from feature_service.dead_letters import write_dead_letters
from feature_service.store import FeatureStore, StoreUnavailable
from feature_service.topics import ensure_topics
from features.events import Event, InvalidEvent, parse_event

log = logging.getLogger(__name__)

# Called for every newly applied event with the record's producer timestamp (ms).
OnApplied = Callable[[Event, int], None]

_ALL = "all"  # failures not tied to a partition (a Kafka error while polling)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _label(tp: TopicPartition | str) -> str:
    return tp if isinstance(tp, str) else f"{tp.topic}[{tp.partition}]"


class FeatureConsumer:
    """One consumer. Create it and call ``run`` in the same thread: a kafka-python consumer must
    never be shared across threads."""

    def __init__(self, settings: FeatureServiceSettings, store: FeatureStore,
                 on_applied: OnApplied | None = None, *,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.store = store
        self.on_applied = on_applied
        self.applied = 0
        self.duplicates = 0
        self.dead_lettered = 0
        # Partitions assigned (and, replaying, caught up), and no partition stuck: cleared again
        # while one fails UNREADY_AFTER_FAILURES times in a row (``not_ready_reason`` says why).
        self.ready = threading.Event()
        self.backoffs_s: list[float] = []  # every wait after a failure, in order (tests, debugging)
        self._catch_up: dict[TopicPartition, int] | None = None
        self._offsets_checked: set[TopicPartition] = set()
        # Replaying: below these offsets, invalid messages were dead-lettered by an earlier process.
        self._dead_lettered_below: dict[TopicPartition, int] = {}
        self._caught_up = False
        # Consecutive failed attempts per partition (or _ALL), with when the first one happened.
        self._failing: dict[TopicPartition | str, tuple[int, float, str]] = {}
        self._sleep = sleep
        self._clock = clock
        self._random = rng or random.Random()
        self._stop: threading.Event | None = None

    @property
    def group_mode(self) -> bool:
        return self.store.durable

    def _connect(self) -> tuple[KafkaConsumer, KafkaProducer]:
        s = self.settings
        consumer = KafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.group_id if self.group_mode else f"{s.group_id}.dead-letters",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.max_poll_records,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(100, s.session_timeout_ms // 5),
        )
        dead_letters = KafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers, acks="all", enable_idempotence=True,
            request_timeout_ms=s.kafka_timeout_ms, max_block_ms=s.kafka_timeout_ms,
        )
        return consumer, dead_letters

    def _attach(self, consumer: KafkaConsumer, stop: threading.Event) -> None:
        """Subscribe (group) or assign every partition from the beginning (replay), once the topic's
        partitions are known: a member that joins before that is assigned nothing."""
        topic = self.settings.events_topic
        while not stop.is_set():
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                break
            log.info("waiting for topic %s to exist", topic)
            stop.wait(self.settings.retry_backoff_ms / 1000)
        else:
            return
        if not consumer.partitions_for_topic(self.settings.dlq_topic):
            log.error("dead-letter topic %s does not exist: a partition with an invalid message will "
                      "wait (and the consumer turn not ready) until it is created", self.settings.dlq_topic)
        if self.group_mode:
            consumer.subscribe([topic])
            return
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        self._catch_up = consumer.end_offsets(parts)
        for tp in parts:
            self._dead_lettered_below[tp] = consumer.committed(tp) or 0

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        if s.create_topics:
            ensure_topics(s.kafka_bootstrap_servers, [s.events_topic, s.dlq_topic],
                          s.topic_partitions)
        self._stop = stop
        self._offsets_checked = set()  # a new connection: assignments are checked afresh
        consumer, dead_letters = self._connect()
        try:
            self._attach(consumer, stop)
            if self.store.blocking:
                self._run_pipelined(consumer, dead_letters, stop)
            else:
                self._run_serial(consumer, dead_letters, stop)
        finally:
            consumer.close()
            dead_letters.close()

    def _poll(self, consumer: KafkaConsumer) -> dict[TopicPartition, list]:
        batch = consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
        self._check_offsets(consumer)
        self._update_ready(consumer)
        if self._failing:
            self._forget_revoked(consumer.assignment())
        if not batch:
            self._succeeded([])  # polling works again
        return batch

    def _kafka_failed(self, exc: KafkaError) -> None:  # broker gone for a moment: the client reconnects
        log.warning("Kafka error, retrying: %r", exc)
        self._failed([_ALL], f"Kafka error: {exc!r}")

    def _run_serial(self, consumer: KafkaConsumer, dead_letters: KafkaProducer,
                    stop: threading.Event) -> None:
        """The in-process store: applying is CPU in this process; overlapping gains nothing."""
        while not stop.is_set():
            try:
                batch = self._poll(consumer)
                if batch:
                    self.process(consumer, dead_letters, batch)
            except KafkaError as exc:
                self._kafka_failed(exc)

    def _run_pipelined(self, consumer: KafkaConsumer, dead_letters: KafkaProducer,
                       stop: threading.Event) -> None:
        """A network store: while the writer thread applies one batch, the next is polled and
        parsed and the one before dead-lettered and committed. One batch is in the store at a
        time, so each partition's events are applied in order, and a batch is committed only after
        the store acknowledged it. When the store refuses a batch, it is rewound and the batch
        polled behind it loses those partitions (they come again). When a batch's dead letters
        fail, its partitions are rewound and the batch already in the store behind it is not
        committed for them: the redelivery applies nothing twice (the store drops offsets it has
        applied) and writes the dead letters again."""
        in_flight: tuple[Batch, Future] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="feature-store-writer") as writer:
            try:
                while not stop.is_set():
                    try:
                        polled = self._poll(consumer)
                    except KafkaError as exc:
                        polled = {}
                        self._kafka_failed(exc)
                    following = self._prepare(polled) if polled else None
                    done = None
                    if in_flight is not None:
                        done, outcome = in_flight[0], outcome_of(in_flight[1])
                        in_flight = None
                        if isinstance(outcome, StoreUnavailable):
                            rewound = self._finish(consumer, dead_letters, done, outcome)
                            following = following.without(rewound) if following else None
                            done = None
                    if following is not None and following.messages:
                        in_flight = (following, writer.submit(self._store_apply, following))
                    if done is not None:  # while the store works on the next batch
                        rewound = self._finish(consumer, dead_letters, done, outcome)
                        if rewound and in_flight is not None:
                            in_flight[0].skip |= rewound
            finally:
                if in_flight is not None:  # stopping: finish (commit) what the store has
                    try:
                        self._finish(consumer, dead_letters, in_flight[0], outcome_of(in_flight[1]))
                    except KafkaError as exc:
                        log.warning("could not finish the last batch (%r): it will be re-delivered", exc)

    def _check_offsets(self, consumer: KafkaConsumer) -> None:
        """For each newly assigned partition: an applied offset the store recorded at or beyond the
        partition's end cannot be this topic's (it was deleted and re-created). Keeping it would
        drop every new event below it as a redelivery, so it is forgotten, loudly."""
        new = consumer.assignment() - self._offsets_checked
        if not new:
            return
        try:
            applied = self.store.applied_offsets()
            ends = consumer.end_offsets(list(new))
            stale = [tp for tp in new if applied.get((tp.topic, tp.partition), -1) >= ends[tp]]
            if stale:
                log.error("the store applied offsets beyond the end of %s: the topic was re-created; "
                          "forgetting them (events below them would be taken for redeliveries)",
                          ", ".join(f"{_label(tp)} (applied {applied[(tp.topic, tp.partition)]}, "
                                    f"end {ends[tp]})" for tp in stale))
                self.store.forget_offsets([(tp.topic, tp.partition) for tp in stale])
        except StoreUnavailable as exc:  # checked again after the next poll
            log.warning("cannot check the store's applied offsets yet: %s", exc)
            return
        self._offsets_checked |= new

    def _update_ready(self, consumer: KafkaConsumer) -> None:
        if self._caught_up or not consumer.assignment():
            return
        if self._catch_up is None or all(consumer.position(tp) >= end
                                         for tp, end in self._catch_up.items()):
            self._caught_up = True
            self._refresh_ready()

    @property
    def stuck(self) -> dict[str, int]:
        """Partitions (or "all") that failed ``UNREADY_AFTER_FAILURES`` or more times in a row."""
        limit = self.settings.unready_after_failures
        return {_label(tp): n for tp, (n, _, _) in self._failing.items() if n >= limit}

    @property
    def not_ready_reason(self) -> str | None:
        """Why ``ready`` is not set, or None when it is."""
        limit = self.settings.unready_after_failures
        stuck = [f"{_label(tp)}: {n} consecutive failed attempts over {self._clock() - since:.0f} s"
                 f" ({why})" for tp, (n, since, why) in self._failing.items() if n >= limit]
        if stuck:
            return "stuck: " + "; ".join(stuck)
        if not self._caught_up:
            return "partitions not assigned yet" if self._catch_up is None else "catching up"
        return None

    def _refresh_ready(self) -> None:
        if self._caught_up and not self.stuck:
            self.ready.set()
            metrics.READY.set(1)
        else:
            self.ready.clear()
            metrics.READY.set(0)

    def backoff_s(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row: RETRY_BACKOFF_MS doubled each time,
        at most RETRY_BACKOFF_MAX_MS, with jitter (between half of it and all of it)."""
        return backoff_s(failures, self.settings.retry_backoff_ms, self.settings.retry_backoff_max_ms,
                         self._random)

    def _wait(self, seconds: float) -> None:
        self.backoffs_s.append(seconds)
        if self._sleep is not None:
            self._sleep(seconds)
        elif self._stop is not None:
            self._stop.wait(seconds)  # a stop request ends the wait
        else:
            time.sleep(seconds)

    def _failed(self, keys: list, reason: str) -> None:
        """Count a failed attempt at ``keys`` (rewound by the caller), update the metrics and
        readiness, and wait before the retry."""
        now = self._clock()
        for key in keys:
            n, since, _ = self._failing.get(key, (0, now, reason))
            self._failing[key] = (n + 1, since, reason)
            metrics.CONSECUTIVE_FAILURES.labels(_label(key)).set(n + 1)
        worst = max(self._failing.values(), key=lambda f: f[0])
        metrics.STUCK_SECONDS.set(now - min(since for _, since, _ in self._failing.values()))
        was_ready = self.ready.is_set()
        self._refresh_ready()
        if was_ready and not self.ready.is_set():
            log.error("feature consumer not ready: %s", self.not_ready_reason)
        self._wait(self.backoff_s(worst[0]))

    def _succeeded(self, keys) -> None:
        """A successful attempt at ``keys`` (and at Kafka): their failure streaks end."""
        if not self._failing:
            return
        for key in [*keys, _ALL]:
            if self._failing.pop(key, None) is not None:
                metrics.CONSECUTIVE_FAILURES.labels(_label(key)).set(0)
        self._after_reset()

    def _forget_revoked(self, assignment) -> None:
        """A partition taken by a rebalance is no longer this consumer's to be stuck on."""
        for key in [k for k in self._failing if k != _ALL and k not in assignment]:
            del self._failing[key]
            metrics.CONSECUTIVE_FAILURES.labels(_label(key)).set(0)
        self._after_reset()

    def _after_reset(self) -> None:
        now = self._clock()
        metrics.STUCK_SECONDS.set(now - min(s for _, s, _ in self._failing.values()) if self._failing else 0)
        if not self.ready.is_set():
            self._refresh_ready()

    def process(self, consumer: KafkaConsumer, dead_letters: KafkaProducer,
                batch: dict[TopicPartition, list]) -> None:
        """Apply one poll's messages, dead-letter the invalid ones, then commit (group mode)."""
        prepared = self._prepare(batch)
        try:
            outcome: list[bool] | StoreUnavailable = self._store_apply(prepared)
        except StoreUnavailable as exc:
            outcome = exc
        self._finish(consumer, dead_letters, prepared, outcome)

    def _prepare(self, batch: dict[TopicPartition, list]) -> Batch:
        """Parse a poll's messages: the valid events, and the invalid messages still to be
        dead-lettered (replaying, those below the mark were by an earlier process)."""
        now_ms = _now_ms()
        prepared = Batch(batch)
        for tp, messages in batch.items():
            done_below = self._dead_lettered_below.get(tp, 0)
            for message in messages:
                try:
                    event = parse_event(message.value, now_ms, max_bytes=self.settings.max_event_bytes,
                                        max_future_skew_ms=self.settings.max_future_skew_ms)
                    prepared.valid.append((event, message))
                except InvalidEvent as exc:
                    if message.offset >= done_below:
                        prepared.invalid.append((message, exc.reason))
        return prepared

    def _store_apply(self, prepared: Batch) -> list[bool]:
        return self.store.apply_many([event for event, _ in prepared.valid],
                                     [(m.topic, m.partition, m.offset) for _, m in prepared.valid])

    def _finish(self, consumer: KafkaConsumer, dead_letters: KafkaProducer, prepared: Batch,
                outcome: list[bool] | StoreUnavailable) -> set[TopicPartition]:
        """After the store answered: count, dead-letter, commit, or rewind. Returns the partitions
        rewound (their messages come again)."""
        batch, valid, invalid = prepared.messages, prepared.valid, prepared.invalid
        if prepared.skip:
            batch = {tp: ms for tp, ms in batch.items() if tp not in prepared.skip}
            invalid = [(m, why) for m, why in invalid if (m.topic, m.partition) not in prepared.skip]
        if isinstance(outcome, StoreUnavailable):
            log.warning("feature store unavailable (%s); retrying the batch", outcome)
            metrics.STORE_RETRIES.inc()
            self._rewind(consumer, batch)
            self._failed(list(batch), f"feature store unavailable: {outcome}")
            return set(batch)
        visible_ms = _now_ms()
        applied = 0
        for (event, message), was_new in zip(valid, outcome, strict=True):
            if not was_new:
                continue
            applied += 1
            metrics.FRESHNESS_SECONDS.observe(max(0, visible_ms - message.timestamp) / 1000)
            if self.on_applied is not None:
                self.on_applied(event, message.timestamp)
        # Counted per batch, not per event: per-event calls were ~8% of the consumer's CPU.
        self.applied += applied
        self.duplicates += len(valid) - applied
        metrics.APPLIED.inc(applied)
        metrics.DUPLICATES.inc(len(valid) - applied)
        failed: dict[TopicPartition, KafkaError] = self._dead_letter(dead_letters, invalid) if invalid else {}
        done = {tp: messages for tp, messages in batch.items() if tp not in failed}
        if failed:
            # Not committing past a dead letter that may be lost: re-deliver those partitions (their
            # valid events are de-duplicated; a dead letter may then be written twice). The other
            # partitions of the batch go on.
            error = next(iter(failed.values()))
            log.warning("dead letters not written (%r); retrying %s", error,
                        ", ".join(map(_label, failed)))
            metrics.DEAD_LETTER_FAILURES.inc()
            self._rewind(consumer, {tp: batch[tp] for tp in failed})
        if self.group_mode:
            to_commit = done
        else:  # replaying: only the marks of how far dead letters were written
            with_letters = {TopicPartition(m.topic, m.partition) for m, _ in invalid}
            to_commit = {tp: messages for tp, messages in done.items() if tp in with_letters}
        if to_commit:
            self._commit(consumer, to_commit)
        self._succeeded(list(done))
        if failed:
            self._failed(list(failed), f"dead-letter topic {self.settings.dlq_topic}: {error!r}")
        return set(failed)

    def _dead_letter(self, dead_letters: KafkaProducer, invalid: list) -> dict[TopicPartition, KafkaError]:
        s = self.settings
        written, failed = write_dead_letters(dead_letters, s.dlq_topic, invalid,
                                             max_payload_bytes=s.dead_letter_payload_max_bytes,
                                             timeout_s=s.kafka_timeout_ms / 1000)
        self.dead_lettered += written
        metrics.DEAD_LETTERED.inc(written)
        return failed

    def _commit(self, consumer: KafkaConsumer, batch: dict[TopicPartition, list]) -> None:
        offsets = {tp: OffsetAndMetadata(messages[-1].offset + 1, None, -1)
                   for tp, messages in batch.items()}
        try:
            consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partitions (or the coordinator is away): whoever consumes them
            # next gets these events again, and the store drops them as duplicates (replaying: a
            # restart writes these dead letters again).
            log.warning("offset commit failed (%r); messages will be re-delivered", exc)
            metrics.COMMIT_FAILURES.inc()

    @staticmethod
    def _rewind(consumer: KafkaConsumer, batch: dict[TopicPartition, list]) -> None:
        for tp, messages in batch.items():
            consumer.seek(tp, messages[0].offset)
