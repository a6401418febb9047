"""Full-ranking evaluation (never sampled metrics) and the classical baselines it compares against.

Protocol (shared/DESIGN.md): per user the chronologically last interaction is the target; every
item the user has not interacted with before it is a candidate; Recall@K / NDCG@K are averaged
over users. With one target per user Recall@K is the hit rate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from features.catalog import FIRST_ITEM_INDEX, ItemCatalog

# scores for a batch of users given their histories: [U, catalog.num_embeddings]
ScoreFn = Callable[[Sequence[Sequence[str]]], np.ndarray]


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """0-based rank of each user's target among the candidates.

    Excluded items and the PAD/OOV rows are removed from the candidates. Ties are broken by item
    index (lower first) so that constant-score baselines get a deterministic, not a lucky, rank.
    """
    scores = scores.astype(np.float64, copy=True)
    scores[:, :FIRST_ITEM_INDEX] = -np.inf
    for row, items in enumerate(exclude):
        scores[row, items] = -np.inf
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    if np.isneginf(target_scores).any():
        raise ValueError("a target item is excluded from its own candidate set")
    columns = np.arange(scores.shape[1])[None, :]
    ahead = (scores > target_scores[:, None]) | (
        (scores == target_scores[:, None]) & (columns < targets[:, None])
    )
    return ahead.sum(axis=1)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    return out


def evaluate(
    score_fn: ScoreFn,
    histories: dict[str, list[str]],
    targets: dict[str, str],
    catalog: ItemCatalog,
    ks: Sequence[int] = (10, 20),
    batch_users: int = 256,
) -> dict[str, float]:
    """Full-ranking metrics of ``score_fn`` for every user in ``targets``."""
    users = sorted(targets)
    ranks = []
    for start in range(0, len(users), batch_users):
        batch = users[start:start + batch_users]
        hist = [histories[u] for u in batch]
        scores = score_fn(hist)
        tgt = np.array([catalog.index_of(targets[u]) for u in batch], dtype=np.int64)
        excl = [catalog.indices_of(h) for h in hist]
        ranks.append(target_ranks(scores, tgt, excl))
    return metrics_from_ranks(np.concatenate(ranks), ks)


def popularity_scores(histories: dict[str, list[str]], catalog: ItemCatalog) -> np.ndarray:
    """Interaction count per catalog row, over the given histories (the training data)."""
    counts = Counter(item for seq in histories.values() for item in seq)
    out = np.zeros(catalog.num_embeddings, dtype=np.float64)
    for item, n in counts.items():
        out[catalog.index_of(item)] = n
    out[:FIRST_ITEM_INDEX] = 0.0
    return out


def popularity_baseline(histories: dict[str, list[str]], catalog: ItemCatalog) -> ScoreFn:
    scores = popularity_scores(histories, catalog)
    return lambda hist: np.tile(scores, (len(hist), 1))
