import numpy as np
import pytest

from export.data.interactions import load_movielens_100k
from export.data.split import leave_last_out
from export.evaluation.baselines import (
    BASELINES,
    ease_matrix,
    evaluate_baselines,
    fit_cooccurrence,
    fit_ease,
    fit_itemknn,
    fit_popularity,
    item_similarity_matrix,
    transition_counts,
)
from export.evaluation.metrics import top_k
from features.catalog import FIRST_ITEM_INDEX


def best(score_fn, catalog, history):
    """The single best unseen item for one user, under the evaluator's exclusions and tie rule."""
    top = top_k(score_fn([history]), [catalog.indices_of(history)], 1)
    return catalog.item_at(int(top[0, 0])).item_id


def test_popularity_is_kept_in_evaluate_for_existing_callers(catalog):
    histories = {"u1": ["a", "b"], "u2": ["b", "c"]}
    hist = [["a"], ["c"]]
    expected = fit_popularity(histories, catalog)(hist)
    assert np.array_equal(fit_popularity(histories, catalog)(hist), expected)
    assert expected[0, catalog.index_of("b")] == 2 and expected.shape == (2, catalog.num_embeddings)


def test_itemknn_cosine_by_hand(catalog):
    # a: {u1, u2}, b: {u1, u2}, c: {u2, u3}, d: {u3}
    histories = {"u1": ["a", "b"], "u2": ["a", "b", "c"], "u3": ["c", "d"]}
    sim = item_similarity_matrix(histories, catalog)
    a, b, c, d, e = (catalog.index_of(i) for i in "abcde")
    assert sim[a, b] == pytest.approx(1.0)  # 2 / sqrt(2 * 2)
    assert sim[a, c] == pytest.approx(0.5)  # 1 / sqrt(2 * 2)
    assert sim[c, d] == pytest.approx(1 / np.sqrt(2))  # 1 / sqrt(2 * 1)
    assert sim[a, d] == 0.0 and sim[e].sum() == 0.0
    assert np.allclose(sim, sim.T) and np.all(np.diag(sim) == 0.0)
    # score = sum of similarities to the history items
    scores = fit_itemknn(histories, catalog)([["a", "c"]])[0]
    assert scores[b] == pytest.approx(1.0 + 0.5)
    assert scores[d] == pytest.approx(1 / np.sqrt(2))


def test_ease_has_zero_diagonal_and_ranks_the_co_purchased_item_first(catalog):
    # a and b always go together; c and d go together; e is popular with everyone
    histories = {
        "u1": ["a", "b", "e"], "u2": ["a", "b", "e"], "u3": ["a", "b"],
        "u4": ["c", "d", "e"], "u5": ["c", "d", "e"], "u6": ["c", "d"], "u7": ["e", "f"],
    }
    b = ease_matrix(histories, catalog, lam=1.0)
    assert np.all(np.diag(b) == 0.0)
    assert np.all(b[:FIRST_ITEM_INDEX] == 0.0) and np.all(b[:, :FIRST_ITEM_INDEX] == 0.0)
    fit = fit_ease(histories, catalog, lam=1.0)
    assert best(fit, catalog, ["a"]) == "b"
    assert best(fit, catalog, ["d"]) == "c"


def test_cooccurrence_follows_the_last_item(catalog):
    histories = {"u1": ["a", "b", "c"], "u2": ["a", "b"], "u3": ["c", "a", "d"], "u4": ["e", "d"]}
    counts = transition_counts(histories, catalog)
    a, b, c, d = (catalog.index_of(i) for i in "abcd")
    assert counts[a, b] == 2 and counts[b, a] == 0 and counts[c, a] == 1
    assert counts.sum() == 6  # one per adjacent pair: 2 + 1 + 2 + 1
    symmetric = transition_counts(histories, catalog, symmetric=True)
    assert symmetric[b, a] == 2 and np.array_equal(symmetric, symmetric.T)

    fit = fit_cooccurrence(histories, catalog)
    assert best(fit, catalog, ["d", "a"]) == "b"  # a -> b twice, a -> d once
    assert best(fit, catalog, ["a", "b"]) == "c"  # only the last item counts
    assert best(fit, catalog, ["f", "c"]) == "a"


def test_cooccurrence_falls_back_to_popularity(catalog):
    histories = {"u1": ["a", "b", "c"], "u2": ["b", "c"], "u3": ["c", "d"]}
    fit = fit_cooccurrence(histories, catalog)
    # f never had a successor: popularity decides (c 3, b 2, a 1, d 1 -> c)
    assert best(fit, catalog, ["f"]) == "c"
    assert best(fit, catalog, []) == "c"
    # b -> c once; among the zero counts popularity still orders a before e
    scores = fit([["b"]])[0]
    assert scores[catalog.index_of("c")] > 1 > scores[catalog.index_of("a")] > scores[catalog.index_of("e")]


# docs/evaluation.md, "Reference numbers": Recall@10 on ML-100K test
REFERENCE_RECALL_AT_10 = {"popularity": 0.086, "itemknn": 0.109, "ease": 0.149, "cooccurrence": 0.155}


def test_every_baseline_has_a_reference_number():
    assert set(BASELINES) == set(REFERENCE_RECALL_AT_10)


@pytest.fixture(scope="module")
def movielens_test_results():
    dataset = load_movielens_100k()
    split = leave_last_out(dataset)
    histories = split.history_for("test")
    return evaluate_baselines(histories, split.test, dataset.catalog)


@pytest.mark.parametrize("name", list(REFERENCE_RECALL_AT_10))
def test_baselines_reproduce_the_design_reference_on_movielens(movielens_test_results, name):
    # a regression test of the protocol (split, exclusions, tie rule), not of speed
    metrics = movielens_test_results[name]
    assert metrics["recall@10"] == pytest.approx(REFERENCE_RECALL_AT_10[name], abs=0.015)
    assert 0.0 < metrics["coverage@10"] <= metrics["coverage@20"] <= 1.0


def _without(histories, items):
    return {u: [i for i in seq if i not in items] for u, seq in histories.items()}


def test_a_catalog_above_the_dense_cap_fits_its_most_frequent_items(catalog, monkeypatch):
    import export.evaluation.baselines as baselines

    histories = {"u1": ["a", "b", "c"], "u2": ["a", "b", "d"], "u3": ["b", "c", "e"],
                 "u4": ["a", "c", "f"], "u5": ["a", "b", "c", "d"], "u6": ["d", "e"],
                 "u7": ["a", "f", "d"]}
    hist = [["a"], ["d", "e"], ["f", "c"]]
    uncapped = {name: BASELINES[name](histories, catalog)(hist) for name in BASELINES}
    # a 5, b 4, c 4, d 4, e 2, f 2: above a cap of 4 rows, the 4 most frequent are a, b, c, d
    monkeypatch.setattr(baselines, "DENSE_ITEMS_MAX", 4)
    columns = baselines.fitted_items(histories, catalog)
    assert [catalog.item_at(int(c)).item_id for c in columns] == ["a", "b", "c", "d"]
    rare = {"e", "f"}
    for name, fit in (("ease", fit_ease), ("itemknn", fit_itemknn)):
        scores = fit(histories, catalog)(hist)
        assert scores.shape == (3, catalog.num_embeddings)
        # exactly the uncapped fit on the histories without the left-out items
        monkeypatch.setattr(baselines, "DENSE_ITEMS_MAX", 10 ** 6)
        expected = fit(_without(histories, rare), catalog)(hist)
        monkeypatch.setattr(baselines, "DENSE_ITEMS_MAX", 4)
        assert np.allclose(scores, expected), name
        assert not np.allclose(scores, uncapped[name]), name  # the cap did change the fit
        assert np.all(scores[:, [catalog.index_of(i) for i in rare]] == 0.0)
    counts = transition_counts(histories, catalog, columns=columns)
    assert counts.shape == (4, 4)
    position = {catalog.item_at(int(c)).item_id: p for p, c in enumerate(columns)}
    # a->b 3, b->c 3, a->c, b->d, c->d once each; u7's a -> f -> d is no a->d pair
    assert counts[position["a"], position["b"]] == 3 and counts[position["b"], position["c"]] == 3
    assert counts[position["a"], position["d"]] == 0 and counts.sum() == 9
    cooc = fit_cooccurrence(histories, catalog)
    popular_first = cooc([["e"]])[0]  # a left-out last item: the popularity ranking
    assert np.array_equal(np.argsort(-popular_first, kind="stable"),
                          np.argsort(-fit_popularity(histories, catalog)([["e"]])[0], kind="stable"))
    assert best(cooc, catalog, ["c", "a"]) == "b"


def test_gram_matrix_is_the_same_in_user_chunks(catalog, monkeypatch):
    import export.evaluation.baselines as baselines

    histories = {"u1": ["a", "b", "c"], "u2": ["a", "b"], "u3": ["c", "a", "d"], "u4": ["e", "d"]}
    whole = baselines.gram_matrix(histories, catalog)
    monkeypatch.setattr(baselines, "GRAM_USERS_PER_CHUNK", 1)
    assert np.array_equal(baselines.gram_matrix(histories, catalog), whole)
    assert whole[catalog.index_of("a"), catalog.index_of("b")] == 2


def test_items_modelled_is_the_catalog_or_the_cap(catalog, monkeypatch):
    import export.evaluation.baselines as baselines

    assert baselines.items_modelled(catalog) == catalog.num_items == 6
    monkeypatch.setattr(baselines, "DENSE_ITEMS_MAX", 4)
    assert baselines.items_modelled(catalog) == 4
