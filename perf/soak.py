"""Soak test: the whole stack for a long while under steady load, with a broker restart and a Redis
restart in the middle, then checked end to end (`make soak`, not part of `make test`).

Triton, Kafka, Redis (append-only file, so a restart keeps the data), one feature-service consumer
and the gateway (both on the Redis store) run as processes. For ``--duration-s`` the gateway gets
GET recommendations at ``--request-rate`` and event slots at ``--event-rate`` (1 % malformed: half
bad requests to the gateway, half garbage written straight into the topic). Kafka is restarted at
1/3 of the run, Redis at 2/3. Afterwards: zero 5xx, every accepted event applied exactly once (the
store vs an oracle that applied each once), the dead-letter topic holds exactly the injected
garbage, RSS flat after warm-up, Redis memory per user vs the documented budget. Writes soak.json,
soak_samples.csv, soak_windows.csv and soak.png to ``--out``; exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from perf.harness import SNAPSHOT_FILE, environment, export_fresh
from perf.soak_report import (
    documented_budget,
    end_checks,
    print_summary,
    redis_key_families,
    wait_for_store,
    write_outputs,
)
from perf.soak_traffic import HttpLoad, KafkaGarbage, Sampler, redis_used_memory

TOPIC = "soak-events"
PREFIX = "soak"


def start_services(args: argparse.Namespace, stack: contextlib.ExitStack, repository: Path,
                   work: Path, logs: Path) -> dict:
    from stack.feature_service import FeatureServiceProcess
    from stack.gateway import GatewayProcess
    from stack.kafka import KafkaBroker
    from stack.redis import RedisServer
    from stack.triton import TritonServer

    print("starting Triton, Kafka, Redis ...", flush=True)
    triton = stack.enter_context(TritonServer(repository, log_path=logs / "tritonserver.log"))
    # A fixed heap, as in production: the broker's RSS slope then shows leaks, not heap growth.
    kafka = stack.enter_context(KafkaBroker(work / "kafka", fixed_heap=True))
    kafka.create_topics([TOPIC, f"{TOPIC}.dlq", f"{TOPIC}.recs"], partitions=3)
    redis = stack.enter_context(RedisServer(log_path=work / "redis" / "redis.log", persistent=True))
    from gateway.served_model import load_served_model

    served = load_served_model(repository)
    catalog_path = repository / "retrieve" / str(served.version) / "catalog.json"
    common = {"kafka_bootstrap_servers": kafka.bootstrap_servers, "events_topic": TOPIC,
              "store": "redis", "redis_url": redis.url, "redis_key_prefix": PREFIX}
    print("starting the feature service and the gateway ...", flush=True)
    features = stack.enter_context(FeatureServiceProcess(
        {**common, "group_id": "soak-features", "catalog_path": str(catalog_path),
         "create_topics": "false"}, log_path=logs / "feature_service.log"))
    gateway = stack.enter_context(GatewayProcess(
        {**common, "triton_grpc_url": triton.grpc_url, "model_repository": str(repository),
         "recommendations_topic": f"{TOPIC}.recs", "consumer_group": "soak-gateway",
         "embedded_consumer": "false", "snapshot_path": "",
         **({"request_deadline_ms": args.request_deadline_ms} if args.request_deadline_ms else {}),
         **({"kafka_timeout_ms": args.gateway_kafka_timeout_ms} if args.gateway_kafka_timeout_ms else {})},
        grpc_port=0, log_path=logs / "gateway.log"))
    return {"triton": triton, "kafka": kafka, "redis": redis, "features": features,
            "gateway": gateway, "served": served}


def restart(service, name: str, down_s: float, t0: float) -> dict:
    """Stop ``service``, leave it down ``down_s``, start it on the same ports and data."""
    at = time.monotonic() - t0
    print(f"[{at:6.1f} s] restarting {name} ...", flush=True)
    service.stop()
    stopped = time.monotonic() - t0
    time.sleep(down_s)
    started = time.monotonic() - t0
    service.start()
    ready = time.monotonic() - t0
    print(f"[{ready:6.1f} s] {name} back: stop took {stopped - at:.1f} s, down {ready - at:.1f} s "
          f"in all (start to ready {ready - started:.1f} s)", flush=True)
    return {"service": name, "stop_at_s": round(at, 2), "stopped_at_s": round(stopped, 2),
            "start_at_s": round(started, 2), "ready_at_s": round(ready, 2),
            "unavailable_s": round(ready - at, 2)}


def drive(args: argparse.Namespace, services: dict, users: list[str], items: list[str]) -> dict:
    """The load, the restarts and the samples, for ``args.duration_s``."""
    kafka, redis, gateway = services["kafka"], services["redis"], services["gateway"]
    t0 = time.monotonic() + 0.5
    garbage = KafkaGarbage(kafka.bootstrap_servers, TOPIC)
    load = HttpLoad(gateway.url, users, items, request_rate=args.request_rate,
                    event_rate=args.event_rate, duration_s=args.duration_s, t0=t0,
                    run_id=uuid.uuid4().hex[:8], seed=args.seed, inject_kafka=garbage.inject,
                    timeout_s=args.timeout_s, retry_for_s=args.retry_for_s)
    pids = {name: (lambda s=services[name]: s.pid)
            for name in ("gateway", "features", "triton", "kafka", "redis")}
    sampler = Sampler(pids, redis.port, gateway.url, t0, args.sample_s)
    for thread in (garbage, sampler, load):
        thread.start()
    restarts = []
    # From this (the main) thread: a process started from a short-lived thread is signalled
    # (PR_SET_PDEATHSIG) when that thread ends.
    order = [] if args.no_restarts else args.restart_order.split(",")
    for n, name in enumerate(order, 1):  # evenly spread: 1/3 and 2/3 of the run for two
        time.sleep(max(0.0, t0 + args.duration_s * n / (len(order) + 1) - time.monotonic()))
        restarts.append(restart(services[name], name, args.down_s, t0))
    while load.is_alive() and time.monotonic() < t0 + args.duration_s:
        time.sleep(1)
    print(f"[{time.monotonic() - t0:6.1f} s] load done; waiting for re-sends ...", flush=True)
    sampler.stop.set()
    sampler.join()
    load.join(args.retry_for_s + args.timeout_s + 30)
    garbage.finish()
    for thread in (load, garbage):
        if thread.error is not None:
            raise thread.error
    return {"t0": t0, "traffic": load.traffic, "garbage": garbage, "samples": sampler.rows,
            "restarts": restarts, "ended_at_s": round(time.monotonic() - t0, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.warmup_s is None:
        args.warmup_s = 0.2 * args.duration_s
    if args.settle_s is None:
        args.settle_s = args.warmup_s
    began = time.perf_counter()
    out: Path = args.out
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if args.model_repository is None:
            repository, _ = export_fresh(work, args.epochs, logs / "export.log")
        else:
            repository = args.model_repository.resolve()
        services = start_services(args, stack, repository, work, logs)
        served = services["served"]
        users = [f"soak-u{i}" for i in range(args.users)]
        items = list(served.catalog.categories_by_item())
        baseline = redis_used_memory(services["redis"].port) or 0
        ready = {k: round(s.ready_after_s, 1) for k, s in services.items() if hasattr(s, "ready_after_s")}
        print(f"ready after {ready}; driving {args.duration_s:g} s: {args.request_rate:g} GET/s, "
              f"{args.event_rate:g} event slots/s, {len(users)} users", flush=True)
        run = drive(args, services, users, items)
        print("waiting for the consumer to catch up ...", flush=True)
        from feature_service.config import FeatureServiceSettings
        from feature_service.store import create_store

        # The consumer's rules: its defaults, or RECSYS_FEATURES_* of this environment (inherited).
        rules = FeatureServiceSettings().rules()
        categories = served.catalog.categories_by_item()
        store = create_store("redis", rules, redis_url=services["redis"].url, prefix=PREFIX,
                             item_categories=categories)
        caught_up = wait_for_store(store, run["traffic"], users, args.catchup_timeout_s)
        alive = {name: services[name].running for name in ("gateway", "features", "triton", "kafka", "redis")}
        families = redis_key_families(services["redis"].port, PREFIX)
        used = redis_used_memory(services["redis"].port)
        report = end_checks(args, run, store, rules, categories, users,
                            services["kafka"].bootstrap_servers, TOPIC, caught_up=caught_up,
                            alive=alive, baseline_bytes=baseline,
                            used_bytes=used, budget=documented_budget())
        report["redis_key_families"] = families
        store.close()
        for src, dst in ((work / "kafka" / "broker.log", "kafka.log"),
                         (services["redis"].log_path, "redis.log")):
            with contextlib.suppress(OSError):
                shutil.copy(src, logs / dst)
    report["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report["config"]["seconds"] = round(time.perf_counter() - began)
    report["environment"] = environment(services_ready_after_s=ready,
                                        snapshot=f"none (users soak-u*, no {SNAPSHOT_FILE})")
    write_outputs(out, report, run)
    return print_summary(report, out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=600, help="seconds of load (default 600)")
    p.add_argument("--request-rate", type=float, default=30, help="GET recommendations per s")
    p.add_argument("--event-rate", type=float, default=20, help="event slots per s (1 %% malformed)")
    p.add_argument("--users", type=int, default=2000, help="distinct users of requests and events")
    p.add_argument("--sample-s", type=float, default=2, help="RSS / Redis memory / readyz period")
    p.add_argument("--warmup-s", type=float, default=None, help="default 20 %% of the run")
    # A restarted process is a new one: it gets the warm-up a process gets at the start (a JVM's
    # RSS rises ~20-30 MiB over its first minute: JIT, metaspace, mapped index files).
    p.add_argument("--settle-s", type=float, default=None,
                   help="samples left out of a restarted process's RSS fit after its restart "
                        "(default: the warm-up)")
    p.add_argument("--max-rss-slope-mib-h", type=float, default=60,
                   help="an RSS slope above this after warm-up is a failure (MiB/hour)")
    p.add_argument("--down-s", type=float, default=3, help="how long a restarted service stays down")
    p.add_argument("--no-restarts", action="store_true", help="no broker and Redis restarts")
    p.add_argument("--restart-order", default="kafka,redis", choices=["kafka,redis", "redis,kafka"],
                   help="which service restarts at 1/3 of the run and which at 2/3")
    p.add_argument("--timeout-s", type=float, default=30, help="client timeout per request")
    # A single broker's restart (stop, down, JVM start) took 8-13 s on the 2-core test box, longer
    # than the gateway's default 5 s wait for an acknowledgement: an event POST during it answers
    # 503 (honest, with ids to retry with). Riding out a restart with zero 5xx takes a wait longer
    # than the restart: what an operator sets for that SLO. 0: the gateway's default.
    p.add_argument("--gateway-kafka-timeout-ms", type=int, default=20_000,
                   help="RECSYS_GATEWAY_KAFKA_TIMEOUT_MS of the gateway under test (0: its default)")
    p.add_argument("--retry-for-s", type=float, default=60,
                   help="re-send 5xx'd events (same event_id) until this long after the load")
    p.add_argument("--catchup-timeout-s", type=float, default=180)
    p.add_argument("--request-deadline-ms", type=int, default=0,
                   help="the gateway's request deadline (0: its default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1, help="training epochs of the fresh export")
    p.add_argument("--model-repository", type=Path, default=None,
                   help="an exported repository to serve (default: train and export one)")
    p.add_argument("--out", type=Path, default=Path("perf/results/soak"))
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
