import numpy as np
import pytest

from export.evaluate import evaluate, metrics_from_ranks, popularity_baseline, target_ranks
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
    m = evaluate(popularity_baseline(histories, catalog), {"u1": ["a", "b"]}, {"u1": "c"}, catalog)
    assert m["recall@10"] == 1.0 and m["ndcg@10"] == 1.0
    m = evaluate(popularity_baseline(histories, catalog), {"u1": ["a", "b"]}, {"u1": "d"}, catalog)
    assert m["mrr"] == pytest.approx(1 / 2)
    assert FIRST_ITEM_INDEX == 2
