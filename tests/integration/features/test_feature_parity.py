"""Training and serving read a user's behaviour the same way.

One seeded event log (funnels, repeats, late events, duplicate deliveries, ties in time between
prefix-related ids, every live event type) goes through the real feature consumer from a real Kafka
topic into both stores (in-process, and Redis on a real server) and, written as a CSV, through the
offline loader. At several cut points (prefixes of the arrival order) every user's model inputs
built from each store's recent events equal those built from the offline steps. The same holds
when the stores start from the loader's snapshot and then get the stream, as a gateway does.
"""

from __future__ import annotations

import csv
import json
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from export.data.interactions import load_interactions_file
from feature_service.background import BackgroundConsumer
from feature_service.config import FeatureServiceSettings
from feature_service.store import FeatureStore, InMemoryStore, RedisStore
from features.behaviour import Step, event_order, steps_of
from features.catalog import Item, ItemCatalog
from features.events import Event
from features.model_inputs import ModelInputs, build_inputs
from features.user_state import FeatureRules
from tests.support.waiting import wait_for

N_USERS = 48
CATALOG = ItemCatalog.from_items([Item(f"i{n}", f"Item {n}", (f"c{n % 4}",)) for n in range(60)])
# Interacted with but not in the served catalog: both sides must send them to the OOV bucket.
UNLISTED = ["gone1", "gone2"]
# The stores keep more steps than the model reads (FeatureRules.history_items says they must), and
# most users have more events than the stores keep, so trimming is part of what is compared.
RULES = FeatureRules(history_items=24)
SEQUENCE_LENGTH = 16
K = 10
CUTS = (0.3, 0.65, 1.0)


@dataclass
class Log:
    arrivals: list[Event]  # in the order the topic receives them, duplicates included


def make_log(seed: int = 7) -> Log:
    """Per user a timeline of funnels (view -> click -> cart -> purchase on one item, some stopping
    early), repeats of items seen before, single events of every type and ties in time between
    prefix-related ids; then an arrival order that delivers some events late (after later-timed
    ones of the same user) and some twice."""
    rng = random.Random(seed)
    start_ms = int(time.time() * 1000) - 3 * 86_400_000
    items = [it.item_id for it in CATALOG.items] + UNLISTED
    kinds = ["view", "click", "cart", "purchase"]
    serial = iter(range(1, 10**6))
    timeline: list[Event] = []
    for u in range(N_USERS):
        ts = start_ms + rng.randrange(3_600_000)
        moments: list[tuple[str, str, int, str]] = []  # (item, kind, ts, event id)
        for _ in range(rng.randrange(8, 22)):
            ts += rng.randrange(1, 600_000)
            action = rng.random()
            if action < 0.3:  # a funnel on one item
                item = rng.choice(items)
                for kind in kinds[:rng.randrange(2, 5)]:
                    moments.append((item, kind, ts, f"e{next(serial)}"))
                    ts += rng.randrange(1, 20_000)
            elif action < 0.5 and moments:  # back to an item seen before
                item = rng.choice(moments)[0]
                moments.append((item, rng.choice(["view", "view", "click", "cart"]), ts, f"e{next(serial)}"))
            elif action < 0.75:  # one moment, several events, ids that are prefixes of each other
                base = f"t{next(serial)}z"  # "z": no base is a prefix of another group's ids
                ids = [base, *rng.sample([f"{base}0", f"{base}00", f"{base}-", f"{base}.1", f"{base}:",
                                          f"{base}_", f"{base}A"], rng.randrange(1, 5))]
                moments += [(rng.choice(items), rng.choice(kinds), ts, event_id) for event_id in ids]
            else:
                for _ in range(rng.randrange(1, 4)):
                    moments.append((rng.choice(items), rng.choice(["view", "view", *kinds]), ts,
                                    f"e{next(serial)}"))
                    ts += rng.randrange(1, 5_000)
        timeline += [Event(event_id=event_id, user_id=f"u{u}", item_id=item, event_type=kind,
                           ts_ms=ts_ms) for item, kind, ts_ms, event_id in moments]
    # Ids are unique per event: the stores de-duplicate by id across users, so a shared id would
    # keep whichever user's event a consumer happens to read first.
    assert len({e.event_id for e in timeline}) == len(timeline)
    # Arrival: by event time (ties in random order), except that some events are held back (late)
    # and some delivered twice.
    arrivals = sorted(timeline, key=lambda e: (e.ts_ms, rng.random()))
    for i in reversed([i for i in range(len(arrivals)) if rng.random() < 0.06]):
        event = arrivals.pop(i)
        arrivals.insert(i + rng.randrange(20, 300), event)
    for i in sorted(rng.sample(range(len(arrivals)), len(arrivals) // 25), reverse=True):
        arrivals.insert(i + rng.randrange(1, 150), arrivals[i])
    return Log(arrivals)


def write_csv(events: list[Event], path: Path, *, event_ids: bool = True) -> Path:
    """The offline form of the same log: one row per delivery, in arrival order; time as epoch
    seconds with milliseconds as decimals."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "item_id", "timestamp", "event_type"] + ["event_id"] * event_ids)
        for e in events:
            out.writerow([e.user_id, e.item_id, f"{e.ts_ms // 1000}.{e.ts_ms % 1000:03d}",
                          e.event_type.value] + [e.event_id] * event_ids)
    return path


def inputs(steps: list[Step], exclude: set[str]) -> ModelInputs:
    return build_inputs(steps, CATALOG, SEQUENCE_LENGTH, K, exclude=exclude)


def describe(steps: list[Step]) -> list[tuple[str, str]]:
    return [(str(s), s.event_type) for s in steps]


def compare(name: str, store: FeatureStore, offline: dict[str, list[Step]]) -> list[str]:
    """Every user's model inputs from ``store`` against the offline ones; the differences. Also
    that the store keeps exactly the newest ``history_items`` steps, in order: the model reads
    fewer, so a store that trimmed a different event of a tie would not show in its inputs yet."""
    problems = []
    for user in sorted({f"u{u}" for u in range(N_USERS)} | set(offline)):
        want_steps = offline.get(user)
        features = store.get(user)
        if want_steps is None or features is None:
            if (want_steps is None) != (features is None):
                problems.append(f"{name} {user}: known offline {want_steps is not None}, "
                                f"in the store {features is not None}")
            continue
        got_steps = steps_of(features.recent)
        if features.recent != sorted(features.recent, key=event_order):
            problems.append(f"{name} {user}: recent events not in event order")
        if describe(got_steps) != describe(want_steps[-RULES.history_items:]):
            problems.append(f"{name} {user} kept steps:\n  store   {describe(got_steps)}\n"
                            f"  offline {describe(want_steps[-RULES.history_items:])}")
        got, want = inputs(got_steps, features.seen_items), inputs(want_steps, set(want_steps))
        for field in ("history", "history_types", "exclude"):
            if not np.array_equal(getattr(got, field), getattr(want, field)):
                problems.append(f"{name} {user} {field}: store {getattr(got, field).tolist()}, "
                                f"offline {getattr(want, field).tolist()}")
    return problems


def settings(kafka, topic: str) -> FeatureServiceSettings:
    return FeatureServiceSettings(
        kafka_bootstrap_servers=kafka.bootstrap_servers, events_topic=topic, create_topics=False,
        group_id=f"g-{topic}", history_items=RULES.history_items, poll_timeout_ms=50,
        retry_backoff_ms=200, max_poll_records=200)


def test_stores_and_offline_loader_give_the_same_model_inputs(kafka, redis_server, topic, tmp_path):
    log = make_log()
    # what the log must contain for the test to mean anything
    kinds = {e.event_type.value for e in log.arrivals}
    assert kinds == {"view", "click", "cart", "purchase"}
    ids = [e.event_id for e in log.arrivals]
    assert len(ids) - len(set(ids)) >= 20, "duplicate deliveries"
    assert 1000 <= len(set(ids)) <= 2000

    memory = InMemoryStore(RULES)
    redis_store = RedisStore(redis_server.url, RULES, prefix=topic)
    consumers = [BackgroundConsumer(settings(kafka, topic), memory),
                 BackgroundConsumer(settings(kafka, topic), redis_store)]
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all",
                             enable_idempotence=True, linger_ms=5)
    try:
        for c in consumers:
            c.start()
        sent = 0
        for fraction in CUTS:
            cut = round(fraction * len(log.arrivals))
            for event in log.arrivals[sent:cut]:
                producer.send(topic, key=event.user_id.encode(), value=event.to_bytes())
            producer.flush(timeout=30)
            sent = cut
            for c, name in zip(consumers, ["in-process", "redis"], strict=True):
                # the counters move just after a batch's store write
                wait_for(lambda c=c, n=cut: c.error is not None
                         or c.consumer.applied + c.consumer.duplicates >= n,
                         f"the {name} consumer to take {cut} events")
                assert c.error is None, c.error
            prefix = log.arrivals[:cut]
            assert all(c.consumer.applied == len({e.event_id for e in prefix}) for c in consumers)
            dataset = load_interactions_file(write_csv(prefix, tmp_path / f"log-{cut}.csv"))
            offline = dataset.user_steps()
            assert sum(map(len, offline.values())) == len({e.event_id for e in prefix})
            problems = compare("in-process", memory, offline) + compare("redis", redis_store, offline)
            assert not problems, f"cut at {cut} of {len(log.arrivals)} arrivals:\n" + "\n".join(
                problems[:6])
    finally:
        producer.close(timeout=5)
        for c in consumers:
            c.stop()
        redis_store.close()


def test_a_snapshot_of_the_offline_log_then_the_whole_stream_give_the_same_steps(redis_server, tmp_path):
    """How the gateway starts: the stores are seeded with the export's snapshot (typed rows), then
    the in-process store replays the topic from its beginning, snapshot events included. Each
    event is one step, wherever it came from."""
    log = make_log()
    cut = len(log.arrivals) // 2
    snapshot = json.loads(json.dumps(  # as the file carries it
        load_interactions_file(write_csv(log.arrivals[:cut], tmp_path / "first.csv")).snapshot_rows()))
    offline = load_interactions_file(write_csv(log.arrivals, tmp_path / "all.csv")).user_steps()
    stores = {"in-process": InMemoryStore(RULES),
              "redis": RedisStore(redis_server.url, RULES, prefix=f"t{uuid.uuid4().hex[:8]}")}
    problems = []
    for name, store in stores.items():
        store.load_snapshot(snapshot)
        store.apply_many(log.arrivals)
        problems += compare(name, store, offline)
        store.close()
    assert not problems, "\n".join(problems[:6])


def test_a_snapshot_of_a_log_without_event_ids_seeds_the_offline_steps(redis_server, tmp_path):
    """Ids the loader generates (they keep the file's order of ties) are read by both stores."""
    log = make_log()
    dataset = load_interactions_file(write_csv(log.arrivals, tmp_path / "log.csv", event_ids=False))
    snapshot = json.loads(json.dumps(dataset.snapshot_rows()))
    stores = {"in-process": InMemoryStore(RULES),
              "redis": RedisStore(redis_server.url, RULES, prefix=f"t{uuid.uuid4().hex[:8]}")}
    problems = []
    for name, store in stores.items():
        store.load_snapshot(snapshot)
        problems += compare(name, store, dataset.user_steps())
        store.close()
    assert not problems, "\n".join(problems[:6])


def test_the_log_has_what_parity_needs():
    """Late arrivals and ties between prefix-related ids are really in the generated log."""
    log = make_log()
    last_ts: dict[str, int] = {}
    late = 0
    for e in log.arrivals:
        late += e.ts_ms < last_ts.get(e.user_id, -1)
        last_ts[e.user_id] = max(e.ts_ms, last_ts.get(e.user_id, -1))
    assert late >= 30
    by_moment: dict[tuple[str, int], set[str]] = {}
    for e in log.arrivals:
        by_moment.setdefault((e.user_id, e.ts_ms), set()).add(e.event_id)
    prefixed = sum(any(a != b and b.startswith(a) for a in ids for b in ids)
                   for ids in by_moment.values())
    assert prefixed >= 20
