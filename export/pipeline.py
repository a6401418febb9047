"""Load -> split -> baselines -> train (one run per seed) -> evaluate -> report -> export.

Two protocols (docs/evaluation.md): leave-last-out (the headline numbers; its best-validation seed
is exported) and a global temporal split, whose baselines are always evaluated and whose own model
(trained per seed on the data before the cut, never exported) only with ``run(temporal=True)``.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from export.data.examples import build_examples
from export.data.interactions import Dataset, load_interactions_file, load_movielens_100k
from export.data.loaders import DaliBatches, InMemoryBatches, write_shards
from export.data.split import leave_last_out, temporal_split
from export.data.synthetic import generate
from export.evaluation.baselines import evaluate_baselines, items_modelled
from export.evaluation.metrics import evaluate
from export.evaluation.report import aggregate_seeds, write_report
from export.evaluation.temporal import MODEL_OFF, temporal_section, untrainable
from export.model.ensemble import TowerEnsemble, Towers, members_of
from export.model.item_item import Blended, fit_item_item
from export.model.towers import TwoTower
from export.train import (
    TrainConfig,
    encode_histories,
    member_seed,
    new_model,
    resolve_amp,
    resolve_device,
    save_checkpoint,
    score_histories,
    seed_everything,
    target_log_frequencies,
    train,
)
from export.triton.repository import ServingConfig, export_repository
from features.catalog import ItemCatalog

log = logging.getLogger(__name__)

PROTOCOL = ("leave-last-out per user over the first interaction with each item (last new item = "
            "test, the one before = validation); history = every interaction before the target, "
            "repeats and event types included; full ranking over all items the user has not "
            "interacted with before the target; baselines fit on the same histories")
POPULAR_ITEMS_KEPT = 200
SNAPSHOT_FILE = "user_histories.json"
MODEL_NAME = "two_tower"
# The item-item term's weights tried on validation, relative to the ratio of the towers' score
# spread to the term's (so the grid means the same on any dataset); 0, the towers alone, is
# always a candidate. On Last.fm validation rose to .4 and fell at .8 and 1.6 (docs/model.md).
ITEM_ITEM_WEIGHTS = (0.05, 0.1, 0.2, 0.4, 0.8)
SPREAD_USERS = 512  # validation users the score spreads are measured on


@dataclass
class SeedRun:
    seed: int
    model: Towers
    epochs: list[dict]
    best_valid_recall: float
    test: dict[str, float]
    seconds: float
    whole_history: bool  # trained with whole-history examples (TrainConfig.whole_history)
    pilot: dict | None = None  # how the run chose whole_history, on this seed (choose_whole_history)


class _Examples(NamedTuple):
    histories: np.ndarray
    targets: np.ndarray
    log_q: torch.Tensor
    shards: Path | None  # the DALI loader's copy on disk


@dataclass
class PipelineResult:
    model: Towers  # the exported one: the seed with the best validation Recall@10
    dataset: Dataset
    report: dict
    repository: Path | None


def popular_items(item_ids: Iterable[str]) -> list[str]:
    """The gateway's last-resort fallback list (serving.json "popular_items"): the most frequent
    items of the data a version was built from, most frequent first."""
    return [item for item, _ in Counter(item_ids).most_common(POPULAR_ITEMS_KEPT)]


def load_dataset(spec: str, items_path: Path | None = None) -> Dataset:
    """``ml-100k`` (bundled), ``synthetic`` (seeded generator) or a path to an interactions file."""
    if spec == "ml-100k":
        return load_movielens_100k()
    if spec == "synthetic":
        return generate(seed=0).to_dataset()
    path = Path(spec)
    if path.is_file():
        return load_interactions_file(path, items_path)
    raise ValueError(f"unknown dataset {spec!r}: use ml-100k, synthetic or a CSV/Parquet file")


def run(
    dataset_spec: str,
    repository: Path | None,
    artifacts: Path,
    config: TrainConfig = TrainConfig(),
    *,
    seeds: Sequence[int] = (0,),
    items_path: Path | None = None,
    loader: str = "memory",
    baselines: bool = True,
    version: int = 1,
    serving: ServingConfig = ServingConfig(),
    target: str = "python",
    temporal: bool = False,
) -> PipelineResult:
    """The whole offline job; ``repository=None`` evaluates without exporting.

    ``temporal=True`` also trains one model per seed on the temporal split's pre-cut data and
    evaluates it there (doubles training time); the leave-last-out numbers do not change.
    """
    started = time.perf_counter()
    device = resolve_device(config.device)  # fails here, before any work, without the GPU asked for
    dataset = load_dataset(dataset_spec, items_path)
    split = leave_last_out(dataset)
    catalog = dataset.catalog
    L = config.sequence_length
    log.info("%s: %d interactions, %d users, %d items", dataset.name,
             len(dataset.interactions), len(split.test), catalog.num_items)

    test_histories = split.history_for("test")
    models: dict[str, dict] = {}
    modelled = items_modelled(catalog) if baselines else None
    if baselines:
        if modelled < catalog.num_items:
            log.warning("%d items: the item-item baselines are fitted on the %d most frequent "
                        "(export.evaluation.baselines)", catalog.num_items, modelled)
        models.update(evaluate_baselines(test_histories, split.test, catalog))

    temporal_data = temporal_split(dataset)
    temporal_report = temporal_section(temporal_data, catalog, baselines)
    log.info("temporal split at %s: %d users with a target, left out %s",
             temporal_report["cutoff_utc"], len(temporal_data.test), temporal_data.left_out)

    runs = train_seeds(split.train, split.valid, test_histories, split.test, catalog, config,
                        seeds, loader, artifacts)
    item_item = blend_item_item(runs, split.train, split.valid, test_histories, split.test,
                                catalog, config, artifacts)
    models[MODEL_NAME] = aggregate_seeds([r.test for r in runs])
    # Which model to ship is decided on validation data only, never on the test split.
    best = max(runs, key=lambda r: r.best_valid_recall)

    report = {
        "dataset": dataset.name,
        "protocol": PROTOCOL,
        "users": len(split.test),
        "items": catalog.num_items,
        "interactions": len(dataset.interactions),
        "models": models,
        "baseline_items": modelled,
        "train": {
            "config": config.as_dict(),
            "loader": loader,
            "device": str(device),
            "amp": resolve_amp(config.amp, device),
            "whole_history": whole_history_entry(runs),
            "item_item": item_item,
            "seeds": [_seed_entry(r) for r in runs],
            "exported_seed": best.seed,
        },
    }
    if temporal:
        reason = untrainable(temporal_data)
        if reason is None:
            temporal_runs = train_seeds(temporal_data.train, temporal_data.valid,
                                         temporal_data.history_for("test"), temporal_data.test,
                                         catalog, config, seeds, loader, artifacts / "temporal")
            temporal_report["item_item"] = blend_item_item(
                temporal_runs, temporal_data.train, temporal_data.valid,
                temporal_data.history_for("test"), temporal_data.test, catalog, config,
                artifacts / "temporal")
            temporal_report["models"][MODEL_NAME] = aggregate_seeds([r.test for r in temporal_runs])
            temporal_report["seeds"] = [_seed_entry(r) for r in temporal_runs]
            temporal_report["whole_history"] = whole_history_entry(temporal_runs)
        else:
            log.warning("temporal protocol: no model trained (%s)", reason)
            temporal_report["model_skipped"] = reason
    else:
        temporal_report["model_skipped"] = MODEL_OFF
    report["protocols"] = {
        "leave_last_out": {"description": PROTOCOL, "users": len(split.test), "models": models,
                           "seeds": [{"seed": r.seed, "test": r.test} for r in runs]},
        "temporal": temporal_report,
    }
    if dataset.cleaning is not None:
        report["cleaning"] = dataset.cleaning.summary()

    if repository is not None:
        popular = popular_items(dataset.interactions["item_id"])
        # CPU TorchScript, whatever it trained on (train_seeds already moved it; this says so)
        export_repository(
            best.model.cpu(), catalog, repository, sequence_length=L, version=version, serving=serving,
            target=target, metadata={"dataset": dataset.name, "popular_items": popular, "metrics": best.test},
        )
        artifacts.mkdir(parents=True, exist_ok=True)
        # Serving starts from everything that has happened; the stream adds to it.
        (artifacts / SNAPSHOT_FILE).write_text(json.dumps(dataset.snapshot_rows()))
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    write_report(report, artifacts)
    return PipelineResult(best.model, dataset, report, repository)


def _seed_entry(r: SeedRun) -> dict:
    return {"seed": r.seed, "seconds": round(r.seconds, 1), "best_valid_recall@10": r.best_valid_recall,
            "test": r.test, "whole_history": r.whole_history, "epochs": r.epochs}


def whole_history_entry(runs: Sequence[SeedRun]) -> dict:
    """The report's account of ``TrainConfig.whole_history``: set, or chosen by a pilot."""
    pilot = next((r.pilot for r in runs if r.pilot is not None), None)
    return {"used": runs[0].whole_history if runs else None,
            "chosen_on": "validation" if pilot else "config", **({"pilot": pilot} if pilot else {})}


def train_seeds(
    train_sequences: dict[str, list[str]],
    valid_targets: dict[str, str],
    test_histories: dict[str, list[str]],
    test_targets: dict[str, str] | None,
    catalog: ItemCatalog,
    config: TrainConfig,
    seeds: Sequence[int],
    loader: str = "memory",
    artifacts: Path | None = None,
) -> list[SeedRun]:
    """One model per seed on ``train_sequences``; early stopping on the validation targets (with
    the training sequences as histories), then test metrics (none when ``test_targets`` is None:
    the caller evaluates). Shards and checkpoints go under ``artifacts`` (none without it; the
    DALI loader needs it). Trains on ``config.device``; the DALI loader then reads on the GPU
    too (``dali_device``). The models come back on the CPU."""
    L = config.sequence_length
    if loader == "dali" and artifacts is None:
        raise ValueError("the DALI loader reads shards from the artifacts folder: pass artifacts")
    dali_on = dali_device(resolve_device(config.device))
    prepared: dict[bool, _Examples] = {}

    def examples(whole: bool) -> _Examples:
        """The training examples with or without whole-history rows, built once."""
        if whole not in prepared:
            histories, targets = build_examples(train_sequences, catalog, L, whole_history=whole)
            shards = None
            if loader == "dali":
                shards = artifacts / ("shards-whole-history" if whole else "shards")
                write_shards(histories, targets, shards)
            prepared[whole] = _Examples(
                histories, targets, target_log_frequencies(targets, catalog.num_embeddings), shards)
        return prepared[whole]

    def batches(whole: bool, seed: int) -> Iterable:
        rows = examples(whole)
        if rows.shards is not None:
            return DaliBatches(rows.shards, config.batch_size, seed=seed, device=dali_on)
        return InMemoryBatches(rows.histories, rows.targets, config.batch_size, seed=seed)

    def validate(m: Towers) -> dict:
        metrics = evaluate(score_histories(m, catalog, L), train_sequences, valid_targets, catalog)
        return {k: metrics[k] for k in ("recall@10", "ndcg@10")}

    runs = []
    whole = config.whole_history
    for seed in seeds:
        seed_everything(seed)  # before the model exists: its initial weights are random too
        model = new_model(catalog, config)
        checkpoints = None if artifacts is None else artifacts / "checkpoints" / f"seed{seed}"
        t0 = time.perf_counter()
        pilot, trained, loader_used = None, (), None
        if whole is None:  # the first seed decides for every seed
            whole, model, trained, loader_used, pilot = choose_whole_history(
                model, replace(config, seed=seed), batches, lambda w: examples(w).log_q, validate,
                checkpoints)
            prepared.pop(not whole, None)  # the losing examples: no longer needed
        seed_config = replace(config, seed=seed, whole_history=whole)
        epochs = train(model, loader_used or batches(whole, seed), seed_config,
                       log_q=examples(whole).log_q, validate=validate, checkpoint_dir=checkpoints,
                       trained=trained)
        seconds = time.perf_counter() - t0
        test = {} if test_targets is None else evaluate(
            score_histories(model, catalog, L), test_histories, test_targets, catalog)
        # The model as it is now: every member at its best epoch (for one model, its best epoch's)
        best_valid = validate(model)["recall@10"]
        model.cpu()  # off the GPU: the next seed's model needs the room, and callers expect CPU
        runs.append(SeedRun(seed, model, epochs, best_valid, test, seconds, whole, pilot))
        log.info("seed %d: test %s (%.0f s)", seed, {k: round(v, 4) for k, v in test.items()}, seconds)
    return runs


def choose_whole_history(
    model: Towers, config: TrainConfig, batches: Callable[[bool, int], Iterable],
    log_q: Callable[[bool], torch.Tensor], validate: Callable[[Towers], dict],
    checkpoint_dir: Path | None,
) -> tuple[bool, Towers, list[list[dict]], Iterable, dict]:
    """Decide ``TrainConfig.whole_history`` on validation: ``model``'s first member is trained
    twice from the same initial weights, as ``train`` would train it, without and then with
    whole-history examples; the one with the higher best validation Recall@10 wins (a tie keeps
    them out: the plain examples are what serving sees).

    Nothing is trained twice for nothing: the winner *is* the first member, and its loader (with
    the epochs it used) goes on to the other members, so the run is exactly the run of
    ``whole_history`` set to the choice. The cost is one extra member on the first seed.

    Returns (choice, the model with the winner as first member, [its epoch records], its loader,
    the pilot's report entry).
    """
    first = members_of(model)[0]
    member_config = replace(config, seed=member_seed(config.seed, 0), members=1)
    member_dir = None
    if checkpoint_dir is not None:
        member_dir = checkpoint_dir if isinstance(model, TwoTower) else checkpoint_dir / "member0"
    outcomes = {}
    for whole in (False, True):
        candidate = copy.deepcopy(first)  # both start from the same weights
        loader = batches(whole, config.seed)
        log.info("choosing whole_history on validation: first member %s whole-history examples",
                 "with" if whole else "without")
        records = train(candidate, loader, replace(member_config, whole_history=whole),
                        log_q=log_q(whole), validate=validate,
                        checkpoint_dir=None if member_dir is None else member_dir / _pilot_dir(whole))
        outcomes[whole] = (candidate, records, loader)
    best = {whole: max(r["valid_recall@10"] for r in records)
            for whole, (_, records, _) in outcomes.items()}
    choice = best[True] > best[False]
    candidate, records, loader = outcomes[choice]
    log.info("whole_history=%s: best validation Recall@10 %.4f without, %.4f with",
             choice, best[False], best[True])
    if member_dir is not None:  # the winner's checkpoints where the first member's belong
        shutil.copytree(member_dir / _pilot_dir(choice), member_dir, dirs_exist_ok=True)
    if isinstance(model, TowerEnsemble):
        model.members[0] = candidate
    else:
        model = candidate
    pilot = {"seed": config.seed, "chosen": choice,
             "best_valid_recall@10": {"without": best[False], "with": best[True]},
             "epochs": {"without": len(outcomes[False][1]), "with": len(outcomes[True][1])}}
    return choice, model, [records], loader, pilot


def blend_item_item(
    runs: list[SeedRun],
    train_sequences: dict[str, list],
    valid_targets: dict[str, str],
    test_histories: dict[str, list],
    test_targets: dict[str, str] | None,
    catalog: ItemCatalog,
    config: TrainConfig,
    artifacts: Path | None = None,
) -> dict:
    """Add the item-item term (``export.model.item_item``) to every seed's towers if validation
    says so; returns the report's account. One relative weight (``ITEM_ITEM_WEIGHTS``, or 0) is
    chosen on the mean validation Recall@10 over the seeds, by the one-standard-error rule, and
    used for all of them (``config.item_item`` set: that weight). When it is not 0, each run
    gets, in place, the ``Blended`` model, its test metrics and validation score, and its
    checkpoint ``best.pt`` becomes the blended model (config ``item_item_weight`` set), so cold
    items and refresh start from what is served.

    The weight is chosen with the term fitted on the training sequences (what validation may
    see). The served and tested term is refitted, only when used, on the test histories
    (training sequences plus validation targets), as the EASE baseline is, with the weight kept.
    """
    if config.item_item is not None and config.item_item <= 0:
        return {"used": False, "chosen_on": "config"}
    started = time.perf_counter()
    L = config.sequence_length
    fitted = fit_item_item(train_sequences, catalog, config.item_item_rank)
    rank = int(fitted.sources.shape[1])
    sample = [train_sequences[u] for u in sorted(valid_targets)[:SPREAD_USERS]]
    rows = encode_histories(sample, catalog, L)[:, :L]
    with torch.no_grad():
        term_spread = float((fitted(rows) @ fitted.targets.T).std(dim=1).mean())
    spreads = [float(score_histories(r.model, catalog, L)(sample).std(axis=1).mean()) for r in runs]
    candidates = ITEM_ITEM_WEIGHTS if config.item_item is None else (config.item_item,)
    valid = []  # per seed: relative weight -> validation Recall@10
    for r, spread in zip(runs, spreads, strict=True):
        scores = {0.0: r.best_valid_recall}
        for relative in candidates if term_spread > 0 else ():
            blended = Blended(r.model, fitted, relative * spread / term_spread)
            scores[relative] = evaluate(score_histories(blended, catalog, L), train_sequences,
                                        valid_targets, catalog)["recall@10"]
        valid.append(scores)
    mean = {w: float(np.mean([scores[w] for scores in valid])) for w in valid[0]}
    best = max(mean.values())
    error = float(np.sqrt(best * (1 - best) / max(len(valid_targets), 1)))
    if config.item_item is not None:  # set, not chosen (validated all the same, for the record)
        chosen = config.item_item if term_spread > 0 else 0.0
    else:
        # One choice for every seed, on the mean over seeds: three validation runs are less
        # noisy than one. Then the one-standard-error rule: the smallest weight scoring within
        # one standard error of the best (binomial, one target per user). On Last.fm the mean
        # curve was flat from .05 to .4 (.1146 to .1173, against a standard error of .0083): its
        # maximum is a pick among equals, and the rule picks the one that changes the towers least.
        chosen = min(w for w, v in mean.items() if v >= best - error)
    log.info("item-item term: relative weight %s (mean validation Recall@10 %s, standard error "
             "%.4f)", chosen, {w: round(v, 4) for w, v in mean.items()}, error)
    towers_test = aggregate_seeds([r.test for r in runs]) if test_targets is not None else {}
    served = fit_item_item(test_histories, catalog, config.item_item_rank) if chosen else None
    entries = []
    for r, spread, scores in zip(runs, spreads, valid, strict=True):
        entry = {"seed": r.seed, "valid_recall@10": {str(w): v for w, v in scores.items()},
                 "towers_test": r.test}
        if chosen:
            weight = entry["weight"] = chosen * spread / term_spread
            r.model = Blended(r.model, served, weight)
            r.best_valid_recall = scores[chosen]
            if test_targets is not None:
                r.test = entry["test"] = evaluate(score_histories(r.model, catalog, L),
                                                  test_histories, test_targets, catalog)
            if artifacts is not None:
                # the fitted rank (below the configured one on a catalog that small), so a model
                # rebuilt on a grown catalog has the same width
                saved = replace(config, seed=r.seed, whole_history=r.whole_history,
                                item_item_weight=weight, item_item_rank=rank)
                save_checkpoint(r.model, None, saved, r.epochs,
                                artifacts / "checkpoints" / f"seed{r.seed}" / "best.pt")
        entries.append(entry)
    return {"used": bool(chosen), "chosen_on": "validation" if config.item_item is None else "config",
            "chosen": chosen, "rank": rank,
            "mean_valid_recall@10": {str(w): v for w, v in mean.items()}, "standard_error": error,
            "towers_only_test": towers_test, "seeds": entries,
            "seconds": round(time.perf_counter() - started, 1)}


def _pilot_dir(whole: bool) -> str:
    return f"pilot-{'with' if whole else 'without'}-whole-history"


def dali_device(device: torch.device) -> str:
    """DaliBatches' device for training on ``device``: its GPU path when training on the GPU it
    runs on (GPU 0), so batches arrive as CUDA tensors; otherwise the CPU path, whose batches
    ``train`` moves. (On another GPU, DALI's GPU 0 batches would only be copied across.)"""
    return "gpu" if device.type == "cuda" and (device.index or 0) == 0 else "cpu"
