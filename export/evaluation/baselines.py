"""Classical baselines the two-tower model has to beat, all fitted on the same training histories.

Each ``fit_<name>(histories, catalog, ...)`` returns a :data:`export.evaluation.metrics.ScoreFn`: given a
batch of users' chronological histories it returns scores ``[U, catalog.num_embeddings]``. Rows
below ``FIRST_ITEM_INDEX`` (PAD/OOV) and the items a user has already seen are masked by the
evaluator, so the baselines do not mask them themselves.

The item-item models (itemknn, EASE, co-occurrence) are dense float64 matrices over the catalog,
which is right for catalogs of a few thousand items (ML-100K: 1,682). A larger catalog would not
fit in memory: EASE holds three such matrices while it inverts one, 9.6 GB at 20,000 items. So a
catalog above ``DENSE_ITEMS_MAX`` gets its item-item baselines fitted on its ``DENSE_ITEMS_MAX``
most interacted-with items (``fitted_items``). The other items score 0 (or only their popularity
tie-break, for co-occurrence), and their interactions are left out of the fit. The report records
the cap (``baseline_items``).

Reference numbers on ML-100K test are in docs/evaluation.md ("Reference numbers");
tests/unit/export/evaluation/test_baselines.py checks them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from export.evaluation.metrics import ScoreFn, evaluate
from features.catalog import FIRST_ITEM_INDEX, ItemCatalog

EASE_LAMBDA = 100.0
DENSE_ITEMS_MAX = 20_000  # catalog rows an item-item baseline models (see the module docstring)
GRAM_USERS_PER_CHUNK = 4096  # bounds the dense user-item block gram_matrix holds at once


def fitted_items(histories: dict[str, list[str]], catalog: ItemCatalog,
                 max_items: int | None = None) -> np.ndarray:
    """The catalog rows the item-item baselines model, ascending: every row, or for a catalog
    with more than ``max_items`` (default ``DENSE_ITEMS_MAX``) rows the ``max_items`` most
    frequent in ``histories`` (ties: lower row first)."""
    max_items = DENSE_ITEMS_MAX if max_items is None else max_items
    if catalog.num_embeddings <= max_items:
        return np.arange(catalog.num_embeddings)
    counts = popularity_scores(histories, catalog)
    return np.sort(np.argsort(-counts, kind="stable")[:max_items])


def items_modelled(catalog: ItemCatalog) -> int:
    """How many of the catalog's items the item-item baselines model (the report's
    ``baseline_items``): all, or ``DENSE_ITEMS_MAX`` above it."""
    return catalog.num_items if catalog.num_embeddings <= DENSE_ITEMS_MAX else DENSE_ITEMS_MAX


def _positions(columns: np.ndarray, catalog: ItemCatalog) -> np.ndarray:
    """Catalog row -> its position in ``columns``, -1 where it is not one of them."""
    position = np.full(catalog.num_embeddings, -1, dtype=np.int64)
    position[columns] = np.arange(len(columns))
    return position


def binary_matrix(
    histories: Sequence[Sequence[str]], catalog: ItemCatalog, dtype: type = np.float64,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """User-item matrix ``[U, num_embeddings]``: 1 where the user interacted with the item.
    ``columns`` (catalog rows, ascending): only those columns, ``[U, len(columns)]``.

    Unknown ids land in the OOV column, which is zeroed so they contribute nothing.
    """
    columns = np.arange(catalog.num_embeddings) if columns is None else columns
    position = _positions(columns, catalog)
    x = np.zeros((len(histories), len(columns)), dtype=dtype)
    for row, seq in enumerate(histories):
        kept = position[catalog.indices_of(seq)]
        x[row, kept[kept >= 0]] = 1.0
    x[:, columns < FIRST_ITEM_INDEX] = 0.0
    return x


def gram_matrix(histories: dict[str, list[str]], catalog: ItemCatalog,
                columns: np.ndarray | None = None) -> np.ndarray:
    """``X^T X`` of the binary user-item matrix (over ``columns``, see ``binary_matrix``): how
    many users share each pair of items."""
    users = list(histories.values())
    size = catalog.num_embeddings if columns is None else len(columns)
    gram = np.zeros((size, size), dtype=np.float32)
    for start in range(0, len(users), GRAM_USERS_PER_CHUNK):
        x = binary_matrix(users[start:start + GRAM_USERS_PER_CHUNK], catalog, np.float32, columns)
        # float32 counts are exact below 2**24 and the product is several times faster than float64
        gram += x.T @ x
    return gram.astype(np.float64)


def _spread(scores: np.ndarray, columns: np.ndarray, catalog: ItemCatalog) -> np.ndarray:
    """Scores over ``columns`` -> scores over the catalog, 0 elsewhere."""
    if len(columns) == catalog.num_embeddings:
        return scores
    out = np.zeros((len(scores), catalog.num_embeddings), dtype=scores.dtype)
    out[:, columns] = scores
    return out


def popularity_scores(histories: dict[str, list[str]], catalog: ItemCatalog) -> np.ndarray:
    """Interaction count per catalog row, over the given histories (the training data)."""
    counts = np.zeros(catalog.num_embeddings, dtype=np.float64)
    for seq in histories.values():
        np.add.at(counts, catalog.indices_of(seq), 1.0)
    counts[:FIRST_ITEM_INDEX] = 0.0
    return counts


def fit_popularity(histories: dict[str, list[str]], catalog: ItemCatalog) -> ScoreFn:
    """Same scores for everyone: how often each item occurs in the training histories."""
    scores = popularity_scores(histories, catalog)
    return lambda hist: np.tile(scores, (len(hist), 1))


def item_similarity_matrix(histories: dict[str, list[str]], catalog: ItemCatalog,
                           columns: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity between the items' user columns of the binary user-item matrix.

    ``sim[i, j] = |users(i) & users(j)| / sqrt(|users(i)| * |users(j)|)``, diagonal 0.
    """
    gram = gram_matrix(histories, catalog, columns)
    norms = np.sqrt(np.diag(gram))
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    sim = gram * inverse[:, None] * inverse[None, :]
    np.fill_diagonal(sim, 0.0)
    return sim


def fit_itemknn(histories: dict[str, list[str]], catalog: ItemCatalog) -> ScoreFn:
    """Item-based kNN over all neighbours: score(j) = sum of cosine(i, j) over history items i."""
    columns = fitted_items(histories, catalog)
    sim = item_similarity_matrix(histories, catalog, columns)
    return lambda hist: _spread(binary_matrix(hist, catalog, columns=columns) @ sim, columns, catalog)


def ease_matrix(
    histories: dict[str, list[str]], catalog: ItemCatalog, lam: float = EASE_LAMBDA,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """EASE (Steck 2019): ``B = I - P / diag(P)`` with ``P = (X^T X + lam I)^-1``, so diag(B) = 0.

    Columns of items nobody interacted with (and PAD/OOV) get only ``lam`` on the diagonal, so
    they stay independent and score 0.
    """
    gram = gram_matrix(histories, catalog, columns)
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    del gram
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def fit_ease(
    histories: dict[str, list[str]], catalog: ItemCatalog, lam: float = EASE_LAMBDA
) -> ScoreFn:
    """Linear item-item autoencoder; score = x_u B."""
    columns = fitted_items(histories, catalog)
    b = ease_matrix(histories, catalog, lam, columns)
    return lambda hist: _spread(binary_matrix(hist, catalog, columns=columns) @ b, columns, catalog)


def transition_counts(
    histories: dict[str, list[str]], catalog: ItemCatalog, symmetric: bool = False,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """``counts[i, j]`` = how often item j directly follows item i in a user's sequence (over
    ``columns``, see ``binary_matrix``: a step out of them breaks no pair, it is not counted).

    ``symmetric`` also counts j followed by i. On ML-100K three quarters of the interactions share
    their timestamp with another one of the same user, so the order inside such a batch is file
    order; counting both directions makes the counts insensitive to it.
    """
    columns = np.arange(catalog.num_embeddings) if columns is None else columns
    position = _positions(columns, catalog)
    counts = np.zeros((len(columns), len(columns)), dtype=np.float64)
    for seq in histories.values():
        idx = catalog.indices_of(seq)
        first, then = position[idx[:-1]], position[idx[1:]]
        kept = (first >= 0) & (then >= 0)
        first, then = first[kept], then[kept]
        np.add.at(counts, (first, then), 1.0)
        if symmetric:
            np.add.at(counts, (then, first), 1.0)
    special = columns < FIRST_ITEM_INDEX
    counts[special, :] = 0.0
    counts[:, special] = 0.0
    return counts


def fit_cooccurrence(
    histories: dict[str, list[str]], catalog: ItemCatalog, symmetric: bool = False
) -> ScoreFn:
    """Last-item co-occurrence: score(j) = how often j followed the user's last item in training.

    Most candidates tie at 0 (on ML-100K the target has a zero count for about 60% of test
    users), so the tie order matters: ties are broken by popularity, added as a fraction below 1
    that can never reorder items with different counts. A user without history or whose last item
    has no transitions therefore gets the popularity ranking.

    On ML-100K test this gives Recall@10 .145 / NDCG@10 .079 against the reference .155 / .083
    (docs/evaluation.md). The number depends on choices the reference does not pin down: without
    the popularity tie-break .142 / .078, with ``symmetric=True`` .158 / .087 (one Recall@10 point
    is about ±.012 there).
    """
    columns = fitted_items(histories, catalog)
    counts = transition_counts(histories, catalog, symmetric, columns)
    position = _positions(columns, catalog)
    pop = popularity_scores(histories, catalog)
    tie_break = pop / (pop.max() + 1.0)

    def score(hist: Sequence[Sequence[str]]) -> np.ndarray:
        out = np.tile(tie_break, (len(hist), 1))
        for row, seq in enumerate(hist):
            last = position[catalog.index_of(seq[-1])] if len(seq) else -1
            if last >= 0:
                out[row, columns] += counts[last]
        return out

    return score


BaselineFit = Callable[[dict[str, list[str]], ItemCatalog], ScoreFn]

# name in reports -> fit function with the reference settings (docs/evaluation.md)
BASELINES: dict[str, BaselineFit] = {
    "popularity": fit_popularity,
    "itemknn": fit_itemknn,
    "ease": fit_ease,
    "cooccurrence": fit_cooccurrence,
}


def evaluate_baselines(
    histories: dict[str, list[str]],
    targets: dict[str, str],
    catalog: ItemCatalog,
    names: Sequence[str] = tuple(BASELINES),
) -> dict[str, dict[str, float]]:
    """Fit each baseline on ``histories`` and evaluate it on ``targets`` with the same histories.

    ``histories`` is both the training data and what each user has seen, as in the pipeline's
    test stage (``split.history_for("test")``).
    """
    return {
        name: evaluate(BASELINES[name](histories, catalog), histories, targets, catalog)
        for name in names
    }
