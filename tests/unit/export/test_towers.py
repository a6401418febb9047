import torch

from export.retrieval import TopKRetrieval
from export.towers import TwoTower
from features.catalog import FIRST_ITEM_INDEX, PAD_INDEX


def test_embeddings_are_unit_norm_and_ids_out_of_range_are_bucketed(catalog):
    model = TwoTower(catalog, dim=8).eval()
    history = torch.tensor([[PAD_INDEX, 2, 3], [999, -4, 5]])  # second row: hostile ids
    users = model.user_tower(history)
    assert users.shape == (2, 8)
    torch.testing.assert_close(users.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(model.item_embeddings().norm(dim=1)[FIRST_ITEM_INDEX:],
                               torch.ones(catalog.num_items))


def test_torchscript_matches_eager(catalog):
    model = TwoTower(catalog, dim=8).eval()
    history = torch.randint(0, catalog.num_embeddings, (4, 5))
    scripted = torch.jit.script(model.user_tower)
    torch.testing.assert_close(scripted(history), model.user_tower(history))


def test_retrieval_never_returns_excluded_or_reserved_rows(catalog):
    model = TwoTower(catalog, dim=8).eval()
    with torch.no_grad():
        retrieval = torch.jit.script(TopKRetrieval(model.item_embeddings()))
        users = model.user_tower(torch.tensor([[2, 3, 4]]))
        exclude = torch.tensor([[2, 3, PAD_INDEX, 10_000]])  # out-of-range exclusions are ignored
        index, score = retrieval(users, exclude, catalog.num_items - 2)
    returned = set(index[0].tolist())
    assert returned == set(range(FIRST_ITEM_INDEX, catalog.num_embeddings)) - {2, 3}
    assert torch.all(score[0][:-1] >= score[0][1:])
    assert retrieval.num_items() == catalog.num_items
