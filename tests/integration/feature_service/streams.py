"""What the fault and scale-out tests share: a 10,000-event stream with malformed messages mixed
in, a producer that keeps a steady rate and re-sends until every message is acknowledged, an
oracle of the final state, and readers of the resulting store and dead-letter topic."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaError

from feature_service.store import FeatureStore, InMemoryStore
from features.catalog import Item, ItemCatalog
from features.events import Event
from features.user_state import FeatureRules
from tests.support.kafka import read_topic

N_EVENTS = 10_000
N_USERS = 200
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance"]
ITEMS = [Item(f"i{i}", f"Item {i}", (GENRES[i % 5], GENRES[(i * 7) % 5])) for i in range(300)]
CATEGORIES = ItemCatalog.from_items(ITEMS).categories_by_item()
# History long enough that every event of a user stays visible: "reflected exactly once" is then
# checked event by event, not only through aggregates.
RULES = FeatureRules(history_items=1000, affinity_half_life_ms=600_000,
                     trending_half_life_ms=300_000)


def write_catalog(path: Path) -> Path:
    ItemCatalog.from_items(ITEMS).to_json(path)
    return path


def feature_settings(kafka, topic: str, **extra) -> dict[str, object]:
    """RECSYS_FEATURES_* settings for a consumer process of these tests."""
    return {"kafka_bootstrap_servers": kafka.bootstrap_servers, "events_topic": topic,
            "group_id": f"g-{topic}", "history_items": RULES.history_items,
            "affinity_half_life_ms": RULES.affinity_half_life_ms,
            "trending_half_life_ms": RULES.trending_half_life_ms, "retry_backoff_ms": 200,
            # the broker's minimum: a SIGKILLed member's partitions move on sooner
            "session_timeout_ms": 6000, **extra}


@dataclass
class Stream:
    messages: list[tuple[bytes, bytes]]  # (key, value) in production order
    valid: list[Event]
    malformed_keys: set[bytes]  # malformed messages are keyed bad-<n>: the dead-letter key


def make_stream(n: int = N_EVENTS, malformed_every: int = 40, seed: int = 0) -> Stream:
    """``n`` messages over the past hour: 1 in ``malformed_every`` malformed (each kind of bad
    input in turn), 1 in 20 of the valid ones late by up to a minute."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms - 3600_000
    kinds = ["view"] * 6 + ["click"] * 3 + ["cart", "purchase"]
    messages, valid, bad = [], [], set()
    for i in range(n):
        if i % malformed_every == malformed_every - 1:
            key = f"bad-{i}".encode()
            value = _malformed(i, now_ms)
            bad.add(key)
        else:
            ts = start_ms + i * 300 + rng.randrange(100)
            if rng.random() < 0.05:
                ts -= rng.randrange(60_000)
            event = Event(event_id=f"e{i}", user_id=f"u{rng.randrange(N_USERS)}",
                          item_id=rng.choice(ITEMS).item_id, event_type=rng.choice(kinds), ts_ms=ts)
            valid.append(event)
            key, value = event.user_id.encode(), event.to_bytes()
        messages.append((key, value))
    return Stream(messages, valid, bad)


def _malformed(i: int, now_ms: int) -> bytes:
    return [
        b'{"event_id": "x%d", "user_id": ' % i,  # truncated JSON
        b'{"event_id": "x%d", "user_id": "u1", "event_type": "view"}' % i,  # no item_id
        b'{"event_id": "x%d", "user_id": "u1", "item_id": "i1", "event_type": "view", "ts_ms": "x"}' % i,
        b'{"event_id": "x%d", "user_id": "u1", "item_id": "i1", "event_type": "teleport"}' % i,
        b'{"event_id": "x%d", "user_id": "u1", "item_id": "i1", "event_type": "view", "ts_ms": %d}'
        % (i, now_ms + 86_400_000),  # a day in the future
        b'{"event_id": "x%d", "pad": "%s"}' % (i, b"x" * 5000),  # oversized
        b"\xff\xfe%d" % i,  # not UTF-8
    ][i % 7]


class SteadyProducer(threading.Thread):
    """Produces ``messages`` at ``rate_per_s`` and re-sends any the broker did not acknowledge
    (a broker restart fails in-flight sends) until all are acknowledged. A re-send may duplicate a
    message whose acknowledgement was lost: exactly what the consumer's de-duplication is for."""

    def __init__(self, bootstrap_servers: str, topic: str, messages: list[tuple[bytes, bytes]],
                 rate_per_s: float = 2500, deadline_s: float = 180) -> None:
        super().__init__(name="steady-producer", daemon=True)
        self.bootstrap_servers, self.topic = bootstrap_servers, topic
        self.messages, self.rate_per_s, self.deadline_s = messages, rate_per_s, deadline_s
        self.acked = 0
        self.resends = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all",
                                 enable_idempotence=True, linger_ms=1, request_timeout_ms=5000,
                                 max_block_ms=5000, delivery_timeout_ms=30_000)
        todo = deque(range(len(self.messages)))
        inflight: deque = deque()
        started = time.monotonic()
        sent = 0
        try:
            while todo or inflight:
                if time.monotonic() - started > self.deadline_s:
                    raise TimeoutError(f"{len(todo) + len(inflight)} messages never acknowledged")
                if todo:
                    pause = started + sent / self.rate_per_s - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    index = todo.popleft()
                    key, value = self.messages[index]
                    try:
                        inflight.append((index, producer.send(self.topic, key=key, value=value)))
                        sent += 1
                    except KafkaError:  # no metadata while the broker is away
                        todo.appendleft(index)
                        time.sleep(0.2)
                # settle finished sends (all of them once everything is sent)
                while inflight and (inflight[0][1].is_done or not todo):
                    index, future = inflight.popleft()
                    try:
                        future.get(timeout=30)
                        self.acked += 1
                    except KafkaError:
                        self.resends += 1
                        todo.append(index)
        finally:
            producer.close(timeout=5)

    def wait_acked(self, fraction: float, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acked < fraction * len(self.messages):
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {self.acked} messages acknowledged"
            time.sleep(0.02)

    def finish(self, timeout_s: float = 180) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), "producer did not finish"
        if self.error is not None:
            raise self.error


def oracle(stream: Stream) -> InMemoryStore:
    """The state every store must end in: each valid event applied exactly once."""
    store = InMemoryStore(RULES, item_categories=CATEGORIES)
    store.apply_many(stream.valid)
    return store


@dataclass
class Snapshot:
    users: dict[str, tuple] = field(default_factory=dict)
    trending: dict[str, float] = field(default_factory=dict)


def snapshot(store: FeatureStore, users: list[str], now_ms: int) -> Snapshot:
    snap = Snapshot()
    for user in users:
        f = store.get(user, now_ms)
        snap.users[user] = None if f is None else (
            [(e.event_id, e.item_id, e.event_type, e.ts_ms) for e in f.recent],
            f.seen_items, f.bought_items, f.category_affinity)
    snap.trending = dict(store.trending(len(ITEMS) + 1, now_ms))
    return snap


def wait_until_converged(store: FeatureStore, expected: InMemoryStore, timeout_s: float = 90,
                         describe=lambda: "") -> None:
    """Wait until every user's event ids match the oracle's, then compare everything."""
    users = sorted({f"u{i}" for i in range(N_USERS)})
    now_ms = int(time.time() * 1000)
    want = snapshot(expected, users, now_ms)
    deadline = time.monotonic() + timeout_s
    while True:
        got = snapshot(store, users, now_ms)
        if all((got.users[u] or [None])[0] == (want.users[u] or [None])[0] for u in users):
            break
        if time.monotonic() > deadline:
            missing = sum(len(want.users[u][0]) - len((got.users[u] or [[]])[0]) for u in users
                          if want.users[u])
            pytest.fail(f"state did not converge: {missing} events short\n{describe()}")
        time.sleep(0.5)
    for user in users:
        recent, seen, bought, affinity = got.users[user]
        want_recent, want_seen, want_bought, want_affinity = want.users[user]
        assert recent == want_recent and seen == want_seen and bought == want_bought, user
        assert affinity == pytest.approx(want_affinity, rel=1e-7), user
    # Floating-point sums depend a little on arrival order (~1e-9 here); one event counted twice
    # would move a score by more than 1e-5 (the oldest event still weighs 2**-12 of a fresh one).
    assert got.trending == pytest.approx(want.trending, rel=1e-7)


def dead_letter_keys(bootstrap_servers: str, topic: str, expected: set[bytes],
                     timeout_s: float = 30) -> list[bytes]:
    """Keys of every record on the dead-letter topic: read until all ``expected`` keys have been
    seen, then to the end of the topic."""
    records = read_topic(bootstrap_servers, topic, timeout_s=timeout_s,
                         until=lambda records: expected <= {r.key for r in records})
    assert all(b'"reason"' in r.value for r in records)
    return [r.key for r in records]
