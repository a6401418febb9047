import numpy as np
import pytest

from export.evaluation.baselines import fit_popularity
from export.evaluation.metrics import (
    coverage,
    evaluate,
    metrics_from_ranks,
    target_ranks,
    top_k,
)
from features.catalog import FIRST_ITEM_INDEX


def test_ranks_exclude_seen_items_and_reserved_rows():
    # rows 0,1 are PAD/OOV: huge scores there must not count
    scores = np.array([[9.0, 9.0, 0.1, 0.9, 0.5, 0.7]])
    # target index 4 (0.5); index 3 (0.9) is excluded, index 5 (0.7) is ahead
    assert target_ranks(scores, np.array([4]), [np.array([3])]).tolist() == [1]
    assert target_ranks(scores, np.array([4]), [np.array([], dtype=np.int64)]).tolist() == [2]


def test_ties_are_broken_by_item_index_not_in_the_targets_favour():
    scores = np.zeros((1, 6))
    assert target_ranks(scores, np.array([5]), [np.array([], dtype=np.int64)]).tolist() == [3]


def test_excluding_the_target_is_an_error():
    with pytest.raises(ValueError):
        target_ranks(np.ones((1, 4)), np.array([2]), [np.array([2])])


def test_metrics_by_hand():
    ranks = np.array([0, 1, 10, 30])
    m = metrics_from_ranks(ranks, ks=(10, 20))
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    assert m["recall@20"] == pytest.approx(0.75)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(12)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 31) / 4)


def test_popularity_ranks_most_frequent_unseen_item_first(catalog):
    histories = {"u1": ["a", "b"], "u2": ["b", "c"], "u3": ["b", "c", "d"]}
    # u1 has seen a, b: c (2 interactions) is the most popular candidate
    m = evaluate(fit_popularity(histories, catalog), {"u1": ["a", "b"]}, {"u1": "c"}, catalog)
    assert m["recall@10"] == 1.0 and m["ndcg@10"] == 1.0
    m = evaluate(fit_popularity(histories, catalog), {"u1": ["a", "b"]}, {"u1": "d"}, catalog)
    assert m["mrr"] == pytest.approx(1 / 2)
    assert FIRST_ITEM_INDEX == 2


def test_top_k_uses_the_same_exclusions_and_tie_rule_as_ranks():
    scores = np.array([[9.0, 9.0, 0.5, 0.9, 0.5, 0.5, 0.1]])
    exclude = [np.array([3])]
    # 3 is excluded; 2, 4, 5 tie at 0.5 and go in index order
    assert top_k(scores, exclude, 4).tolist() == [[2, 4, 5, 6]]
    # fewer candidates than k: padded with -1, never an excluded or reserved row
    assert top_k(scores, exclude, 7).tolist() == [[2, 4, 5, 6, -1, -1, -1]]


def test_target_is_in_top_k_exactly_when_its_rank_is_below_k():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 30)).astype(float)  # many ties
    targets = rng.integers(FIRST_ITEM_INDEX, 30, size=50)
    exclude = [np.setdiff1d(rng.integers(FIRST_ITEM_INDEX, 30, size=5), [t]) for t in targets]
    ranks = target_ranks(scores, targets, exclude)
    for k in (1, 5, 10):
        top = top_k(scores, exclude, k)
        assert [t in row for t, row in zip(targets, top, strict=True)] == (ranks < k).tolist()


def test_coverage_by_hand(catalog):
    fixed = np.array([0.0, 0.0, 6, 5, 4, 3, 2, 1])  # a > b > c > d > e > f
    histories = {"u1": ["a"], "u2": ["b", "c"]}
    targets = {"u1": "b", "u2": "a"}
    m = evaluate(lambda hist: np.tile(fixed, (len(hist), 1)), histories, targets, catalog, ks=(1, 2))
    # top-1: u1 b, u2 a -> {a, b}; top-2: u1 b c, u2 a d -> {a, b, c, d}
    assert m["coverage@1"] == pytest.approx(2 / 6)
    assert m["coverage@2"] == pytest.approx(4 / 6)
    assert coverage(np.array([[2, 3, -1], [3, 7, -1]]), catalog) == pytest.approx(3 / 6)


def test_evaluate_reports_all_metrics_in_order(catalog):
    m = evaluate(fit_popularity({"u": ["a", "b"]}, catalog), {"u": ["a"]}, {"u": "c"}, catalog)
    assert list(m) == ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr", "coverage@10", "coverage@20"]
    # one user, 5 candidates: everything unseen is shown
    assert m["coverage@10"] == pytest.approx(5 / 6)


def test_explicit_exclusions_replace_the_history():
    from export.evaluation.metrics import evaluate
    from features.catalog import Item, ItemCatalog
    catalog = ItemCatalog.from_items([Item(i, i) for i in "abc"])
    scores = lambda batch: np.tile(np.array([0, 0, 3.0, 2.0, 1.0]), (len(batch), 1))  # noqa: E731
    # "a" is in the history but not excluded: a next-purchase target may be an item already seen
    m = evaluate(scores, {"u": ["a"]}, {"u": "a"}, catalog, ks=(1,), exclude={"u": []})
    assert m["recall@1"] == 1.0
    m = evaluate(scores, {"u": ["a"]}, {"u": "b"}, catalog, ks=(1,))
    assert m["recall@1"] == 1.0  # "a" excluded as history: "b" comes first
