"""Candidate vs live on the newest events, and the decision taken on it.

The split is by time over the *new* events only (``time_split``): the newest
``holdout_fraction`` of them is the holdout, the ``valid_fraction`` before it the validation
band, and the candidate trains on everything before the band. The live version was built before
any new event existed, so neither model has seen the holdout. Each user's target is their first
item after the cut that they had not met before it; the history is every step before the cut
(old data included), exactly what the gateway would send.

Metrics are full-ranking Recall@10 / NDCG@10 (``export.evaluation.metrics``) over each model's own
catalog. A target the live catalog does not hold (a new item) is a miss for the live version: it
cannot recommend an item it does not have, which is what the refresh is for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from export.data.interactions import steps_by_user
from export.data.split import cutoff_timestamp, first_new_items
from export.evaluation.metrics import metrics_from_ranks, target_ranks
from export.model.ensemble import Towers
from export.train import score_histories
from features.behaviour import Step
from features.catalog import ItemCatalog

KS = (10,)
MISS = np.iinfo(np.int64).max // 2  # the rank of a target the model cannot recommend


@dataclass
class Split:
    train: dict[str, list[Step]]  # per user, every step before the validation cut
    valid: dict[str, str]  # first new item in the validation band
    before_test: dict[str, list[Step]]  # per user, every step before the holdout cut
    test: dict[str, str]  # first new item in the holdout
    valid_cut_ms: int
    test_cut_ms: int

    def summary(self) -> dict:
        return {"valid_cut_ms": self.valid_cut_ms, "test_cut_ms": self.test_cut_ms,
                "valid_users": len(self.valid), "holdout_users": len(self.test)}


def time_split(data: pd.DataFrame, new: pd.DataFrame, holdout_fraction: float,
               valid_fraction: float) -> Split:
    """Cuts at the new events' quantiles; targets only from new events (see the module doc)."""
    stamps = new["ts_ms"].to_numpy()
    test_cut = cutoff_timestamp(stamps, 1 - holdout_fraction)
    valid_cut = cutoff_timestamp(stamps, 1 - holdout_fraction - valid_fraction)
    ts, new_ts = data["ts_ms"].to_numpy(), new["ts_ms"].to_numpy()
    train = steps_by_user(data[ts < valid_cut])
    before_test = steps_by_user(data[ts < test_cut])
    band = steps_by_user(new[(new_ts >= valid_cut) & (new_ts < test_cut)])
    after = steps_by_user(new[new_ts >= test_cut])
    return Split(train, first_new_items(train, band), before_test, first_new_items(before_test, after),
                 valid_cut, test_cut)


def ranking_metrics(model: Towers, catalog: ItemCatalog, histories: dict[str, Sequence[str]],
                    targets: dict[str, str], sequence_length: int, batch_users: int = 256
                    ) -> dict[str, float]:
    """Recall@10, NDCG@10 and MRR over every user in ``targets``; targets outside ``catalog``
    count as misses. ``users``: how many were evaluated."""
    users = sorted(targets)
    if not users:
        return {"users": 0}
    score = score_histories(model, catalog, sequence_length)
    ranks = np.full(len(users), MISS, dtype=np.int64)
    for start in range(0, len(users), batch_users):
        batch = users[start:start + batch_users]
        rows = [i for i, u in enumerate(batch) if targets[u] in catalog]
        if not rows:
            continue
        hist = [histories[batch[i]] for i in rows]
        tgt = np.array([catalog.index_of(targets[batch[i]]) for i in rows], dtype=np.int64)
        # The history is excluded, as serving excludes it; a target never is (it is an item the
        # user had not met before the cut).
        ranks[[start + i for i in rows]] = target_ranks(score(hist), tgt,
                                                        [catalog.indices_of(h) for h in hist])
    out = {k: round(v, 5) for k, v in metrics_from_ranks(ranks, KS).items()}
    return {**out, "users": len(users)}


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    gain: float | None  # relative Recall@10 gain of the candidate over live


def decide(live: dict[str, float], candidate: dict[str, float], margin: float) -> Decision:
    """Promote when the candidate's holdout Recall@10 beats live's by at least ``margin``
    (relative) and strictly: equal models are not worth a rollout."""
    if not candidate.get("users"):
        return Decision(False, "no holdout users with a new item: nothing to decide on", None)
    ours, theirs = candidate["recall@10"], live.get("recall@10", 0.0)
    if theirs <= 0:
        gain = float("inf") if ours > 0 else 0.0
    else:
        gain = ours / theirs - 1
    recall = f"holdout Recall@10 {ours:.4f} vs live {theirs:.4f}"
    if ours > theirs and gain >= margin:
        return Decision(True, f"{recall} (+{gain:.1%} >= margin {margin:.1%})", gain)
    return Decision(False, f"{recall}: gain {gain:+.1%} is below the margin {margin:.1%}", gain)
