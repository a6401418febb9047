"""export/model/retrieval.py: the fused TorchScript module reads the history's event types, in the
contract's input order (HISTORY, HISTORY_TYPES, EXCLUDE, K)."""

import numpy as np
import torch

from export.model.retrieval import FusedRecommender, TopKRetrieval
from export.model.towers import TwoTower
from features import contract as sig
from features.behaviour import Step, type_code
from features.catalog import FIRST_ITEM_INDEX
from features.model_inputs import build_inputs
from tests.support.models import with_type_effects

L = 4


def fused_module(model: TwoTower) -> torch.jit.ScriptModule:
    model = model.eval()
    with torch.no_grad():
        return torch.jit.script(FusedRecommender(model.user_tower, TopKRetrieval(model.item_embeddings())))


def tensors(inputs) -> list[torch.Tensor]:
    return [torch.from_numpy(a) for a in inputs.tensors().values()]


def test_forward_takes_the_contracts_inputs_in_order(catalog):
    fused = fused_module(TwoTower(catalog, dim=8, sequence_length=L))
    arguments = [a.name for a in fused.forward.schema.arguments][1:]  # drop self
    assert arguments == ["history", "types", "exclude", "k"]
    assert list(build_inputs(["a"], catalog, L, 3).tensors()) == [
        sig.HISTORY, sig.HISTORY_TYPES, sig.EXCLUDE, sig.K]


def test_the_same_items_with_other_types_score_differently(catalog):
    torch.manual_seed(0)
    model = with_type_effects(TwoTower(catalog, dim=8, sequence_length=L))
    fused = fused_module(model)
    items = ["a", "b", "c"]
    viewed = build_inputs([Step(i, "view") for i in items], catalog, L, 3)
    bought = build_inputs([Step(i, "purchase") for i in items], catalog, L, 3)
    assert np.array_equal(viewed.history, bought.history)
    assert viewed.history_types[0, -1] == type_code("view") != bought.history_types[0, -1]
    with torch.no_grad():
        scores_viewed = fused.scores(*tensors(viewed)[:2])
        scores_bought = fused.scores(*tensors(bought)[:2])
        (_, top_viewed), (_, top_bought) = fused(*tensors(viewed)), fused(*tensors(bought))
    assert not torch.allclose(scores_viewed, scores_bought)
    assert not torch.allclose(top_viewed, top_bought)
    # and what forward answers is the model's own top k of those scores
    torch.testing.assert_close(top_viewed, scores_viewed.topk(3).values)


def test_a_fresh_model_reads_every_type_as_no_effect(catalog):
    """Types the model was never trained with must not move an answer: the tower starts there."""
    torch.manual_seed(0)
    fused = fused_module(TwoTower(catalog, dim=8, sequence_length=L))
    viewed = build_inputs([Step(i, "view") for i in "abc"], catalog, L, 3)
    plain = build_inputs(list("abc"), catalog, L, 3)  # no type known: "unknown"
    with torch.no_grad():
        torch.testing.assert_close(fused.scores(*tensors(viewed)[:2]), fused.scores(*tensors(plain)[:2]))


def test_embed_is_the_user_tower_on_both_inputs(catalog):
    torch.manual_seed(0)
    model = with_type_effects(TwoTower(catalog, dim=8, sequence_length=L)).eval()
    fused = fused_module(model)
    inputs = build_inputs([Step("a", "cart"), Step("b", "click")], catalog, L, 2)
    history, types = tensors(inputs)[:2]
    with torch.no_grad():
        torch.testing.assert_close(fused.embed(history, types), model.user_tower(history, types))


def test_retrieval_is_the_exact_top_k_of_the_rows_whatever_is_excluded():
    """The matrix is stored as columns; answers are those of plain row-wise scoring. Exclusions
    outside the matrix (a stale client's) are ignored, PAD and OOV are never answered."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 6, generator=generator)
    retrieval = torch.jit.script(TopKRetrieval(rows))
    torch.testing.assert_close(retrieval.item_embeddings(), rows)
    assert retrieval.item_columns.shape == (6, 40) and retrieval.item_columns.is_contiguous()
    assert retrieval.num_items() == 40 - FIRST_ITEM_INDEX
    users = torch.randn(3, 6, generator=generator)
    exclude = torch.tensor([[5, 7, -3, 0], [40, 1000, 0, 0], [9, 9, 2, 39]])
    k = retrieval.num_items() - 4  # every recommendable item of the first row
    index, score = retrieval(users, exclude, torch.full((3, 1), k, dtype=torch.int32))
    expected = users @ rows.T
    for row, banned in enumerate(({5, 7}, set(), {9, 2, 39})):
        keep = [i for i in range(FIRST_ITEM_INDEX, 40) if i not in banned]
        want = sorted(keep, key=lambda i: -expected[row, i].item())[:k]
        assert index[row].tolist() == want
        torch.testing.assert_close(score[row], expected[row, want])
