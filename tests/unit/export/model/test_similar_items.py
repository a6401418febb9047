"""export/model/retrieval.py: SimilarItems, the item-to-item `similar_items` model."""

import numpy as np
import torch

from export.model.retrieval import SimilarItems, TopKRetrieval
from features.catalog import FIRST_ITEM_INDEX, OOV_INDEX, PAD_INDEX


def matrix(rows: int = 12, dim: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(rows, dim, generator=g)
    return torch.nn.functional.normalize(m, dim=1)


def test_ranks_an_items_nearest_neighbours_never_itself_pad_or_oov():
    m = matrix()
    similar = SimilarItems(TopKRetrieval(m))
    query = torch.tensor([[3], [7]], dtype=torch.int64)
    k = similar.num_items() - 1  # every other item
    index, score = similar(query, torch.zeros((2, 1), dtype=torch.int64), torch.tensor([[k], [k]]))
    for row, q in enumerate((3, 7)):
        expected = [i for i in np.argsort(-(m @ m[q]).numpy(), kind="stable")
                    if i >= FIRST_ITEM_INDEX and i != q]
        assert index[row].tolist() == expected
        np.testing.assert_allclose(score[row].numpy(), (m[expected] @ m[q]).numpy(), rtol=1e-5)
        assert {q, PAD_INDEX, OOV_INDEX}.isdisjoint(index[row].tolist())


def test_excluded_items_are_dropped_and_embed_returns_the_query_rows():
    m = matrix()
    similar = SimilarItems(TopKRetrieval(m))
    query = torch.tensor([[5]])
    full, _ = similar(query, torch.zeros((1, 1), dtype=torch.int64), torch.tensor([[3]]))
    banned = full[:, :1]
    after, _ = similar(query, banned, torch.tensor([[3]]))
    assert after[0, :2].tolist() == full[0, 1:].tolist()
    assert banned[0, 0].item() not in after[0].tolist()
    torch.testing.assert_close(similar.embed(query), m[5:6])


def test_out_of_range_items_are_bucketed_to_oov_not_a_crash():
    m = matrix()
    similar = SimilarItems(TopKRetrieval(m))
    query = torch.tensor([[100], [-4], [OOV_INDEX]])
    scores = similar.scores(query)
    torch.testing.assert_close(scores[0], scores[2])
    torch.testing.assert_close(scores[1], scores[2])
    assert torch.isinf(scores[:, :FIRST_ITEM_INDEX]).all()


def test_scripts_and_answers_as_in_pytorch():
    m = matrix()
    similar = SimilarItems(TopKRetrieval(m))
    scripted = torch.jit.script(similar)
    query = torch.tensor([[2], [11], [50]])
    exclude = torch.tensor([[4, 0], [0, 0], [3, 9]])
    k = torch.tensor([[4], [4], [4]], dtype=torch.int32)
    for a, b in zip(scripted(query, exclude, k), similar(query, exclude, k), strict=True):
        torch.testing.assert_close(a, b)
    assert scripted.num_items() == m.shape[0] - FIRST_ITEM_INDEX
    arguments = [a.name for a in scripted.forward.schema.arguments][1:]
    assert arguments == ["item", "exclude", "k"]
