import numpy as np
import pytest
import torch

from export.model.ann import (
    ANN_KIND,
    EXACT_MAX_ITEMS,
    KINDS,
    RetrievalIndexConfig,
    build_index,
    choose_index,
    config_for,
    load_index,
)
from export.model.retrieval import TopKRetrieval
from features.catalog import FIRST_ITEM_INDEX, PAD_INDEX

pytest.importorskip("faiss")

NUM_ITEMS, DIM, K = 2_000, 16, 10


def clustered(num_items: int, num_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm items around 20 cluster centres (rows 0/1 reserved) and queries drawn alike."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))

    def draw(n: int) -> np.ndarray:
        x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    queries = draw(num_queries)
    # Reserved rows equal to a query: they would be its top hit if they were indexed.
    return np.vstack([queries[:FIRST_ITEM_INDEX], draw(num_items)]), queries


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(NUM_ITEMS, 32)


@pytest.fixture(scope="module")
def indexes(data):
    items, _ = data
    return {kind: build_index(items, config_for(kind, NUM_ITEMS)) for kind in KINDS}


def seen(items: np.ndarray, queries: np.ndarray, count: int) -> list[np.ndarray]:
    """Every other item of each query's exact top 2*count: exclusions that hit the result list."""
    top, _ = build_index(items, RetrievalIndexConfig("exact")).search(queries, 2 * count)
    return [row[::2] for row in top]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_returns_k_sorted_results_without_reserved_or_excluded_ids(kind, data, indexes):
    items, queries = data
    exclude = seen(items, queries, 50)
    for excl in (None, exclude):
        ids, scores = indexes[kind].search(queries, K, excl)
        assert ids.shape == scores.shape == (len(queries), K)
        assert ids.dtype == np.int64 and scores.dtype == np.float32
        assert np.all(ids >= FIRST_ITEM_INDEX) and np.all(ids < len(items))
        assert np.all(scores[:, :-1] >= scores[:, 1:])
        for row, row_ids in enumerate(ids):
            assert len(set(row_ids.tolist())) == K
            if excl is not None:
                assert not np.isin(row_ids, excl[row]).any()
        np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, ids, axis=1), atol=1e-5)


def test_exact_matches_topk_retrieval(data, indexes):
    items, queries = data
    exclude = np.stack(seen(items, queries, 20))
    retrieval = TopKRetrieval(torch.from_numpy(items))
    with torch.no_grad():
        want_ids, want_scores = retrieval.top_k(retrieval.scores(torch.from_numpy(queries)),
                                                torch.from_numpy(exclude), K)
    ids, scores = indexes["exact"].search(queries, K, exclude)
    np.testing.assert_array_equal(ids, want_ids.numpy())
    np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_recall_against_exact_on_clustered_data(kind, data, indexes):
    items, queries = data
    for excl in (None, seen(items, queries, 50)):
        truth, _ = indexes["exact"].search(queries, K, excl)
        ids, _ = indexes[kind].search(queries, K, excl)
        recall = np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(ids, truth, strict=True)])
        assert recall >= 0.9, f"{kind} recall@{K} {recall:.3f}"


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, data, indexes, tmp_path):
    items, queries = data
    exclude = seen(items, queries, 10)
    path = tmp_path / f"{kind}.index"
    indexes[kind].save(path)
    loaded = load_index(path)
    assert loaded.config == indexes[kind].config and loaded.num_items == NUM_ITEMS
    want = indexes[kind].search(queries, K, exclude)
    for got, expected in zip(loaded.search(queries, K, exclude), want, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_small_catalog_returns_what_is_left_then_pads(kind):
    items, queries = clustered(50, 2)
    index = build_index(items, config_for(kind, 50))
    exclude = [np.arange(FIRST_ITEM_INDEX, FIRST_ITEM_INDEX + 45)] * 2  # 5 items left
    ids, scores = index.search(queries, K, exclude)
    for row_ids, row_scores in zip(ids, scores, strict=True):
        assert sorted(row_ids[:5].tolist()) == list(range(FIRST_ITEM_INDEX + 45, FIRST_ITEM_INDEX + 50))
        assert np.all(row_ids[5:] == -1) and np.all(np.isneginf(row_scores[5:]))


def test_ivf_widens_the_search_when_probed_lists_are_all_excluded(data):
    items, queries = data
    index = build_index(items, RetrievalIndexConfig("ivf", ivf_nlist=32, ivf_nprobe=1))
    # All of each query's top 300 (~5 lists' worth): the one probed list has nothing left to return.
    exclude = list(build_index(items, RetrievalIndexConfig("exact")).search(queries, 300)[0])
    _, raw = index._index.search(queries, K + 300)  # one probe, internal ids, -1 = nothing found
    left = [np.setdiff1d(row[row >= 0] + FIRST_ITEM_INDEX, e) for row, e in zip(raw, exclude, strict=True)]
    assert all(len(row) < K for row in left)  # precondition: the widening path is exercised
    ids, _ = index.search(queries, K, exclude)
    assert np.all(ids >= FIRST_ITEM_INDEX)
    for row, row_ids in enumerate(ids):
        assert not np.isin(row_ids, exclude[row]).any()


@pytest.mark.parametrize("kind", KINDS)
def test_padded_and_out_of_range_exclusions_are_ignored(kind, data, indexes):
    items, queries = data
    plain = indexes[kind].search(queries[:2], K)
    padded = np.array([[PAD_INDEX, 1, -3, 10**9]] * 2)
    for got, want in zip(indexes[kind].search(queries[:2], K, padded), plain, strict=True):
        np.testing.assert_array_equal(got, want)
    ids, scores = indexes[kind].search(queries[:0], K)
    assert ids.shape == scores.shape == (0, K)


def test_choose_index_exact_for_small_catalogs_ann_for_large():
    assert choose_index(10_000).kind == "exact"
    assert choose_index(EXACT_MAX_ITEMS).kind == "exact"
    large = choose_index(EXACT_MAX_ITEMS + 1)
    assert large.kind == ANN_KIND != "exact"
    assert choose_index(1_000_000) == config_for(ANN_KIND, 1_000_000)


def test_config_validation():
    with pytest.raises(ValueError):
        RetrievalIndexConfig(kind="lsh")
    with pytest.raises(ValueError):
        RetrievalIndexConfig(kind="ivf", ivf_nprobe=0)
    ivf = config_for("ivf", 1_000_000)
    assert 1 <= ivf.ivf_nprobe <= ivf.ivf_nlist <= 1_000_000 // 39
