"""Refresh benchmark: one refresh cycle over N new events read from a real local Kafka.

    python perf/bench_refresh.py --events 100000 300000 1000000 --out perf/results/refresh

Once: a synthetic shop (``--users`` users, ``--items`` items, 30 days) is the live version's
data; the live model is an untrained model of the default architecture on its catalog (the cost
of a refresh does not depend on how good the live weights are), exported to a repository. Per N:
N new events of the same shop, the 14 days after, are produced to a fresh topic of a
``stack.kafka.KafkaBroker`` (timed apart, not part of the refresh), then one ``RefreshJob`` cycle
runs: read, merge, evaluate live, warm start + fine-tune (``--epochs``, no early stopping, so
every N trains the same number of epochs), evaluate the candidate, export + publish into the
repository (files only: the promote step's Triton load and checks are measured by
tests/integration/refresh, not here), commit. Margin 0, so every candidate that beats the
untrained live model is published.

Writes ``refresh.json`` and ``refresh.csv`` under ``--out`` and prints seconds per step and how
the total scales with N (the exponent of a power law through the runs). Exits 1 if a run
failed or the largest N took longer than ``--target-s`` (the issue's target: 1M events in
10 minutes on this 2-core CPU).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from export.data.synthetic import START_S, generate  # noqa: E402
from export.train import TrainConfig, new_model  # noqa: E402
from export.triton.repository import export_repository  # noqa: E402
from features.events import Event  # noqa: E402
from perf.harness import environment, finish, write_csv, write_json  # noqa: E402
from refresh.config import RefreshSettings  # noqa: E402
from refresh.job import RefreshJob  # noqa: E402
from refresh.publish import RolloutPublisher  # noqa: E402
from stack.kafka import KafkaBroker  # noqa: E402

DAY_S = 86_400
EVENTS_PER_USER = 25  # about what generate() makes per user with its defaults (checked below)
STEPS = ("read", "merge", "evaluate_live", "train", "evaluate_candidate", "publish", "commit")
CSV_COLUMNS = ["events", "members", "total_s", *[f"{s}_s" for s in STEPS], "produce_s", "window_interactions",
               "examples_per_epoch",
               "epochs", "train_s_per_epoch", "outcome", "rss_mb"]


class FilesOnlyPublisher(RolloutPublisher):
    """Publishes into the repository (Rollout.publish: files), promotes nothing (no Triton)."""

    def promote(self, version, shadow_histories, min_overlap) -> dict:
        return {"promote": "skipped by the benchmark"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, nargs="+", default=[100_000, 300_000])
    p.add_argument("--users", type=int, default=5_000, help="users of the live version's data")
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--epochs", type=int, default=RefreshSettings.model_fields["epochs"].default,
                   help="fine-tuning epochs per member per refresh (default: the refresh job's)")
    p.add_argument("--members", type=int, default=TrainConfig.members,
                   help="members of the live model (an ensemble's are fine-tuned one after another)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--target-s", type=float, default=600.0, help="limit for the largest N")
    p.add_argument("--out", type=Path, default=Path("perf/results/refresh"))
    return p.parse_args(argv)


def new_events(n: int, items: int, seed: int) -> list[Event]:
    """The first ``n`` events (in time order) of the shop's next 14 days."""
    data = generate(n_users=max(1, math.ceil(1.2 * n / EVENTS_PER_USER)), n_items=items,
                    n_categories=20, days=14, seed=seed, start_s=START_S + 30 * DAY_S)
    frame = data.interactions.sort_values(["timestamp", "user_id"], kind="stable").head(n)
    if len(frame) < n:
        raise SystemExit(f"the generator made {len(frame)} events, fewer than {n}")
    return [Event(event_id=f"b{i}", user_id=u, item_id=it, event_type=t, ts_ms=int(ts) * 1000)
            for i, (u, it, t, ts) in enumerate(zip(frame["user_id"], frame["item_id"],
                                                   frame["event_type"], frame["timestamp"], strict=True))]


def produce(bootstrap: str, topic: str, events: list[Event]) -> float:
    started = time.perf_counter()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50,
                             batch_size=512 * 1024, compression_type=None)
    for e in events:
        producer.send(topic, key=e.user_id.encode(), value=e.to_bytes())
    producer.flush(600)
    producer.close()
    return time.perf_counter() - started


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):  # the peak: what the run needed at most
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    problems: list[str] = []
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as d:
        work = Path(d)
        base = generate(n_users=args.users, n_items=args.items, n_categories=20, days=30, seed=0)
        base_file = work / "base.csv"
        base.interactions[["user_id", "item_id", "timestamp", "event_type", "value"]].to_csv(base_file,
                                                                                           index=False)
        catalog = base.to_dataset().catalog
        config = TrainConfig(members=args.members)
        torch.manual_seed(0)
        live = new_model(catalog, config).eval()
        checkpoint = work / "live.pt"
        torch.save({"model": live.state_dict(), "config": config.as_dict()}, checkpoint)
        export_repository(live, catalog, work / "repo0", sequence_length=config.sequence_length)
        print(f"live data: {len(base.interactions)} interactions, {catalog.num_items} items", flush=True)
        with KafkaBroker(work / "kafka", heap_mb=1024) as kafka:
            for n in sorted(args.events):
                topic = f"bench-{uuid.uuid4().hex[:8]}"
                kafka.create_topics([topic], partitions=3)
                events = new_events(n, args.items, seed=0)
                produce_s = produce(kafka.bootstrap_servers, topic, events)
                del events
                print(f"{n} events produced in {produce_s:.0f} s; refreshing ...", flush=True)
                repo = work / f"repo-{n}"
                shutil.copytree(work / "repo0", repo)
                settings = RefreshSettings(
                    kafka_bootstrap_servers=kafka.bootstrap_servers, events_topic=topic,
                    group_id=f"bench-{topic}", catalog_topic=None, repository=str(repo),
                    state_dir=str(work / f"state-{n}"), base_checkpoint=str(checkpoint),
                    base_data=str(base_file), window_days=60, margin=0.0, epochs=args.epochs,
                    patience=args.epochs, device=args.device, shadow_requests=0)
                job = RefreshJob(settings, publisher=FilesOnlyPublisher(repo, "unused"))
                try:
                    record = job.run_once()
                except Exception as exc:  # noqa: BLE001 - reported, the other sizes still run
                    problems.append(f"{n} events: {type(exc).__name__}: {exc}")
                    continue
                epochs = record.candidate.get("epochs", [])
                row = {"events": n, "members": args.members, "total_s": record.seconds,
                       "produce_s": round(produce_s, 1),
                       "epochs": len(epochs), "outcome": record.outcome, "rss_mb": round(rss_mb()),
                       "train_s_per_epoch": round(record.seconds_by_step.get("train", 0) /
                                                  max(1, len(epochs)), 1),
                       "examples_per_epoch": record.candidate.get("train_examples"),
                       "window_interactions": record.window.get("interactions"),
                       **{f"{s}_s": record.seconds_by_step.get(s) for s in STEPS}}
                rows.append(row)
                print("  " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    scaling = exponent([r["events"] for r in rows], [r["total_s"] for r in rows])
    if rows and rows[-1]["total_s"] > args.target_s:
        problems.append(f"{rows[-1]['events']} events took {rows[-1]['total_s']:.0f} s "
                        f"(target {args.target_s:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "refresh.csv", CSV_COLUMNS, rows)
    write_json(args.out / "refresh.json", {
        "environment": environment(omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                                   torch_threads=torch.get_num_threads()),
        "arguments": {k: str(v) for k, v in vars(args).items()}, "runs": rows,
        "scaling_exponent": scaling, "target_s": args.target_s})
    print("\nevents     total s  " + "  ".join(f"{s[:8]:>8}" for s in STEPS))
    for r in rows:
        print(f"{r['events']:>9}  {r['total_s']:>7.0f}  "
              + "  ".join(f"{(r[f'{s}_s'] or 0):>8.1f}" for s in STEPS))
    if scaling is not None:
        print(f"total time grows as events^{scaling:.2f} over these runs")
    return finish(str(args.out), problems, time.perf_counter() - started)


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """The slope of log(time) on log(events): 1 = linear."""
    if len(xs) < 2:
        return None
    return round(float(np.polyfit(np.log(xs), np.log(ys), 1)[0]), 2)


if __name__ == "__main__":
    sys.exit(main())
