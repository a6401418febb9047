"""Item cold start, measured: how well does the model recommend items it never saw interactions of?

    python -m export.evaluation.cold_start --dataset ml-100k --seeds 0 1 2 --out build/cold_start

Protocol (docs/evaluation.md, "Item cold start"): a seeded 10 % of the items that have
interactions are held out. Every interaction with them is removed from training (and from the
histories the model reads), the towers are trained on the rest as usual, and afterwards the
held-out items' id embeddings are zeroed, so their vectors come from their attributes alone —
exactly how ``export.triton.cold_items`` embeds a new product. Evaluated are the users whose
leave-last-out test item is a held-out item, in two ways:

* **among the cold items** (the candidates are the held-out items only): which new product would
  this user pick? Compared with two baselines that can score an item without interactions:
  *category popularity* (how often the training data touched the item's categories) and
  *user × category* (the user's own share of history in the item's categories, category
  popularity breaking ties);
* **in the full catalog** (every item not in the user's history): does a new product reach the
  user's top 10 against warm items with trained ids?

A dataset without item attributes gives the model nothing to embed a cold item from; it is run
anyway and says so in the report.
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
import torch

from export.data.interactions import Dataset
from export.data.split import leave_last_out
from export.evaluation.metrics import ScoreFn, evaluate
from export.evaluation.report import aggregate_seeds
from export.model.ensemble import Towers, members_of
from export.pipeline import load_dataset, train_seeds, whole_history_entry
from export.train import TrainConfig, score_histories
from features.catalog import ItemCatalog

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.1
KEYS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr")


def hold_out_items(dataset: Dataset, fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the items that have interactions (at least one)."""
    interacted = sorted(set(dataset.interactions["item_id"]))
    rng = np.random.default_rng(seed)
    n = max(1, round(fraction * len(interacted)))
    return set(rng.choice(interacted, size=n, replace=False).tolist())


def without(histories: dict[str, list[str]], cold: set[str]) -> dict[str, list[str]]:
    return {u: [i for i in h if i not in cold] for u, h in histories.items()}


def restrict_to(score_fn: ScoreFn, candidates: np.ndarray, num_rows: int) -> ScoreFn:
    """``score_fn`` with every catalog row outside ``candidates`` at -inf."""
    outside = np.ones(num_rows, dtype=bool)
    outside[candidates] = False

    def score(histories: Sequence[Sequence[str]]) -> np.ndarray:
        scores = np.asarray(score_fn(histories), dtype=np.float64)
        scores[:, outside] = -np.inf
        return scores

    return score


def _mean_over_categories(catalog: ItemCatalog) -> np.ndarray:
    """[rows, C]: each item's categories weighted 1/their number (an item in many categories
    is not more likely for it; 0 rows for items without any)."""
    categories = catalog.category_matrix().astype(np.float64)
    return categories / np.maximum(categories.sum(axis=1, keepdims=True), 1.0)


def category_scores(histories: dict[str, list[str]], catalog: ItemCatalog) -> np.ndarray:
    """Per catalog row: how often training interactions touched its categories (their mean;
    0 without any)."""
    categories = catalog.category_matrix().astype(np.float64)  # [rows, C]
    counts = np.zeros(categories.shape[1])
    for history in histories.values():
        counts += categories[catalog.indices_of(history)].sum(axis=0)
    return _mean_over_categories(catalog) @ counts


def category_popularity(histories: dict[str, list[str]], catalog: ItemCatalog) -> ScoreFn:
    scores = category_scores(histories, catalog)
    return lambda batch: np.tile(scores, (len(batch), 1))


def user_category(histories: dict[str, list[str]], catalog: ItemCatalog) -> ScoreFn:
    categories = catalog.category_matrix().astype(np.float64)
    weights = _mean_over_categories(catalog)
    popularity = category_scores(histories, catalog)
    tie_break = popularity / (popularity.max() or 1.0) * 1e-3

    def score(batch: Sequence[Sequence[str]]) -> np.ndarray:
        out = np.empty((len(batch), categories.shape[0]))
        for row, history in enumerate(batch):
            share = categories[catalog.indices_of(history)].sum(axis=0)
            out[row] = weights @ (share / max(len(history), 1)) + tie_break
        return out

    return score


@torch.no_grad()
def forget_ids(model: Towers, catalog: ItemCatalog, cold: set[str]) -> None:
    """Zero the id rows of ``cold`` items (in every member): their vectors come from their
    attributes alone."""
    rows = torch.as_tensor(catalog.indices_of(sorted(cold)))
    for member in members_of(model):
        member.item_tower.encoder.id_embedding.weight[rows] = 0.0


def run(dataset: Dataset, config: TrainConfig, seeds: Sequence[int],
        fraction: float = HOLDOUT_FRACTION) -> dict:
    started = time.perf_counter()
    catalog = dataset.catalog
    cold = hold_out_items(dataset, fraction, seed=0)  # the same items for every model seed
    split = leave_last_out(dataset)
    train_histories = without(split.train, cold)
    valid = {u: i for u, i in split.valid.items() if i not in cold and train_histories[u]}
    test_histories = without(split.history_for("test"), cold)
    users = {u: i for u, i in split.test.items() if i in cold and test_histories[u]}
    if not users:
        raise ValueError("no test user's last item is among the held-out items: nothing to measure")
    cold_rows = np.sort(catalog.indices_of(sorted(cold)))
    L = config.sequence_length

    def both(score_fn: ScoreFn) -> dict[str, dict[str, float]]:
        cold_only = evaluate(restrict_to(score_fn, cold_rows, catalog.num_embeddings),
                             test_histories, users, catalog)
        full = evaluate(score_fn, test_histories, users, catalog)
        return {"cold_candidates": {k: cold_only[k] for k in KEYS},
                "full_catalog": {k: full[k] for k in KEYS}}

    models = {"category_popularity": both(category_popularity(train_histories, catalog)),
              "user_category": both(user_category(train_histories, catalog))}
    seed_runs = []
    runs = train_seeds(train_histories, valid, test_histories, None, catalog, config, seeds)
    for run_ in runs:
        forget_ids(run_.model, catalog, cold)
        seed_runs.append(both(score_histories(run_.model, catalog, L)))
        log.info("seed %d: %s", run_.seed, seed_runs[-1])
    models["two_tower"] = {view: aggregate_seeds([r[view] for r in seed_runs])
                           for view in ("cold_candidates", "full_catalog")}
    attributes = bool(catalog.categories) or any(i.year or i.price for i in catalog.items)
    return {
        "dataset": dataset.name, "holdout_fraction": fraction, "cold_items": len(cold),
        "users": len(users),
        "item_attributes": attributes, "seeds": list(seeds), "config": config.as_dict(),
        "whole_history": whole_history_entry(runs), "models": models, "per_seed": seed_runs,
        "seconds_total": round(time.perf_counter() - started, 1),
    }


def format_table(report: dict) -> str:
    lines = [f"item cold start on {report['dataset']}: {report['cold_items']} held-out items, "
             f"{report['users']} test users whose last item is one of them"
             + ("" if report["item_attributes"] else " (no item attributes: nothing to embed from)"),
             f"{'model':<22}{'cold R@10':>10}{'cold N@10':>10}{'full R@10':>10}{'full N@10':>10}"]
    for name, views in report["models"].items():
        cells = [views[v][m] for v in ("cold_candidates", "full_catalog") for m in ("recall@10", "ndcg@10")]
        lines.append(f"{name:<22}" + "".join(f"{c:>10.4f}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m export.evaluation.cold_start",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k", help="ml-100k | synthetic | CSV/Parquet file")
    p.add_argument("--items", type=Path, default=None, help="item attributes file (optional)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--holdout", type=float, default=HOLDOUT_FRACTION)
    p.add_argument("--id-dropout", type=float, default=d.id_dropout)
    p.add_argument("--out", type=Path, default=Path("build/cold_start"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = replace(d, epochs=args.epochs, id_dropout=args.id_dropout)
    report = run(load_dataset(args.dataset, args.items), config, args.seeds, args.holdout)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_start.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"wrote {args.out / 'cold_start.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
