"""Real-time features: produce -> feature-visible latency, and consumer throughput.

    PYTHONPATH=. .venv/bin/python perf/bench_features.py --out perf/results

Starts its own Kafka broker (``stack.kafka.KafkaBroker``) and a persistent Redis
(``stack.redis.RedisServer``, AOF with ``appendfsync always``) in a temporary folder, and stops them
at the end. Each consumer is a ``FeatureConsumer`` in its own spawned process, as deployed; per store
(``memory``: replay without a group; ``redis``: a consumer group committing offsets):

* **throughput** (first: its pre-fill and replay also warm up the fresh broker's JIT) — a topic
  pre-filled with ``--throughput-events`` events, then one consumer process; applied events/s from
  the first applied event to the last, and the process's CPU time per event.
* **raw loops** (``--clients``): per Kafka client (kafka-python; confluent-kafka when installed)
  a bare consume loop over the same topic — fetch only (kafka-python also without its CRC check:
  librdkafka does not check CRCs by default), + ``parse_event``, + ``InMemoryStore.apply_many`` —
  to see where the time goes without the rest of ``FeatureConsumer``; and (``--profile-events``)
  a cProfile of a ``FeatureConsumer`` per store.
* **freshness** — for each rate in ``--rates``: a fresh topic; the consumer records
  ``time.time() - record CreateTime`` for every event through ``on_applied`` while this process
  produces open-loop at the steady rate (send i at t0 + i/rate, never waiting for an ack, one flush
  at the end) with the gateway's producer settings, also timing each send's acknowledgement. Sends
  of the first ``--warmup-s`` seconds are discarded; p50/p95/p99/max of the rest are reported with
  the achieved rate, and whether the backlog grew over the run (``falling_behind``).

Writes ``features_freshness.csv``, ``features_throughput.csv``, ``features.json``, ``features.png``
and ``features_profile_<store>.txt`` under ``--out``. Exits 1 if a consumer failed, missed events,
saw duplicates or dead-lettered anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

FRESHNESS_TARGET_MS = 100.0  # the issue: p99 <= 100 ms ...
FRESHNESS_TARGET_RATE = 1000  # ... at 1,000 events/s
THROUGHPUT_TARGET = 20_000  # events/s per consumer process

# Workload: ML-100K-sized catalogue, a realistic funnel of event types.
EVENT_MIX = {"view": 0.70, "click": 0.20, "cart": 0.07, "purchase": 0.03}
USER_ZIPF = 0.6  # a few heavy users, a long tail
ITEM_ZIPF = 1.0  # popular items dominate
NUM_CATEGORIES = 19  # ML-100K genres; each item gets 1-3
SURFACES = ("home", "search", "detail", "cart")
# Raw loops: fetch only (kafka-python also without its CRC check: librdkafka does not check CRCs
# by default), + parse_event, + InMemoryStore.apply_many.
RAW_STAGES = ("fetch", "fetch-nocrc", "parse", "apply")
CLIENTS = ("kafka-python", "confluent-kafka")

# Consumer settings shared by every run (the service's defaults otherwise).
POLL_TIMEOUT_MS = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=int, nargs="*", default=[100, 500, 1000, 2000, 5000],
                   help="steady produce rates (events/s) of the freshness runs (none: skip them)")
    p.add_argument("--duration-s", type=float, default=10.0, help="produce time per freshness run")
    p.add_argument("--warmup-s", type=float, default=1.0, help="sends discarded at the start of a run")
    p.add_argument("--stores", nargs="+", default=["memory", "redis"], choices=["memory", "redis"])
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=1_700)
    p.add_argument("--throughput-events", type=int, default=200_000,
                   help="events pre-filled for the throughput runs (0: skip them)")
    p.add_argument("--clients", nargs="*", choices=CLIENTS, default=None,
                   help="raw consume loops to compare (default: every installed client; none: skip)")
    p.add_argument("--raw-events", type=int, default=100_000,
                   help="events per raw consume loop (the first of the pre-filled topic)")
    p.add_argument("--profile-events", type=int, default=20_000,
                   help="events of the cProfile run per store (0: no profile)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (<1 min): 1,000 ev/s for 3 s, 20k throughput events, "
                        "fetch-only raw loops, no profile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("perf/results"))
    args = p.parse_args(argv)
    if args.clients is None:
        args.clients = [c for c in CLIENTS if _client_available(c)]
    args.raw_stages = list(RAW_STAGES)
    if args.quick:
        args.rates, args.duration_s, args.warmup_s = [1000], 3.0, 0.5
        args.throughput_events, args.raw_events, args.profile_events = 20_000, 20_000, 0
        args.raw_stages = ["fetch"]
    return args


def _client_available(client: str) -> bool:
    if client == "kafka-python":
        return True
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


# --- workload ------------------------------------------------------------------------------------


def item_id(i: int) -> str:
    return f"i{i:04d}"


def item_categories(num_items: int, seed: int) -> dict[str, list[str]]:
    """Each item in 1-3 of NUM_CATEGORIES genres (what the gateway passes from catalog.json)."""
    rng = np.random.default_rng(seed + 7)
    out = {}
    for i in range(num_items):
        k = int(rng.integers(1, 4))
        out[item_id(i)] = [f"genre{g:02d}" for g in sorted(rng.choice(NUM_CATEGORIES, k, replace=False))]
    return out


def _zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def make_events(n: int, users: int, items: int, rng: np.random.Generator) -> list[tuple[bytes, bytes]]:
    """``n`` (key, value template) pairs: ``Event.to_bytes()`` with ``%d`` where ``ts_ms`` goes, so a
    sender stamps the event time at send for ~1 us (the gateway stamps it when the request arrives).
    Every event is built and validated by ``features.events.Event``; ids are fresh uuid4 hex."""
    from features.events import Event

    user_idx = rng.choice(users, n, p=_zipf_weights(users, USER_ZIPF))
    item_idx = rng.choice(items, n, p=_zipf_weights(items, ITEM_ZIPF))
    types = rng.choice(list(EVENT_MIX), n, p=list(EVENT_MIX.values()))
    surface = rng.integers(0, 2 * len(SURFACES), n)  # half the events carry no context
    out = []
    for u, i, t, s in zip(user_idx.tolist(), item_idx.tolist(), types.tolist(), surface.tolist(),
                          strict=True):
        event = Event(user_id=f"u{u:05d}", item_id=item_id(i), event_type=t, ts_ms=0,
                      context={"surface": SURFACES[s]} if s < len(SURFACES) else None)
        value = event.to_bytes()
        assert value.count(b'"ts_ms":0') == 1 and b"%" not in value
        out.append((event.user_id.encode(), value.replace(b'"ts_ms":0', b'"ts_ms":%d')))
    return out


def new_producer(bootstrap: str):
    """The gateway's producer settings (gateway/producer.py)."""
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, retries=5,
                         linger_ms=1, request_timeout_ms=10_000, max_block_ms=10_000)


# --- consumer process ----------------------------------------------------------------------------


def _quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)


def consumer_process(spec: dict, ready, done, stop) -> None:
    """A FeatureConsumer with ``spec['store']``; records (record timestamp, freshness ms) per applied
    event until ``spec['expected']`` events were applied or ``stop`` is set; writes ``spec['result']``
    (.json) and, for freshness, ``<result>.npy``."""
    import cProfile

    from feature_service.config import FeatureServiceSettings
    from feature_service.consumer import FeatureConsumer
    from feature_service.store import create_store

    _quiet_logging()
    settings = FeatureServiceSettings(
        kafka_bootstrap_servers=spec["bootstrap"], events_topic=spec["topic"], group_id=spec["group"],
        store=spec["store"], redis_url=spec["redis_url"], redis_key_prefix=spec["prefix"],
        topic_partitions=spec["partitions"], create_topics=False, poll_timeout_ms=POLL_TIMEOUT_MS,
    )
    store = create_store(settings.store, settings.rules(), redis_url=settings.redis_url,
                         prefix=settings.redis_key_prefix,
                         item_categories=item_categories(spec["items"], spec["seed"]),
                         dedup_window_events=settings.dedup_window_events, dedup_ttl_s=settings.dedup_ttl_s)
    expected = spec["expected"]
    record_ts, fresh_ms = array("d"), array("d")
    marks: dict[str, float] = {}
    local_stop = threading.Event()

    def on_applied(event, record_timestamp_ms: int) -> None:
        now_ms = time.time() * 1000
        if not record_ts:
            marks["first_wall"], marks["first_cpu"] = time.perf_counter(), time.process_time()
        record_ts.append(record_timestamp_ms)
        fresh_ms.append(now_ms - record_timestamp_ms)
        if len(record_ts) == expected:
            marks["last_wall"], marks["last_cpu"] = time.perf_counter(), time.process_time()
            done.set()
            local_stop.set()

    consumer = FeatureConsumer(settings, store, on_applied)

    def relay() -> None:  # readiness out, stop in
        while not local_stop.is_set():
            if consumer.ready.is_set() and not ready.is_set():
                ready.set()
            if stop.is_set():
                local_stop.set()
            time.sleep(0.01)

    threading.Thread(target=relay, daemon=True).start()
    result: dict = {"error": None}
    profiler = cProfile.Profile() if spec.get("profile") else None
    try:
        if profiler:
            profiler.enable()
        consumer.run(local_stop)
    except BaseException as exc:  # reported to the parent
        result["error"] = repr(exc)
    finally:
        if profiler:
            profiler.disable()
        store.close()
    result.update(applied=consumer.applied, duplicates=consumer.duplicates,
                  dead_lettered=consumer.dead_lettered, **marks)
    out = Path(spec["result"])
    if spec.get("save_latencies"):
        np.save(out.with_suffix(".npy"), np.vstack([np.frombuffer(record_ts), np.frombuffer(fresh_ms)]))
    if profiler:
        _write_profile(profiler, Path(spec["profile"]), spec, consumer.applied)
    out.write_text(json.dumps(result))


def _write_profile(profiler, path: Path, spec: dict, applied: int) -> None:
    import io
    import pstats

    text = io.StringIO()
    text.write(f"cProfile of FeatureConsumer.run, store={spec['store']}, {applied} events applied\n")
    for key in ("tottime", "cumulative"):
        text.write(f"\n==== by {key} ====\n")
        pstats.Stats(profiler, stream=text).sort_stats(key).print_stats(30)
    path.write_text(text.getvalue())


def run_consumer(spec: dict, *, wait_ready: bool, timeout_s: float, start_hook=None) -> dict:
    """Spawn ``consumer_process``; if ``wait_ready``, call ``start_hook`` once it is ready (the
    producer); wait until it applied ``spec['expected']`` events or ``timeout_s``; return its result
    plus, for freshness, the latencies."""
    ctx = mp.get_context("spawn")
    ready, done, stop = ctx.Event(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=consumer_process, args=(spec, ready, done, stop), daemon=True)
    proc.start()
    hook_result, not_ready = None, None
    try:
        if wait_ready:
            deadline = time.monotonic() + 60
            while not ready.wait(0.1):
                if not proc.is_alive() or time.monotonic() > deadline:
                    not_ready = f"consumer not ready after 60 s (exit code {proc.exitcode})"
                    break
        if start_hook is not None and not not_ready:
            hook_result = start_hook()
        deadline = time.monotonic() + timeout_s
        while not not_ready and not done.wait(0.2) and proc.is_alive() and time.monotonic() < deadline:
            pass
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    path = Path(spec["result"])
    result = json.loads(path.read_text()) if path.exists() else {"error": f"exit code {proc.exitcode}"}
    result["timed_out"] = not done.is_set()
    if not_ready:
        result["error"] = not_ready
    if spec.get("save_latencies") and path.with_suffix(".npy").exists():
        result["latencies"] = np.load(path.with_suffix(".npy"))
    return {**result, "hook": hook_result}


# --- raw consume loops ---------------------------------------------------------------------------


def raw_stages(client: str, stages: list[str]) -> list[str]:
    return [s for s in stages if client == "kafka-python" or s != "fetch-nocrc"]


def raw_process(spec: dict) -> None:
    """For one client: consume the pre-filled topic from the beginning once per stage (fetch only,
    + parse_event, + InMemoryStore.apply_many) and write events/s per stage to ``spec['result']``."""
    from feature_service.store import InMemoryStore
    from features.events import parse_event

    _quiet_logging()
    categories = item_categories(spec["items"], spec["seed"])
    results = {}
    for stage in raw_stages(spec["client"], spec["stages"]):
        store = InMemoryStore(item_categories=categories)

        def handle(values: list[bytes], stage=stage, store=store) -> None:
            if stage.startswith("fetch"):
                return
            now_ms = int(time.time() * 1000)
            events = [parse_event(v, now_ms) for v in values]
            if stage == "apply":
                store.apply_many(events)

        loop = _kafka_python_loop if spec["client"] == "kafka-python" else _confluent_loop
        results[stage] = loop(spec, handle, check_crcs=stage != "fetch-nocrc")
    Path(spec["result"]).write_text(json.dumps(results))


def _rate(count: int, first: float, last: float, cpu0: float, cpu1: float) -> dict:
    wall = last - first
    return {"events": count, "seconds": round(wall, 3), "events_per_s": round(count / wall),
            "cpu_util": round((cpu1 - cpu0) / wall, 2),
            "cpu_us_per_event": round((cpu1 - cpu0) / count * 1e6, 1)}


def _kafka_python_loop(spec: dict, handle, check_crcs: bool) -> dict:
    """FeatureConsumer's settings: no group, max_poll_records 500 (and kafka-python's defaults)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=spec["bootstrap"], group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=500, check_crcs=check_crcs)
    parts = [TopicPartition(spec["topic"], p) for p in sorted(consumer.partitions_for_topic(spec["topic"]))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    count, first, cpu0 = 0, None, 0.0
    while count < spec["expected"]:
        batch = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        if not batch:
            continue
        if first is None:
            first, cpu0 = time.perf_counter(), time.process_time()
        values = [m.value for messages in batch.values() for m in messages]
        handle(values)
        count += len(values)
    last, cpu1 = time.perf_counter(), time.process_time()
    consumer.close()
    return _rate(count, first, last, cpu0, cpu1)


def _confluent_loop(spec: dict, handle, check_crcs: bool) -> dict:
    """librdkafka's defaults (check.crcs false), batches of up to 500 as FeatureConsumer's polls."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": spec["bootstrap"], "group.id": f"raw-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    metadata = consumer.list_topics(spec["topic"], timeout=10)
    consumer.assign([TopicPartition(spec["topic"], p, OFFSET_BEGINNING)
                     for p in sorted(metadata.topics[spec["topic"]].partitions)])
    count, first, cpu0 = 0, None, 0.0
    while count < spec["expected"]:
        messages = consumer.consume(num_messages=500, timeout=POLL_TIMEOUT_MS / 1000)
        if not messages:
            continue
        if first is None:
            first, cpu0 = time.perf_counter(), time.process_time()
        values = [m.value() for m in messages if m.error() is None]
        handle(values)
        count += len(values)
    last, cpu1 = time.perf_counter(), time.process_time()
    consumer.close()
    return _rate(count, first, last, cpu0, cpu1)


def run_raw(spec: dict, timeout_s: float) -> dict:
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=raw_process, args=(spec,), daemon=True)
    proc.start()
    proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"error": "timed out"}
    path = Path(spec["result"])
    return json.loads(path.read_text()) if path.exists() else {"error": f"exit code {proc.exitcode}"}


# --- the benchmark -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, bootstrap: str, redis_url: str) -> None:
        self.args = args
        self.tmp = tmp
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.rng = np.random.default_rng(args.seed)
        self.producer = new_producer(bootstrap)
        self._runs = 0

    def close(self) -> None:
        self.producer.close(timeout=10)

    def new_topic(self, label: str) -> str:
        from feature_service.topics import ensure_topics

        self._runs += 1
        topic = f"bench-{label}-{self._runs}"
        ensure_topics(self.bootstrap, [topic, f"{topic}.dlq"], self.args.partitions)
        self.producer.partitions_for(topic)  # metadata now, not inside the timed sends
        return topic

    def spec(self, store: str, topic: str, expected: int, tag: str = "", **extra) -> dict:
        tag = f"{topic}-{store}{tag}"
        return {"bootstrap": self.bootstrap, "topic": topic, "group": f"group-{tag}", "store": store,
                "redis_url": self.redis_url, "prefix": f"bench:{tag}", "partitions": self.args.partitions,
                "items": self.args.items, "seed": self.args.seed, "expected": expected,
                "result": str(self.tmp / f"{tag}.json"), **extra}

    def produce_open_loop(self, topic: str, events: list[tuple[bytes, bytes]], rate: float) -> dict:
        """Send i at t0 + i/rate (never waiting for an ack); CreateTime is stamped at send().
        Also times each send's acknowledgement (acks=all: appended, and below the high watermark,
        so fetchable) in the producer's I/O thread."""
        send, n = self.producer.send, len(events)
        lag, sent_at, acked_at = np.empty(n), np.empty(n), np.full(n, np.nan)

        def on_ack(i: int, _metadata) -> None:  # kafka-python passes the bound args first
            acked_at[i] = time.perf_counter()

        wall0 = time.time()
        t0 = time.perf_counter()
        for i, (key, template) in enumerate(events):
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at[i] = now = time.perf_counter()
            lag[i] = now - target
            send(topic, key=key, value=template % int(time.time() * 1000)).add_callback(on_ack, i)
        sent_s = time.perf_counter() - t0
        self.producer.flush(timeout=30)
        return {"wall0_ms": wall0 * 1000, "sent_s": sent_s, "send_lag_ms": lag * 1000,
                "ack_ms": (acked_at - sent_at) * 1000, "offsets_s": sent_at - t0}

    def freshness(self, store: str, rate: int) -> dict:
        a = self.args
        n = int(rate * a.duration_s)
        events = make_events(n, a.users, a.items, self.rng)
        topic = self.new_topic(f"fresh-{store}-{rate}")
        spec = self.spec(store, topic, n, save_latencies=True)
        res = run_consumer(spec, wait_ready=True, timeout_s=60,
                           start_hook=lambda: self.produce_open_loop(topic, events, rate))
        sent = res["hook"]
        if sent is None:
            return {"store": store, "target_rate": rate, "events": n, "applied": 0, "achieved_rate": 0,
                    "problems": _problems(res, n), "ok": False}
        acks = sent["ack_ms"][sent["offsets_s"] >= a.warmup_s]
        row = {"store": store, "target_rate": rate, "events": n, "applied": res.get("applied", 0),
               "achieved_rate": round((n - 1) / sent["sent_s"], 1),
               "send_lag_p99_ms": round(float(np.percentile(sent["send_lag_ms"], 99)), 2),
               "ack_p50_ms": round(float(np.nanpercentile(acks, 50)), 2),
               "ack_p99_ms": round(float(np.nanpercentile(acks, 99)), 2)}
        lat = res.get("latencies")
        if lat is not None and lat.shape[1]:
            lat = lat[:, np.argsort(lat[0], kind="stable")]  # in send order
            keep = lat[1][lat[0] >= sent["wall0_ms"] + a.warmup_s * 1000]
            p50, p95, p99 = np.percentile(keep, [50, 95, 99])
            quarter = max(1, len(keep) // 4)
            first_q, last_q = np.median(keep[:quarter]), np.median(keep[-quarter:])
            row.update(measured=len(keep), p50_ms=round(float(p50), 2), p95_ms=round(float(p95), 2),
                       p99_ms=round(float(p99), 2), max_ms=round(float(keep.max()), 2),
                       consumer_cpu_util=_cpu_util(res),
                       # the consumer fell behind: a backlog that grew over the run
                       falling_behind=bool(last_q > 2 * first_q + 50))
        row["problems"] = _problems(res, n)
        row["ok"] = not row["problems"]
        return row

    def prefill(self, n: int) -> tuple[str, dict]:
        """A topic with ``n`` events, produced as fast as the gateway's producer settings allow."""
        events = make_events(n, self.args.users, self.args.items, self.rng)
        topic = self.new_topic("throughput")
        send = self.producer.send
        t0 = time.perf_counter()
        for key, template in tqdm(events, desc=f"pre-fill {n:,} events", unit="ev", mininterval=1):
            send(topic, key=key, value=template % int(time.time() * 1000))
        self.producer.flush(timeout=60)
        seconds = time.perf_counter() - t0
        return topic, {"events": n, "seconds": round(seconds, 2), "events_per_s": round(n / seconds)}

    def redis_stats(self) -> dict:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            return {"cmd": client.info("commandstats"), "cpu": client.info("cpu")}
        finally:
            client.close()

    def redis_delta(self, before: dict) -> dict:
        """Redis server time per EVALSHA (one event) and its CPU use during a run."""
        after = self.redis_stats()
        cmd0 = before["cmd"].get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        cmd1 = after["cmd"].get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        calls, usec = cmd1["calls"] - cmd0["calls"], cmd1["usec"] - cmd0["usec"]
        cpu = sum(after["cpu"][k] - before["cpu"][k] for k in ("used_cpu_sys", "used_cpu_user"))
        return {"evalsha_calls": calls, "usec_per_evalsha": round(usec / max(calls, 1), 1),
                "server_cpu_s": round(cpu, 2)}

    def throughput(self, store: str, topic: str, n: int) -> dict:
        spec = self.spec(store, topic, n)
        before = self.redis_stats() if store == "redis" else None
        res = run_consumer(spec, wait_ready=False, timeout_s=max(120.0, n / 1000))
        row = {"what": "FeatureConsumer", "client": "kafka-python", "store": store, "stage": "full",
               "events": n, "applied": res.get("applied", 0)}
        if "last_wall" in res:
            wall = res["last_wall"] - res["first_wall"]
            row.update(seconds=round(wall, 2), events_per_s=round((n - 1) / wall), cpu_util=_cpu_util(res),
                       cpu_us_per_event=round((res["last_cpu"] - res["first_cpu"]) / (n - 1) * 1e6, 1))
        if store == "redis":
            row["redis_server"] = self.redis_delta(before)
        row["problems"] = _problems(res, n)
        row["ok"] = not row["problems"]
        return row

    def raw(self, client: str, topic: str, n: int) -> list[dict]:
        spec = {"client": client, "bootstrap": self.bootstrap, "topic": topic, "expected": n,
                "items": self.args.items, "seed": self.args.seed, "stages": self.args.raw_stages,
                "result": str(self.tmp / f"raw-{client}.json")}
        stages = raw_stages(client, self.args.raw_stages)
        res = run_raw(spec, timeout_s=60 + len(stages) * max(60.0, n / 2000))
        rows = []
        for stage in stages:
            r = res.get(stage, {})
            problems = [res["error"]] if "error" in res else []
            rows.append({"what": "raw loop", "client": client, "store": "memory" if stage == "apply" else "-",
                         "stage": stage, "events": n, "applied": r.get("events", 0),
                         "seconds": r.get("seconds"), "events_per_s": r.get("events_per_s"),
                         "cpu_util": r.get("cpu_util"), "cpu_us_per_event": r.get("cpu_us_per_event"),
                         "problems": problems, "ok": not problems})
        return rows

    def profile(self, store: str, topic: str, n: int) -> str:
        """cProfile of a FeatureConsumer over the first ``n`` events of the pre-filled topic."""
        path = self.args.out / f"features_profile_{store}.txt"
        res = run_consumer(self.spec(store, topic, n, profile=str(path), tag="profile"), wait_ready=False,
                           timeout_s=max(120.0, n / 500))
        if res.get("error") or not path.exists():
            return f"profile failed: {res.get('error')}"
        return str(path)


def _cpu_util(res: dict) -> float | None:
    if "last_cpu" not in res:
        return None
    return round((res["last_cpu"] - res["first_cpu"]) / (res["last_wall"] - res["first_wall"]), 2)


def _problems(res: dict, expected: int) -> list[str]:
    problems = []
    if res.get("error"):
        problems.append(f"consumer error: {res['error']}")
    if res.get("applied", 0) != expected:
        problems.append(f"applied {res.get('applied', 0)} of {expected}")
    for key in ("duplicates", "dead_lettered"):
        if res.get(key):
            problems.append(f"{key}: {res[key]}")
    if res.get("timed_out"):
        problems.append("timed out")
    return problems


def environment() -> dict:
    import kafka
    import redis
    from kafka.record import util as record_util

    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "kafka_python": kafka.__version__, "redis_py": redis.__version__,
           # Optional C extensions the clients pick up when installed (not in requirements.txt):
           "kafka_python_crc32c_c": record_util.crc32c_c is not None,
           "redis_py_hiredis": redis.utils.HIREDIS_AVAILABLE}
    try:
        import confluent_kafka

        env["confluent_kafka"] = confluent_kafka.__version__
        env["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        env["confluent_kafka"] = None
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    env["redis_server"] = out.stdout.strip()
    env["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    return env


# --- output --------------------------------------------------------------------------------------

FRESHNESS_COLUMNS = ["store", "target_rate", "achieved_rate", "events", "applied", "measured", "p50_ms",
                     "p95_ms", "p99_ms", "max_ms", "ack_p50_ms", "ack_p99_ms", "send_lag_p99_ms",
                     "consumer_cpu_util", "falling_behind", "ok"]
THROUGHPUT_COLUMNS = ["what", "client", "store", "stage", "events", "applied", "seconds", "events_per_s",
                      "cpu_util", "cpu_us_per_event", "ok"]


def write_outputs(out: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "features.json").write_text(json.dumps(report, indent=2))
    for name, columns, rows in (("features_freshness.csv", FRESHNESS_COLUMNS, report["freshness"]),
                                ("features_throughput.csv", THROUGHPUT_COLUMNS, report["throughput"])):
        with (out / name).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow([r.get(c) for c in columns])

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.1, 1]})
    colours = {"memory": "#4477aa", "redis": "#cc3311"}
    for store in report["config"]["stores"]:
        rows = [r for r in report["freshness"] if r["store"] == store and "p99_ms" in r]
        for key, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
            left.plot([r["achieved_rate"] for r in rows], [r[key] for r in rows], style, marker="o",
                      color=colours[store], label=f"{store} {key[:-3]}")
    left.axhline(FRESHNESS_TARGET_MS, color="#888888", lw=1, ls="-.",
                 label=f"{FRESHNESS_TARGET_MS:g} ms target")
    left.axvline(FRESHNESS_TARGET_RATE, color="#888888", lw=0.8, ls=":")
    left.set(xscale="log", yscale="log", xlabel="produce rate (events/s, achieved)",
             ylabel="send → visible in store (ms)",
             title=f"freshness, {report['environment']['cpu_count']} CPU cores, 1 consumer process")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, ncol=2)

    rows = [r for r in report["throughput"] if r.get("events_per_s")][::-1]  # first on top
    labels = [f"FeatureConsumer, {r['store']} store" if r["what"] == "FeatureConsumer" else
              f"{r['client']} raw loop: {r['stage']}" for r in rows]
    colours_by = [colours[r["store"]] if r["what"] == "FeatureConsumer" else
                  ("#76b900" if r["client"] == "confluent-kafka" else "#999999") for r in rows]
    bars = right.barh(range(len(rows)), [r["events_per_s"] for r in rows], color=colours_by)
    right.bar_label(bars, labels=[f" {r['events_per_s']:,}" for r in rows], fontsize=7)
    right.axvline(THROUGHPUT_TARGET, color="#888888", lw=1, ls="-.",
                  label=f"{THROUGHPUT_TARGET:,} ev/s target")
    right.set_yticks(range(len(rows)), labels, fontsize=7.5)
    right.set(xscale="log", xlabel="events/s, one process",
              title=f"throughput over {report['config']['throughput_events']:,} pre-filled events")
    right.set_xlim(right=max(r["events_per_s"] for r in rows) * 4)
    right.legend(fontsize=7, loc="lower right")
    right.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "features.png", dpi=120)
    plt.close(fig)


def tables(report: dict) -> str:
    """The results as markdown tables, for the README / issue."""
    lines = ["| store | rate ev/s (achieved) | p50 ms | p95 ms | p99 ms | max ms | ack p50 / p99 ms | "
             "consumer CPU |", "|---|---|---|---|---|---|---|---|"]
    for r in report["freshness"]:
        if "p99_ms" not in r:
            lines.append(f"| {r['store']} | {r['target_rate']:,} | failed: {'; '.join(r['problems'])} ||||||")
            continue
        lines.append(f"| {r['store']} | {r['target_rate']:,} ({r['achieved_rate']:,.0f}) | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['ack_p50_ms']:.1f} / {r['ack_p99_ms']:.1f} | {r['consumer_cpu_util']:.0%} |")
    lines += ["", "| what | client | store / stage | events/s | CPU | CPU µs/event | Redis server |",
              "|---|---|---|---|---|---|---|"]
    for r in report["throughput"]:
        eps = f"{r['events_per_s']:,}" if r.get("events_per_s") else f"failed: {'; '.join(r['problems'])}"
        cpu = f"{r['cpu_util']:.0%}" if r.get("cpu_util") is not None else ""
        what = r["store"] if r["stage"] == "full" else r["stage"]
        server = r.get("redis_server")
        server = (f"{server['usec_per_evalsha']} µs/event, {server['server_cpu_s']} CPU s" if server else "")
        per_event = r.get("cpu_us_per_event") or ""
        lines.append(f"| {r['what']} | {r['client']} | {what} | {eps} | {cpu} | {per_event} | {server} |")
    return "\n".join(lines)


def targets(report: dict) -> dict:
    at_rate = {r["store"]: r.get("p99_ms") for r in report["freshness"]
               if r["target_rate"] == FRESHNESS_TARGET_RATE}
    per_process = {r["store"]: r.get("events_per_s") for r in report["throughput"]
                   if r["what"] == "FeatureConsumer"}
    return {
        f"freshness_p99_ms_at_{FRESHNESS_TARGET_RATE}": at_rate,
        "freshness_met": {s: v is not None and v <= FRESHNESS_TARGET_MS for s, v in at_rate.items()},
        "throughput_events_per_s": per_process,
        "throughput_met": {s: v is not None and v >= THROUGHPUT_TARGET for s, v in per_process.items()},
    }


def run_all(args: argparse.Namespace, bench: Bench) -> tuple[list[dict], list[dict], dict, dict]:
    """Throughput first: its pre-fill and replay also warm up the freshly started broker's JIT,
    which otherwise inflates the first freshness runs."""
    freshness, throughput, prefill_info, profiles = [], [], {}, {}
    n = max(args.throughput_events, args.profile_events)
    topic = None
    if n:
        topic, prefill_info = bench.prefill(n)
    if args.throughput_events:
        for store in args.stores:
            row = bench.throughput(store, topic, args.throughput_events)
            throughput.append(row)
            print(f"  FeatureConsumer {store}: {row.get('events_per_s')} ev/s "
                  f"{'ok' if row['ok'] else row['problems']}", flush=True)
        for client in args.clients:
            for row in bench.raw(client, topic, min(args.raw_events, args.throughput_events)):
                throughput.append(row)
                print(f"  raw {client} {row['stage']}: {row.get('events_per_s')} ev/s "
                      f"{'ok' if row['ok'] else row['problems']}", flush=True)
    if args.profile_events:
        for store in args.stores:
            profiles[store] = bench.profile(store, topic, args.profile_events)
            print(f"  profile {store}: {profiles[store]}", flush=True)
    runs = [(store, rate) for store in args.stores for rate in args.rates]
    for store, rate in tqdm(runs, desc="freshness runs", unit="run"):
        row = bench.freshness(store, rate)
        freshness.append(row)
        tqdm.write(f"  {store:>6} @ {rate:>5} ev/s: p50 {row.get('p50_ms')}  p95 {row.get('p95_ms')}  "
                   f"p99 {row.get('p99_ms')}  max {row.get('max_ms')} ms  "
                   f"achieved {row['achieved_rate']} ev/s  {'ok' if row['ok'] else row['problems']}")
    return freshness, throughput, prefill_info, profiles


def main(argv: list[str] | None = None) -> int:
    from stack.kafka import KafkaBroker
    from stack.redis import RedisServer

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    _quiet_logging()
    started, load_at_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp_name:
        tmp = Path(tmp_name)
        print("starting Kafka and Redis ...", flush=True)
        with KafkaBroker(tmp / "kafka") as broker, \
                RedisServer(log_path=tmp / "redis" / "redis.log", persistent=True) as redis_server:
            bench = Bench(args, tmp, broker.bootstrap_servers, redis_server.url)
            try:
                freshness, throughput, prefill_info, profiles = run_all(args, bench)
            finally:
                bench.close()
    report = {
        "config": {"rates": args.rates, "duration_s": args.duration_s, "warmup_s": args.warmup_s,
                   "stores": args.stores, "partitions": args.partitions, "users": args.users,
                   "items": args.items, "event_mix": EVENT_MIX, "user_zipf": USER_ZIPF,
                   "item_zipf": ITEM_ZIPF,
                   "categories_per_item": "1-3 of 19", "throughput_events": args.throughput_events,
                   "clients": args.clients, "raw_stages": args.raw_stages, "seed": args.seed,
                   "quick": args.quick,
                   "producer": "kafka-python acks=all, enable_idempotence, linger_ms=1, key=user_id",
                   "redis": "persistent: appendonly yes, appendfsync always",
                   "targets": {"freshness_p99_ms": FRESHNESS_TARGET_MS, "at_rate": FRESHNESS_TARGET_RATE,
                               "throughput_events_per_s": THROUGHPUT_TARGET}},
        "environment": {**environment(), "load_average_1m_at_start": load_at_start},
        "freshness": freshness, "throughput": throughput, "prefill": prefill_info, "profiles": profiles,
        "total_s": round(time.perf_counter() - started, 1),
        "ok": all(r["ok"] for r in freshness + throughput),
    }
    report["targets"] = targets(report)
    write_outputs(args.out, report)
    print("\n" + tables(report))
    print(f"\ntargets: {json.dumps(report['targets'])}")
    print(f"pre-fill producer: {prefill_info}; total {report['total_s']:.0f} s")
    print(f"wrote {args.out}/features.json, features_freshness.csv, features_throughput.csv, features.png")
    if not report["ok"]:
        print("FAILED: a run missed events or errored (see 'problems' in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
