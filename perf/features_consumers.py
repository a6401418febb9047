"""Consumers under test, each in its own spawned process (as deployed): a ``FeatureConsumer``
recording every applied event's freshness, and bare Kafka consume loops per client (fetch only,
+ ``parse_event``, + ``InMemoryStore.apply_many``) to see where the time goes without the rest of
``FeatureConsumer``. Results come back through files named in the spec."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import threading
import time
import uuid
from array import array
from pathlib import Path

import numpy as np

from perf.features_workload import item_categories

# Consumer settings shared by every run (the service's defaults otherwise).
POLL_TIMEOUT_MS = 100


def quiet_logging() -> None:
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

    quiet_logging()
    settings = FeatureServiceSettings(
        kafka_bootstrap_servers=spec["bootstrap"], events_topic=spec["topic"], group_id=spec["group"],
        store=spec["store"], redis_url=spec["redis_url"], redis_key_prefix=spec["prefix"],
        topic_partitions=spec["partitions"], create_topics=False, poll_timeout_ms=POLL_TIMEOUT_MS,
    )
    store = create_store(settings.store, settings.rules(), redis_url=settings.redis_url,
                         prefix=settings.redis_key_prefix,
                         item_categories=item_categories(spec["items"], spec["seed"]))
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

    quiet_logging()
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
