"""A small hyperparameter search on the validation split (``python -m export --tune N``).

Each trial trains a fresh model for at most ``epochs`` epochs (early stopping with ``patience``)
on the training histories and scores it by full-ranking Recall@10 on the **validation** split
(each user's second-last item, predicted from the training history). The test split is never
read here: the test targets must not influence the choice (docs/evaluation.md, "Validation
decides, never test"). The best configuration is then trained through the normal
``export.pipeline.run`` by the caller, which is where test numbers come from.

Search: Optuna's TPE sampler, seeded, so the same data and flags give the same trials; a median
pruner stops a trial whose per-epoch validation Recall@10 falls below the median of earlier trials
at the same epoch. The first trial is always the shipped default (``TrainConfig()``), so the
record says how much tuning gained over it on validation.

"A robust default beats a tuned one": ``tuning.json`` also has, for each parameter, the best value
and how much validation Recall@10 varied over the parameter's values (``robustness``), in
absolute terms and in standard errors of a Recall@10 on this many users. A spread within a
standard error or two means the parameter barely matters on this data; only a value that wins
clearly, and on several datasets, should change a shipped default.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna

from export.data.examples import build_examples
from export.data.interactions import Dataset
from export.data.loaders import InMemoryBatches
from export.data.split import leave_last_out
from export.evaluation.metrics import evaluate
from export.model.ensemble import Towers
from export.train import (
    TrainConfig,
    new_model,
    resolve_device,
    score_histories,
    seed_everything,
    target_log_frequencies,
)
from export.train import train as train_model

log = logging.getLogger(__name__)

TUNING_JSON = "tuning.json"
METRIC = "recall@10"


@dataclass(frozen=True)
class Param:
    """One searched ``TrainConfig`` field: ``choices`` (categorical) or ``low``..``high``."""

    why: str
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def suggest(self, trial: optuna.Trial, name: str):
        if self.choices:
            return trial.suggest_categorical(name, list(self.choices))
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def as_dict(self) -> dict:
        if self.choices:
            return {"choices": list(self.choices), "why": self.why}
        return {"low": self.low, "high": self.high, "log": self.log, "why": self.why}


# Every range contains the shipped default (the first trial), so the search can only confirm or
# beat it on validation. Batch size is not searched: it is also the number of in-batch negatives.
SEARCH_SPACE: dict[str, Param] = {
    "dim": Param(choices=(32, 64, 128), why=(
        "an octave either side of the default 64: below it a catalog of thousands of items starts "
        "to underfit; above it serving memory and ANN latency grow linearly for little gain")),
    "temperature": Param(low=0.03, high=0.2, log=True, why=(
        "cosine logits lie in [-1, 1], so 1/temperature sets the softmax sharpness: below ~0.03 "
        "logits of +-33 saturate and training turns unstable, above ~0.2 (+-5) the softmax is too "
        "flat to separate thousands of items; log scale, the usual 0.07 in the middle")),
    "learning_rate": Param(low=5e-4, high=5e-3, log=True, why=(
        "Adam, a decade around the default 2e-3: lower needs more epochs than a bounded trial "
        "gives it (it would lose for the wrong reason), higher makes the embeddings oscillate")),
    "dropout": Param(low=0.0, high=0.3, why=(
        "on the history's item vectors: none to moderate; above 0.3 a short history loses most "
        "of its items in every step")),
    "sequence_length": Param(choices=(20, 50, 100, 200), why=(
        "how many recent steps the user tower reads; cost per epoch grows linearly with it; the "
        "recency-weighted mean barely sees past 50 (decay 0.9: the 50th step back weighs 0.006), "
        "but the attention read-out does, which helps users with long histories (docs/model.md)")),
    "recency_decay": Param(low=0.7, high=0.99, why=(
        "weight of an item k steps back is decay^k: half-life from 2 items (0.7, mostly the "
        "last items) to 69 items (0.99, nearly a plain mean of the window)")),
    "id_dropout": Param(low=0.0, high=0.5, why=(
        "share of item occurrences trained without their id vector, leaning on attributes: none "
        "(ids carry everything) to half; validation only sees warm items, so a search rewards it "
        "for regularisation, not for cold start (measure that with export.evaluation.cold_start)")),
    "user_tower": Param(choices=("attention", "pooled"), why=(
        "the architecture: with an attention read-out over the whole window (order beyond the "
        "last step counts) or without it (recency-weighted mean + last step, the ablation)")),
    "transition": Param(choices=(True, False), why=(
        "the learned 'what follows' vector of the last step: item-to-item transitions, which "
        "last-item co-occurrence lives on; costs one embedding row per item")),
    "loss": Param(choices=("sampled", "full"), why=(
        "the two implemented losses; full softmax is exact and affordable for thousands of "
        "items, sampled (in-batch, logQ) scales to any catalog; cheap to let the data decide")),
}


@dataclass
class TuneResult:
    best_params: dict
    best_config: TrainConfig  # the base config with the best params: what the final run trains
    record: dict  # what tuning.json holds
    path: Path | None = field(default=None)


def _space_defaults(space: dict[str, Param]) -> dict:
    defaults = TrainConfig()
    return {name: getattr(defaults, name) for name in space}


def _standard_error(recall: float, users: int) -> float:
    """Standard error of a hit rate ``recall`` measured on ``users`` users."""
    return math.sqrt(max(recall * (1.0 - recall), 1e-12) / max(users, 1))


def _groups(param: Param, values: list, scores: list[float], complete: list[bool]) -> list[dict]:
    """Trials grouped by the parameter's value: each choice, or three equal bins of the range
    (equal in log space for a log-scale parameter). Best and mean over completed trials; pruned
    ones are only counted (stopped early for being behind, their recall is a lower bound)."""
    if param.choices:
        keys = [[c] for c in param.choices]
        member = [[v == c for v in values] for c in param.choices]
    else:
        to = math.log if param.log else float
        back = math.exp if param.log else float
        lo, hi = to(param.low), to(param.high)
        keys = [[back(lo + (hi - lo) * i / 3), back(lo + (hi - lo) * (i + 1) / 3)] for i in range(3)]
        # the bin is computed in the (log) space it is equal in: exp(log(x)) need not be x
        bins = [min(2, max(0, int((to(v) - lo) / (hi - lo) * 3))) for v in values]
        member = [[b == i for b in bins] for i in range(3)]
    out = []
    for key, inside in zip(keys, member, strict=True):
        picked = [s for s, m, c in zip(scores, inside, complete, strict=True) if m and c]
        pruned = sum(m and not c for m, c in zip(inside, complete, strict=True))
        if picked or pruned:
            name = "value" if param.choices else "range"
            out.append({name: key[0] if param.choices else [round(k, 6) for k in key],
                        "trials": len(picked), "pruned": pruned,
                        f"best_{METRIC}": round(max(picked), 4) if picked else None,
                        f"mean_{METRIC}": round(sum(picked) / len(picked), 4) if picked else None})
    return out


def robustness(trials: list[dict], space: dict[str, Param], users: int) -> dict:
    """Per parameter: the best trial's value, and how much the best validation Recall@10 reached
    within each value (or bin) of the parameter varied (max - min over the groups), also in
    standard errors. Recall of completed trials only: a pruned trial ran fewer epochs (groups
    count them). Marginal over the other parameters, so with few trials a spread is a hint, not
    a measurement."""
    done = [t for t in trials if t["state"] == "COMPLETE"]
    if not done:
        return {}
    ran = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    best = max(done, key=lambda t: t[f"valid_{METRIC}"])
    se = _standard_error(best[f"valid_{METRIC}"], users)
    out = {}
    for name, param in space.items():
        groups = _groups(param, [t["params"][name] for t in ran], [t[f"valid_{METRIC}"] or 0.0 for t in ran],
                         [t["state"] == "COMPLETE" for t in ran])
        bests = [g[f"best_{METRIC}"] for g in groups if g[f"best_{METRIC}"] is not None]
        spread = max(bests) - min(bests)
        out[name] = {"best_value": best["params"][name], "groups": groups,
                     f"{METRIC}_spread": round(spread, 4),
                     "spread_in_standard_errors": round(spread / se, 2),
                     "values_tried": len(bests)}
    return out


def _trial_record(trial: optuna.trial.FrozenTrial) -> dict:
    epochs = trial.user_attrs.get("epochs", [])
    scored = [e for e in epochs if f"valid_{METRIC}" in e]
    best = max(scored, key=lambda e: e[f"valid_{METRIC}"]) if scored else {}
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": dict(trial.params),
        f"valid_{METRIC}": best.get(f"valid_{METRIC}"),
        "valid_ndcg@10": best.get("valid_ndcg@10"),
        "best_epoch": best.get("epoch"),
        "epochs_run": len(epochs),
        "seconds": round(trial.user_attrs.get("seconds", 0.0), 1),
        "epochs": epochs,
    }


def tune(
    dataset: Dataset,
    base: TrainConfig,
    n_trials: int,
    *,
    epochs: int = 6,
    patience: int = 2,
    seed: int = 0,
    artifacts: Path | None = None,
    space: dict[str, Param] = SEARCH_SPACE,
    prune: bool = True,
) -> TuneResult:
    """Search ``space`` with ``n_trials`` trials on the validation split; write ``tuning.json``.

    ``base`` supplies everything not searched (batch size, uniform negatives, ...); ``seed`` seeds
    both the sampler and every trial's training. ``best_config`` keeps ``base``'s epochs and
    patience: those are for the final run, the trials use ``epochs``/``patience``.
    """
    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    device = resolve_device(base.device)  # every trial trains on base.device (and base.amp)
    started = time.perf_counter()
    split = leave_last_out(dataset)  # only .train and .valid are used below
    catalog = dataset.catalog
    log_q_size = catalog.num_embeddings
    examples: dict[int, tuple] = {}  # by sequence length

    def objective(trial: optuna.Trial) -> float:
        params = {name: p.suggest(trial, name) for name, p in space.items()}
        # One model per trial: the search is over one model's settings, which every member of
        # an ensemble shares (best_config keeps base's members).
        config = replace(base, **params, epochs=epochs, patience=patience, seed=seed, members=1)
        L = config.sequence_length
        if L not in examples:
            # whole_history is not searched: its default (None) is decided by a pilot in every
            # run (export.pipeline.choose_whole_history), so trials train as it forces or without
            examples[L] = build_examples(split.train, catalog, L,
                                         whole_history=bool(config.whole_history))
        histories, targets = examples[L]
        log_q = target_log_frequencies(targets, log_q_size)
        records: list[dict] = []

        def validate(model: Towers) -> dict:
            metrics = evaluate(score_histories(model, catalog, L), split.train, split.valid, catalog)
            out = {k: metrics[k] for k in (METRIC, "ndcg@10")}
            step = len(records) + 1
            records.append({"epoch": step, **{f"valid_{k}": round(v, 4) for k, v in out.items()}})
            trial.set_user_attr("epochs", records)
            trial.report(out[METRIC], step)
            if prune and step < epochs and trial.should_prune():  # the last epoch has nothing to save
                raise optuna.TrialPruned(f"epoch {step}: valid {METRIC} {out[METRIC]:.4f} below the median")
            return out

        seed_everything(seed)
        model = new_model(catalog, config)
        t0 = time.perf_counter()
        try:
            batches = InMemoryBatches(histories, targets, config.batch_size, seed=seed)
            epoch_records = train_model(model, batches, config, log_q=log_q, validate=validate)
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
        for record, train_record in zip(records, epoch_records, strict=True):
            record["loss"] = train_record["loss"]
        trial.set_user_attr("epochs", records)
        return max(r[f"valid_{METRIC}"] for r in records)

    def log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        t = _trial_record(trial)
        log.info("trial %d/%d %s: valid recall@10 %s ndcg@10 %s (%d epochs, %.0f s) %s", t["number"] + 1,
                 n_trials, t["state"], t[f"valid_{METRIC}"], t["valid_ndcg@10"], t["epochs_run"],
                 t["seconds"], t["params"])

    startup = min(10, max(1, n_trials // 2))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3) if prune \
        else optuna.pruners.NopPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log line per trial instead
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.enqueue_trial(_space_defaults(space))  # trial 0: the shipped default
    log.info("tuning on %s: %d trials of <= %d epochs on the validation split (%d users)",
             dataset.name, n_trials, epochs, len(split.valid))
    study.optimize(objective, n_trials=n_trials, callbacks=[log_trial])
    seconds = time.perf_counter() - started

    trials = [_trial_record(t) for t in study.trials]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    if not complete:
        raise RuntimeError("no tuning trial completed")
    best = max(complete, key=lambda t: (t[f"valid_{METRIC}"], -t["number"]))
    best_config = replace(base, **best["params"])
    default = trials[0]
    users = len(split.valid)
    record = {
        "dataset": dataset.name,
        "split": "validation: each user's second-last item, predicted from the training history; "
                 "the test split is never read during the search",
        "users": users,
        "metric": f"valid {METRIC} (full ranking), the trial's best epoch",
        "standard_error": round(_standard_error(best[f"valid_{METRIC}"], users), 4),
        "trials_requested": n_trials,
        "epochs_per_trial": epochs,
        "patience": patience,
        "seed": seed,
        "device": str(device),
        "sampler": f"TPE (seed {seed}, {startup} random start-up trials, trial 0 = the default)",
        "pruner": "median of earlier trials at the same epoch, from epoch 3" if prune else "none",
        "search_space": {name: p.as_dict() for name, p in space.items()},
        "trials": trials,
        "best": {k: best[k] for k in ("number", "params", f"valid_{METRIC}", "valid_ndcg@10", "best_epoch")},
        "default": {k: default[k] for k in ("number", "state", "params", f"valid_{METRIC}", "valid_ndcg@10")},
        "best_config": best_config.as_dict(),
        "robustness": robustness(trials, space, users),
        "search_seconds": round(seconds, 1),
    }
    path = None
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
        path = artifacts / TUNING_JSON
        path.write_text(json.dumps(record, indent=1))
    for line in format_tuning(record).splitlines():
        log.info("%s", line)
    return TuneResult(best["params"], best_config, record, path)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_tuning(record: dict) -> str:
    """The trials as a text table, then the best config and the per-parameter robustness."""
    names = list(record["search_space"])
    header = ["#", "state", *names, "R@10", "N@10", "ep", "s"]
    rows = [[str(t["number"]), t["state"].lower(), *(_fmt(t["params"].get(n)) for n in names),
             _fmt(t[f"valid_{METRIC}"]), _fmt(t["valid_ndcg@10"]), str(t["epochs_run"]),
             f"{t['seconds']:.0f}"] for t in record["trials"]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"tuning on {record['dataset']} (validation split, {record['users']} users; "
             f"one standard error of R@10 ~ {record['standard_error']:.4f}); "
             f"{record['search_seconds']:.0f} s"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    best, default = record["best"], record["default"]
    lines.append(f"best: trial {best['number']} valid R@10 {best[f'valid_{METRIC}']:.4f} "
                 f"NDCG@10 {best['valid_ndcg@10']:.4f} (default, trial 0: R@10 "
                 f"{_fmt(default[f'valid_{METRIC}'])}) params {best['params']}")
    for name, r in record["robustness"].items():
        lines.append(f"  {name}: best {_fmt(r['best_value'])}; valid R@10 varied by "
                     f"{r[f'{METRIC}_spread']:.4f} ({r['spread_in_standard_errors']:.1f} SE) over "
                     f"{r['values_tried']} value group(s) of completed trials")
    return "\n".join(lines)

