"""Full-ranking evaluation (never sampled metrics).

Protocol (docs/evaluation.md): per user the chronologically last interaction is the target; every
item the user has not interacted with before it is a candidate; Recall@K / NDCG@K are averaged
over users. With one target per user Recall@K is the hit rate. Coverage@K is the fraction of real
catalog items that reach at least one user's top K: a model can score well while showing everyone
the same few items.

The classical baselines live in ``export.evaluation.baselines``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from features.catalog import FIRST_ITEM_INDEX, ItemCatalog

# scores for a batch of users given their histories: [U, catalog.num_embeddings]
ScoreFn = Callable[[Sequence[Sequence[str]]], np.ndarray]


def candidate_scores(scores: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """A float64 copy of ``scores`` with PAD/OOV rows and each user's excluded items at -inf."""
    scores = scores.astype(np.float64, copy=True)
    scores[:, :FIRST_ITEM_INDEX] = -np.inf
    for row, items in enumerate(exclude):
        scores[row, items] = -np.inf
    return scores


def _ranks(candidates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    rows = np.arange(len(targets))
    target_scores = candidates[rows, targets]
    if np.isneginf(target_scores).any():
        raise ValueError("a target item is excluded from its own candidate set")
    columns = np.arange(candidates.shape[1])[None, :]
    ahead = (candidates > target_scores[:, None]) | (
        (candidates == target_scores[:, None]) & (columns < targets[:, None])
    )
    return ahead.sum(axis=1)


def _top_k(candidates: np.ndarray, k: int) -> np.ndarray:
    # a stable sort of the negated scores puts equal scores in index order: the target_ranks rule
    top = np.argsort(-candidates, axis=1, kind="stable")[:, :k]
    top[np.isneginf(np.take_along_axis(candidates, top, axis=1))] = -1
    return top


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """0-based rank of each user's target among the candidates.

    Excluded items and the PAD/OOV rows are removed from the candidates. Ties are broken by item
    index (lower first) so that constant-score baselines get a deterministic, not a lucky, rank.
    """
    return _ranks(candidate_scores(scores, exclude), targets)


def top_k(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Each user's ``k`` best candidate indices ``[U, k]``, best first.

    Same exclusions and tie rule as :func:`target_ranks`, so the target is in a user's top k
    exactly when its rank is below k. Users with fewer than ``k`` candidates are padded with -1.
    """
    return _top_k(candidate_scores(scores, exclude), k)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    return out


def coverage(top: np.ndarray, catalog: ItemCatalog) -> float:
    """Fraction of the catalog's real items that appear anywhere in ``top`` (-1 = no item)."""
    shown = np.unique(top[top >= FIRST_ITEM_INDEX])
    return float(len(shown) / catalog.num_items)


def evaluate(
    score_fn: ScoreFn,
    histories: dict[str, list[str]],
    targets: dict[str, str],
    catalog: ItemCatalog,
    ks: Sequence[int] = (10, 20),
    batch_users: int = 256,
    exclude: dict[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of ``score_fn`` for every user in ``targets``.

    The candidates are every item not in the user's history, or not in ``exclude[user]`` when
    given (a next-purchase task excludes only what the user already bought).
    Keys: ``recall@K``, ``ndcg@K`` for each K, ``mrr``, then ``coverage@K`` for each K.
    """
    users = sorted(targets)
    k_max = max(ks)
    ranks, tops = [], []
    for start in range(0, len(users), batch_users):
        batch = users[start:start + batch_users]
        hist = [histories[u] for u in batch]
        excluded = hist if exclude is None else [exclude[u] for u in batch]
        candidates = candidate_scores(score_fn(hist), [catalog.indices_of(e) for e in excluded])
        tgt = np.array([catalog.index_of(targets[u]) for u in batch], dtype=np.int64)
        ranks.append(_ranks(candidates, tgt))
        tops.append(_top_k(candidates, k_max))
    metrics = metrics_from_ranks(np.concatenate(ranks), ks)
    top = np.concatenate(tops)
    for k in ks:
        metrics[f"coverage@{k}"] = coverage(top[:, :k], catalog)
    return metrics
