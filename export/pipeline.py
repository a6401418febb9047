"""Load -> split -> train -> evaluate against baselines -> export. One call, one report."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from export.data import Dataset, leave_last_out, load_movielens_100k
from export.evaluate import evaluate, popularity_baseline
from export.repository import ServingConfig, export_repository
from export.towers import TwoTower
from export.train import TrainConfig, build_examples, score_histories, seed_everything, train

log = logging.getLogger(__name__)

PROTOCOL = ("leave-last-out per user (last = test, second last = validation); full ranking over "
            "all items the user has not interacted with before the target")
POPULAR_ITEMS_KEPT = 200
SNAPSHOT_FILE = "user_histories.json"
REPORT_FILE = "report.json"


@dataclass
class PipelineResult:
    model: TwoTower
    dataset: Dataset
    report: dict
    repository: Path


def load_dataset(name: str) -> Dataset:
    if name == "ml-100k":
        return load_movielens_100k()
    raise ValueError(f"unknown dataset {name!r} (available: ml-100k)")


def run(
    dataset_name: str,
    repository: Path,
    artifacts: Path,
    config: TrainConfig = TrainConfig(),
    version: int = 1,
    serving: ServingConfig = ServingConfig(),
) -> PipelineResult:
    started = time.perf_counter()
    dataset = load_dataset(dataset_name)
    split = leave_last_out(dataset)
    catalog = dataset.catalog
    L = config.sequence_length
    log.info("%s: %d interactions, %d users, %d items", dataset.name,
             len(dataset.interactions), len(split.test), catalog.num_items)

    histories, targets = build_examples(split.train, catalog, L)
    seed_everything(config.seed)  # before the model exists: its initial weights are random too
    model = TwoTower(catalog, config.dim, config.recency_decay, config.dropout)

    def validate(_epoch: int, m: TwoTower) -> dict:
        metrics = evaluate(score_histories(m, catalog, L), split.train, split.valid, catalog)
        return {f"valid_{k}": v for k, v in metrics.items() if k.endswith("@10")}

    train_started = time.perf_counter()
    epochs = train(model, histories, targets, config, on_epoch_end=validate)
    train_s = time.perf_counter() - train_started

    test_histories = split.history_for("test")
    results = {
        "popularity": evaluate(popularity_baseline(test_histories, catalog), test_histories,
                               split.test, catalog),
        "two_tower": evaluate(score_histories(model, catalog, L), test_histories, split.test, catalog),
    }
    report = {
        "dataset": dataset.name,
        "protocol": PROTOCOL,
        "users": len(split.test),
        "items": catalog.num_items,
        "models": results,
        "train": {"config": config.as_dict(), "seconds": round(train_s, 1), "epochs": epochs},
    }

    sequences = dataset.user_sequences()
    popular = [i for i, _ in Counter(dataset.interactions["item_id"]).most_common(POPULAR_ITEMS_KEPT)]
    export_repository(
        model, catalog, repository, sequence_length=L, version=version, serving=serving,
        metadata={"dataset": dataset.name, "popular_items": popular, "metrics": results["two_tower"]},
    )
    artifacts.mkdir(parents=True, exist_ok=True)
    # Serving starts from everything that has happened; the stream adds to it.
    (artifacts / SNAPSHOT_FILE).write_text(json.dumps(sequences))
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    (artifacts / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return PipelineResult(model, dataset, report, repository)


def format_table(report: dict) -> str:
    cols = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr"]
    lines = [f"{report['dataset']} — {report['users']} users, {report['items']} items (full ranking)",
             f"{'model':<12}" + "".join(f"{c:>11}" for c in cols)]
    for name, metrics in report["models"].items():
        lines.append(f"{name:<12}" + "".join(f"{metrics[c]:>11.4f}" for c in cols))
    return "\n".join(lines)
