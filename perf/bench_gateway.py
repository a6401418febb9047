"""Gateway under load: open-loop HTTP load at fixed rates, gateway vs Triton direct, feed vs
similar items.

    PYTHONPATH=. .venv/bin/python perf/bench_gateway.py --model-repository model_repository \\
        --artifacts build --out perf/results
    PYTHONPATH=. .venv/bin/python perf/bench_gateway.py --quick      # ~1-2 min smoke run

1. Uses the exported repository and user snapshot given by ``--model-repository`` /
   ``--artifacts`` (``make train`` or ``make demo`` writes ``model_repository/`` and ``build/``),
   or trains briefly and exports into a temporary folder (``python -m export`` in a subprocess, so
   torch stays out of the load generator's process).
2. Starts Triton, Kafka and the gateway (in-process feature store seeded from the snapshot,
   embedded consumer) unless ``--gateway-url`` / ``--triton-grpc-url`` name running ones.
3. For each rate in ``--rates``: one gateway run (``GET /v1/users/{user}/recommendations?k=10``)
   and one Triton-direct run (the gateway's model, ``recommend_fused`` by default, over
   ``tritonclient.grpc.aio``, with the inputs the gateway would build for the same user), at the
   same rate with the same sequence of random snapshot users; and (``--targets ... similar``) one
   similar-items run (``GET /v1/items/{item}/similar?k=10``) with the same send times, for items
   drawn from the served catalog (seeded: the same items at every repeat of a rate).

Open loop: request i is due at ``t0 + i / rate`` (or Poisson arrivals) and is sent then whether or
not earlier ones have answered, so a slow server cannot slow the generator down (no coordinated
omission). Latency is measured from the *scheduled* time to the response; the latency from the
actual send and the send lag (actual - scheduled: the generator's own delay) are reported too. The
first ``--warmup-s`` seconds of each run are discarded. Errors: non-200 responses, timeouts
(``--timeout-s``), connection errors, bodies that are not a recommendation list; latency
percentiles are over the successful (200) responses. Responses flagged ``degraded`` (Triton failed,
popular items were served) are counted separately: they are fast and not the path under test.

Per run the script also records CPU time (cores busy) of the generator, the gateway, Triton (with
its python-backend stubs), Kafka and the rest of the machine (from /proc; services it started
only), Triton's own per-request time (inference statistics) and, best effort, the gateway's
in-app time from its ``/metrics`` histogram.

Writes under ``--out``: ``gateway_load.csv`` (one row per target and rate), ``gateway_load.json``
(config, environment, runs, target checks: the feed's p99 at 200 req/s, its p50 against Triton
direct's, similar items' p99 against the feed's), ``gateway_load.png`` (latency percentiles vs
rate per target, the two ratios) and the service logs in ``gateway_load_logs/``. Exits 1 if a run got no
successful response or the gateway's sanity request failed; missed latency targets are reported,
not failures. Every service it started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features import contract as sig  # noqa: E402
from features.model_inputs import ModelInputs, build_inputs  # noqa: E402
from gateway.served_model import load_served_model  # noqa: E402
from perf import gateway_report  # noqa: E402
from perf.cpu_accounting import CpuProbe  # noqa: E402
from perf.gateway_targets import GatewayTarget, SimilarTarget, TritonTarget  # noqa: E402
from perf.harness import SNAPSHOT_FILE, environment, export_fresh, finish, write_csv, write_json  # noqa: E402
from perf.input_data import snapshot_steps  # noqa: E402
from perf.load_generator import RunSpec, make_schedule, open_loop, summarize_run  # noqa: E402
from perf.server_stats import (  # noqa: E402
    GATEWAY_HISTOGRAMS,
    gateway_histograms,
    per_request_ms,
    triton_stats,
)

EVENTS_TOPIC = "user-events"
TARGETS = ("gateway", "triton", "similar")
HTTP_TARGETS = {"gateway": GatewayTarget, "similar": SimilarTarget}  # served by the gateway
HISTORY_ITEMS = 100  # the feature store's recent events per user (FeatureRules.history_items)


def request_inputs(steps: Sequence[str], catalog, sequence_length: int, k: int) -> ModelInputs:
    """What the gateway sends Triton for a user whose store was seeded with ``steps`` (a user of
    ``perf.input_data.snapshot_steps``): the store keeps the last HISTORY_ITEMS events as history,
    with their types, and every item as seen (excluded)."""
    return build_inputs(list(steps[-HISTORY_ITEMS:]), catalog, sequence_length, k, exclude=steps)


def sample_items(item_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """The items similar-items requests ask about: ``n`` of the catalog (0: all of it), drawn with
    ``seed`` and sorted, so that a repeat of the benchmark asks about the same items."""
    ids = sorted(item_ids, key=lambda i: (len(i), i))
    if not 0 < n < len(ids):
        return ids
    picks = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return [ids[i] for i in sorted(picks)]


def schedules(rate: float, args: argparse.Namespace, users: Sequence[str],
              items: Sequence[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per target, the send offsets and each request's key (a user, or an item for ``similar``).
    All targets get the same offsets: the similar picks come from a second generator with the same
    seed, whose offsets (drawn before the picks) are the same numbers."""
    seed = args.seed + int(rate)
    offsets, picked = make_schedule(rate, args.duration_s, args.warmup_s, users, seed, args.arrivals)
    out = {t: (offsets, picked) for t in ("gateway", "triton")}
    if items:
        item_offsets, item_picks = make_schedule(rate, args.duration_s, args.warmup_s, items, seed,
                                                 args.arrivals)
        assert np.array_equal(item_offsets, offsets)
        out["similar"] = (offsets, item_picks)
    return out


async def measure(target, spec: RunSpec, probe: CpuProbe, triton_url: str | None,
                  triton_model: str, gateway_url: str | None, progress: bool) -> dict:
    """One run plus the server-side numbers around it."""
    t_before = await triton_stats(triton_url, triton_model) if triton_url else None
    g_before = await asyncio.to_thread(gateway_histograms, gateway_url) if gateway_url else None
    await target.open()
    try:
        raw = await open_loop(target, spec, probe, progress)
    finally:
        await target.close()
    t_after = await triton_stats(triton_url, triton_model) if triton_url else None
    g_after = await asyncio.to_thread(gateway_histograms, gateway_url) if gateway_url else None
    row = summarize_run(spec, raw)
    # Whole run (warm-up included): these are means per request, not percentiles.
    row["triton_server_ms"] = per_request_ms(t_before, t_after)
    row["triton_queue_ms"] = per_request_ms(t_before, t_after, "queue_ns")
    row["triton_compute_ms"] = per_request_ms(t_before, t_after, "compute_ns")
    for key in GATEWAY_HISTOGRAMS:
        row[f"gateway_{key}_ms"] = (per_request_ms(g_before[key], g_after[key])
                                    if g_before and g_after else None)
    row["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return row


@dataclass
class Stack:
    gateway_url: str | None
    triton_grpc_url: str | None
    pids: dict[str, int | None]
    started: dict[str, float]  # service -> seconds to ready (the ones this script started)


def start_stack(args: argparse.Namespace, repository: Path, histories: Path,
                stack: contextlib.ExitStack, work: Path, log_dir: Path) -> Stack:
    from stack.gateway import GatewayProcess
    from stack.kafka import KafkaBroker
    from stack.triton import TritonServer

    pids: dict[str, int | None] = {}
    started: dict[str, float] = {}
    triton_url = args.triton_grpc_url
    start_gateway = args.gateway_url is None and bool(HTTP_TARGETS.keys() & set(args.targets))
    if triton_url is None and (start_gateway or "triton" in args.targets):
        print("starting Triton ...", flush=True)
        triton = stack.enter_context(TritonServer(repository, log_path=log_dir / "tritonserver.log"))
        triton_url, pids["triton"], started["triton"] = triton.grpc_url, triton.pid, triton.ready_after_s
    gateway_url = args.gateway_url
    if start_gateway:
        print("starting Kafka ...", flush=True)
        kafka = stack.enter_context(KafkaBroker(work / "kafka"))
        kafka.create_topics([EVENTS_TOPIC, f"{EVENTS_TOPIC}.dlq"], partitions=3)
        pids["kafka"], started["kafka"] = kafka.pid, kafka.ready_after_s
        settings = {
            "triton_grpc_url": triton_url,
            "triton_model": args.triton_model,
            "kafka_bootstrap_servers": kafka.bootstrap_servers,
            "events_topic": EVENTS_TOPIC,
            "model_repository": str(repository),
            "snapshot_path": str(histories),
            "store": "memory",
            "embedded_consumer": "true",
        }
        print("starting the gateway ...", flush=True)
        gateway = stack.enter_context(GatewayProcess(settings, log_path=log_dir / "gateway.log"))
        gateway_url, pids["gateway"], started["gateway"] = gateway.url, gateway.pid, gateway.ready_after_s
    return Stack(gateway_url, triton_url, pids, {k: round(v, 1) for k, v in started.items() if v})


def sanity_check(gateway_url: str, key: str, k: int, target: str = "gateway") -> str | None:
    """One request (for a known user, or a catalog item) must be a model answer with k items. A
    501 from similar items: the repository predates the ``similar_items`` model."""
    url = f"{gateway_url}{HTTP_TARGETS[target].path.format(key=key)}?k={k}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except OSError as exc:
        return f"{target} sanity request failed: {exc}"
    if body.get("degraded") or body.get("source") != "model" or len(body.get("items", [])) != k:
        return (f"{target} sanity request for {key}: source {body.get('source')}, degraded "
                f"{body.get('degraded')}, {len(body.get('items', []))} items (expected a model "
                f"answer with {k})")
    return None


def load_users(args: argparse.Namespace, repository: Path,
               histories_path: Path) -> tuple[list[str], dict[str, ModelInputs], list[str]]:
    """The snapshot's users with a history (in a stable order), each one's Triton request, and
    the catalog items similar-items requests ask about."""
    histories = snapshot_steps(json.loads(histories_path.read_text()))
    served = load_served_model(repository)
    users = sorted((u for u, items in histories.items() if items), key=lambda u: (len(u), u))
    if args.users:
        users = users[:args.users]
    inputs = {u: request_inputs(histories[u], served.catalog, served.sequence_length, args.k)
              for u in users}
    items = (sample_items([i.item_id for i in served.catalog.items], args.items, args.seed)
             if "similar" in args.targets else [])
    print(f"{len(users)} users from {histories_path}; model v{served.version}, "
          f"L={served.sequence_length}, {served.catalog.num_items} items"
          + (f", {len(items)} of them for similar items" if items else ""), flush=True)
    return users, inputs, items


def run_rates(args: argparse.Namespace, services: Stack, targets: list[str], users: list[str],
              inputs: dict[str, ModelInputs], items: list[str], problems: list[str],
              warnings: list[str]) -> list[dict]:
    """Per rate, one open-loop run per target, one after another (the same machine state for
    each), with the same send times (and for the feed and Triton the same users); the rows."""
    rows = []
    probe = CpuProbe.of(services.pids)
    # With services started elsewhere their CPU is in "other".
    services_known = not (args.gateway_url or args.triton_grpc_url)
    print(f"\nopen-loop runs: {args.warmup_s:g} s warm-up + {args.duration_s:g} s measured, "
          f"{args.arrivals} arrivals, k={args.k}, client {args.client}", flush=True)
    for rate in args.rates:
        per_target = schedules(rate, args, users, items)
        for name in targets:
            spec = RunSpec(name, rate, args.duration_s, args.warmup_s, args.arrivals, *per_target[name])
            if name in HTTP_TARGETS:
                target = HTTP_TARGETS[name](services.gateway_url, args.k, args.timeout_s,
                                            args.max_connections, args.client)
            else:
                target = TritonTarget(services.triton_grpc_url, args.triton_model, inputs, args.timeout_s)
            gateway_url = services.gateway_url if name in HTTP_TARGETS else None
            # Triton's statistics of the model this path calls
            model = sig.SIMILAR_ITEMS if name == "similar" else args.triton_model
            row = asyncio.run(measure(target, spec, probe, services.triton_grpc_url,
                                      model, gateway_url, not args.no_progress))
            gateway_report.print_row(row)
            rows.append(row)
            if row["ok"] == 0:
                problems.append(f"{name} at {rate:g} req/s: no successful response "
                                f"({row['error_kinds']})")
            for warning in gateway_report.run_warnings(row, services_known):
                print(f"    warning: {warning}", flush=True)
                warnings.append(warning)
            time.sleep(args.pause_s)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out
    log_dir = out / "gateway_load_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    problems: list[str] = []
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if args.model_repository is None:
            repository, artifacts = export_fresh(work, args.epochs, log_dir / "export.log")
        else:
            repository, artifacts = args.model_repository.resolve(), args.artifacts.resolve()
        histories_path = artifacts / SNAPSHOT_FILE
        users, inputs, items = load_users(args, repository, histories_path)

        services = start_stack(args, repository, histories_path, stack, work, log_dir)
        if services.started:
            print("ready after " + ", ".join(f"{k} {v} s" for k, v in services.started.items()), flush=True)
        targets = [t for t in args.targets if (t in HTTP_TARGETS and services.gateway_url)
                   or (t == "triton" and services.triton_grpc_url)]
        for name, key in (("gateway", users[0]), ("similar", items[0] if items else "")):
            problem = sanity_check(services.gateway_url, key, args.k, name) if name in targets else None
            if problem:
                problems.append(problem)
                targets = [t for t in targets if t != name]
                print(f"FAILED: {problem}", file=sys.stderr)
        rows = run_rates(args, services, targets, users, inputs, items, problems, warnings)

    checks = gateway_report.target_checks(rows)
    report = {
        "config": {"rates": args.rates, "duration_s": args.duration_s, "warmup_s": args.warmup_s,
                   "arrivals": args.arrivals, "k": args.k, "timeout_s": args.timeout_s,
                   "client": args.client, "max_connections": args.max_connections,
                   "triton_model": args.triton_model, "users": len(users), "seed": args.seed,
                   "similar_items_asked": len(items),
                   "repository": str(args.model_repository or f"fresh export, {args.epochs} epoch(s)"),
                   "gateway": args.gateway_url or "started by the script (memory store, embedded consumer)",
                   "triton": args.triton_grpc_url or "started by the script",
                   "seconds": round(time.perf_counter() - started)},
        "environment": environment(services_ready_after_s=services.started),
        "runs": rows,
        "targets": checks,
        "warnings": warnings,
        "problems": problems,
        "ok": not problems,
    }
    write_csv(out / "gateway_load.csv", gateway_report.CSV_COLUMNS, rows)
    write_json(out / "gateway_load.json", report)
    if rows:
        gateway_report.plot(out / "gateway_load.png", rows,
                     f"open loop, {args.duration_s:g} s per point, {args.arrivals} arrivals, k={args.k}, "
                     f"{os.cpu_count()} CPUs shared by generator, gateway, Triton and Kafka")
    gateway_report.print_checks(checks)
    return finish(f"{out}/gateway_load.csv, gateway_load.json, gateway_load.png", problems,
                  report["config"]["seconds"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("perf/results"))
    p.add_argument("--rates", type=float, nargs="+", default=[100, 200, 400], help="req/s")
    p.add_argument("--duration-s", type=float, default=20, help="measured seconds per run")
    p.add_argument("--warmup-s", type=float, default=3, help="discarded seconds before each run")
    p.add_argument("--pause-s", type=float, default=1, help="idle seconds between runs")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 5 s per run, 1 s warm-up, 1 training epoch if training")
    p.add_argument("--arrivals", choices=["uniform", "poisson"], default="uniform",
                   help="uniform: request i at t0 + i/rate; poisson: exponential gaps")
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--timeout-s", type=float, default=2.0, help="per-request timeout (an error)")
    p.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                   help="HTTP client of the generator (aiohttp costs less CPU per request)")
    p.add_argument("--max-connections", type=int, default=256, help="HTTP keep-alive pool size")
    p.add_argument("--users", type=int, default=0, help="use only the first N snapshot users (0: all)")
    p.add_argument("--items", type=int, default=0,
                   help="similar items: ask about N catalog items drawn with --seed (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-repository", type=Path, default=None,
                   help="exported repository to serve (default: train and export into a temp dir)")
    p.add_argument("--artifacts", type=Path, default=None,
                   help=f"the export's artifacts folder with {SNAPSHOT_FILE} (with --model-repository)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the fresh export")
    p.add_argument("--triton-model", default=sig.RECOMMEND_FUSED,
                   help="the model the gateway calls (RECSYS_GATEWAY_TRITON_MODEL)")
    p.add_argument("--gateway-url", default=None, help="use this running gateway (http://host:port)")
    p.add_argument("--triton-grpc-url", default=None, help="use this running Triton (host:port)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = p.parse_args(argv)
    if args.quick:
        args.duration_s, args.warmup_s, args.pause_s = 5.0, 1.0, 0.5
        args.epochs = min(args.epochs, 1)
    if (args.model_repository is None) != (args.artifacts is None):
        p.error("--model-repository and --artifacts go together")
    if (args.gateway_url or args.triton_grpc_url) and args.model_repository is None:
        p.error("with --gateway-url/--triton-grpc-url pass the --model-repository and --artifacts "
                "the running services use")
    args.targets = list(dict.fromkeys(args.targets))
    if args.gateway_url and not args.triton_grpc_url and "triton" in args.targets:
        print("note: --gateway-url without --triton-grpc-url: no Triton-direct runs", file=sys.stderr)
        args.targets = [t for t in args.targets if t != "triton"]
    if any(r <= 0 for r in args.rates):
        p.error("--rates must be positive")
    args.rates = [int(r) if float(r).is_integer() else r for r in args.rates]
    return args


if __name__ == "__main__":
    sys.exit(main())
