"""Next purchase on a shop log: does knowing *how* a user touched items help predict what they buy?

    python -m export.evaluation.next_purchase --dataset synthetic --users 6000 --seeds 0 1 2

Protocol (docs/evaluation.md, "Next purchase"):

* Users who bought at least ``MIN_PURCHASES`` distinct items; the last first-time purchase is the
  test target, the one before it the validation target. The history is every step before the
  target (views, clicks, carts, earlier purchases, repeats), as the gateway would serve it.
* Candidates: every item the user has not bought before the target. Items the user viewed or
  carted stay candidates — buying what one carted is the point of the task.
* Training: one example per first-time purchase among the steps before each user's validation
  target (history = the steps before it), for every user; validation picks the epoch.
* Compared in the same run: the behaviour-aware tower, the same tower with event types ignored
  (``use_types=False``, the id-only ablation), the pooled tower, and two baselines: purchase
  popularity, and *recently touched* (the user's own items, most recent first, then popularity).

The synthetic shop is the intended input (its funnel view -> click -> cart -> purchase is where
event types carry information); any log with purchase events works.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from export.data.examples import build_examples
from export.data.interactions import Dataset
from export.data.loaders import InMemoryBatches
from export.data.synthetic import generate
from export.evaluation.metrics import ScoreFn, evaluate
from export.evaluation.report import aggregate_seeds
from export.pipeline import load_dataset
from export.train import (
    TrainConfig,
    new_model,
    score_histories,
    seed_everything,
    target_log_frequencies,
    train,
)
from features.behaviour import Step, step_type_of
from features.catalog import ItemCatalog

log = logging.getLogger(__name__)

MIN_PURCHASES = 2
KEYS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr")
# name in the report -> how the model differs from the base config
VARIANTS = {
    "two_tower": {},
    "two_tower_id_only": {"use_types": False},
    "two_tower_pooled": {"user_tower": "pooled"},
}


class PurchaseSplit:
    """Per user: ``test``/``valid`` targets (last and second-last purchase), the steps before each
    (``before_test``/``train``) and the items bought before each (``bought_test``/``bought_valid``)."""

    def __init__(self, steps: dict[str, list[Step]], min_purchases: int = MIN_PURCHASES) -> None:
        self.train: dict[str, list[Step]] = {}
        self.valid: dict[str, str] = {}
        self.test: dict[str, str] = {}
        self.before_test: dict[str, list[Step]] = {}
        self.bought_valid: dict[str, list[str]] = {}
        self.bought_test: dict[str, list[str]] = {}
        for user, seq in steps.items():
            purchases = first_purchases(seq)
            if len(purchases) < min_purchases or purchases[0] == 0:
                self.train[user] = seq  # no targets: all of it is training data
                continue
            v, t = purchases[-2], purchases[-1]
            self.train[user], self.valid[user] = seq[:v], str(seq[v])
            self.before_test[user], self.test[user] = seq[:t], str(seq[t])
            self.bought_valid[user] = [str(seq[i]) for i in purchases if i < v]
            self.bought_test[user] = [str(seq[i]) for i in purchases if i < t]


def first_purchases(seq: list[Step]) -> list[int]:
    """Positions where the user buys an item for the first time (a re-purchase is not a target:
    the candidates exclude what the user already bought)."""
    bought: set[str] = set()
    out = []
    for position, step in enumerate(seq):
        if step_type_of(step) == "purchase" and step not in bought:
            bought.add(step)
            out.append(position)
    return out


def purchase_popularity(histories: dict[str, list[Step]], catalog: ItemCatalog) -> np.ndarray:
    counts = np.zeros(catalog.num_embeddings)
    for seq in histories.values():
        for step in seq:
            if step_type_of(step) == "purchase":
                counts[catalog.index_of(step)] += 1.0
    return counts


def fit_popularity(histories: dict[str, list[Step]], catalog: ItemCatalog) -> ScoreFn:
    scores = purchase_popularity(histories, catalog)
    return lambda batch: np.tile(scores, (len(batch), 1))


def fit_recently_touched(histories: dict[str, list[Step]], catalog: ItemCatalog) -> ScoreFn:
    """The user's own items, most recently touched first; everything else by purchase popularity
    (as a fraction below 1, so it only orders items the user never touched)."""
    pop = purchase_popularity(histories, catalog)
    tie_break = pop / (pop.max() + 1.0)

    def score(batch: Sequence[Sequence[str]]) -> np.ndarray:
        out = np.tile(tie_break, (len(batch), 1))
        for row, seq in enumerate(batch):
            for age, step in enumerate(reversed(seq)):
                index = catalog.index_of(step)
                out[row, index] = max(out[row, index], 1.0 + 1.0 / (1.0 + age))
        return out

    return score


def train_variant(split: PurchaseSplit, catalog: ItemCatalog, config: TrainConfig,
                  examples: tuple[np.ndarray, np.ndarray]) -> ScoreFn:
    """One model on ``examples`` (``build_examples(split.train, ..., target="purchase")``, the same
    for every variant and seed: the variants differ in the model only)."""
    L = config.sequence_length
    histories, targets = examples
    seed_everything(config.seed)
    model = new_model(catalog, config)

    def validate(m) -> dict:
        metrics = evaluate(score_histories(m, catalog, L), split.train, split.valid, catalog,
                           exclude=split.bought_valid)
        return {k: metrics[k] for k in ("recall@10", "ndcg@10")}

    train(model, InMemoryBatches(histories, targets, config.batch_size, seed=config.seed), config,
          log_q=target_log_frequencies(targets, catalog.num_embeddings), validate=validate)
    return score_histories(model, catalog, L)


def run(dataset: Dataset, config: TrainConfig, seeds: Sequence[int]) -> dict:
    started = time.perf_counter()
    catalog = dataset.catalog
    split = PurchaseSplit(dataset.user_steps())
    if not split.test:
        raise ValueError(f"no user has {MIN_PURCHASES} purchases: nothing to evaluate")

    def test(score_fn: ScoreFn) -> dict[str, float]:
        metrics = evaluate(score_fn, split.before_test, split.test, catalog, exclude=split.bought_test)
        return {k: metrics[k] for k in KEYS}

    # Baselines see every step before the test targets (as the models' histories do).
    fitted_on = {u: split.before_test.get(u, seq) for u, seq in split.train.items()}
    models: dict[str, dict] = {"purchase_popularity": test(fit_popularity(fitted_on, catalog)),
                               "recently_touched": test(fit_recently_touched(fitted_on, catalog))}
    examples = build_examples(split.train, catalog, config.sequence_length, target="purchase")
    if not len(examples[1]):
        raise ValueError("no purchase before any user's validation purchase: nothing to train on")
    per_seed: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for seed in seeds:
        for name, change in VARIANTS.items():
            variant = replace(config, seed=seed, **change)
            per_seed[name].append(test(train_variant(split, catalog, variant, examples)))
            log.info("seed %d %s: %s", seed, name, per_seed[name][-1])
    for name, runs in per_seed.items():
        models[name] = aggregate_seeds(runs)
    return {
        "dataset": dataset.name, "users": len(split.test), "min_purchases": MIN_PURCHASES,
        "training_examples": int(len(examples[1])),
        "seeds": list(seeds), "config": config.as_dict(), "models": models, "per_seed": per_seed,
        "seconds_total": round(time.perf_counter() - started, 1),
    }


def format_table(report: dict) -> str:
    lines = [f"next purchase on {report['dataset']}: {report['users']} test users, "
             f"{report['training_examples']} training purchases",
             f"{'model':<22}{'R@10':>14}{'N@10':>14}{'R@20':>14}"]
    for name, m in report["models"].items():
        cells = []
        for key in ("recall@10", "ndcg@10", "recall@20"):
            std = m.get(f"{key}_std")
            cells.append(f"{m[key]:.4f}" + (f"±{std:.4f}" if std is not None else "       "))
        lines.append(f"{name:<22}" + "".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m export.evaluation.next_purchase",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic", help="synthetic | ml-100k | CSV/Parquet file")
    p.add_argument("--items", type=Path, default=None, help="item attributes file (optional)")
    p.add_argument("--users", type=int, default=None,
                   help="synthetic only: shop size (more users, more purchases to learn from)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--out", type=Path, default=Path("build/next_purchase"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.users is not None:
        if args.dataset != "synthetic":
            raise SystemExit("--users applies to --dataset synthetic only")
        dataset = generate(n_users=args.users).to_dataset()
    else:
        dataset = load_dataset(args.dataset, args.items)
    report = run(dataset, replace(d, epochs=args.epochs), args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "next_purchase.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"wrote {args.out / 'next_purchase.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
