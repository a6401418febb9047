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
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from perf import features_report  # noqa: E402
from perf.features_consumers import quiet_logging  # noqa: E402
from perf.features_runs import Bench  # noqa: E402
from perf.features_workload import EVENT_MIX, ITEM_ZIPF, USER_ZIPF  # noqa: E402
from perf.harness import environment, finish  # noqa: E402

# Raw loops: fetch only (kafka-python also without its CRC check: librdkafka does not check CRCs
# by default), + parse_event, + InMemoryStore.apply_many.
RAW_STAGES = ("fetch", "fetch-nocrc", "parse", "apply")
CLIENTS = ("kafka-python", "confluent-kafka")


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


def client_versions() -> dict:
    """The Kafka and Redis clients and server, with the optional C extensions they found."""
    import kafka
    import redis
    from kafka.record import util as record_util

    env = {"kafka_python": kafka.__version__, "redis_py": redis.__version__,
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
    quiet_logging()
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
                   "targets": {"freshness_p99_ms": features_report.FRESHNESS_TARGET_MS,
                               "at_rate": features_report.FRESHNESS_TARGET_RATE,
                               "throughput_events_per_s": features_report.THROUGHPUT_TARGET}},
        "environment": environment(**client_versions(), load_average_1m_at_start=load_at_start),
        "freshness": freshness, "throughput": throughput, "prefill": prefill_info, "profiles": profiles,
        "total_s": round(time.perf_counter() - started, 1),
        "ok": all(r["ok"] for r in freshness + throughput),
    }
    report["targets"] = features_report.targets(report)
    features_report.write_outputs(args.out, report)
    print("\n" + features_report.tables(report))
    print(f"\ntargets: {json.dumps(report['targets'])}")
    print(f"pre-fill producer: {prefill_info}; total {report['total_s']:.0f} s")
    problems = [] if report["ok"] else ["a run missed events or errored (see 'problems' in the JSON)"]
    return finish(f"{args.out}/features.json, features_freshness.csv, features_throughput.csv, features.png",
                  problems)


if __name__ == "__main__":
    sys.exit(main())
