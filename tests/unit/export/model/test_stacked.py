import pytest
import torch

from export.data.synthetic import generate
from export.model.item_item import Blended, ItemItem
from export.model.stacked import StackedUserTowers, served_user_tower
from export.model.towers import TwoTower
from export.train import TrainConfig, new_model
from features.behaviour import NUM_TYPE_CODES, PAD_TYPE
from features.catalog import OOV_INDEX, PAD_INDEX

L = 6


@pytest.fixture(scope="module")
def catalog():
    return generate(n_users=30, n_items=40, n_categories=3, days=3, seed=0).to_dataset().catalog


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight drawn at random, so no table starts at its "no effect" zeros (type
    embeddings, positions, "what follows") and a wrong stacking could not hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model.eval()


def inputs(catalog, length: int = L):
    """Left-padded histories of every length, an all-PAD row, OOV and out-of-range ids, and
    type codes outside the table."""
    generator = torch.Generator().manual_seed(1)
    n = catalog.num_embeddings
    history = torch.randint(2, n, (8, length), generator=generator)
    types = torch.randint(1, NUM_TYPE_CODES, (8, length), generator=generator)
    for row in range(length):
        history[row, :row] = PAD_INDEX
        types[row, :row] = PAD_TYPE
    history[6] = PAD_INDEX
    types[6] = PAD_TYPE
    history[7, :3] = torch.tensor([OOV_INDEX, -3, n + 5])
    types[7, :3] = torch.tensor([-1, NUM_TYPE_CODES, 99])
    return history, types


@pytest.mark.parametrize("members,kind,use_types,transition", [
    (3, "attention", True, False),   # the default
    (1, "attention", True, False),
    (3, "pooled", True, True),
    (2, "attention", False, True),
])
def test_stacked_towers_compute_the_members_function(catalog, members, kind, use_types, transition):
    model = randomised(new_model(catalog, TrainConfig(
        members=members, dim=8, sequence_length=L, user_tower=kind, use_types=use_types,
        transition=transition)))
    stacked = served_user_tower(model)
    assert isinstance(stacked, StackedUserTowers)
    scripted = torch.jit.script(stacked)
    for length in (L, L - 2):  # a shorter window than the tower's reads its last positions
        history, types = inputs(catalog, length)
        with torch.no_grad():
            want = model.user_tower(history, types)
            got = stacked(history, types)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            torch.testing.assert_close(scripted(history, types), got, atol=1e-6, rtol=0)
    assert got.shape == (8, members * 8)


def test_a_blended_model_serves_its_term_beside_the_stacked_towers(catalog):
    towers = randomised(new_model(catalog, TrainConfig(members=2, dim=8, sequence_length=L)))
    generator = torch.Generator().manual_seed(2)
    rows = catalog.num_embeddings
    term = ItemItem(torch.randn(rows, 4, generator=generator), torch.randn(rows, 4, generator=generator))
    model = Blended(towers, term, 0.3).eval()
    history, types = inputs(catalog)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(served_user_tower(model))(history, types),
                                   model.user_tower(history, types), atol=1e-5, rtol=0)


def test_the_table_is_the_encoders_at_inference_even_from_a_model_in_training(catalog):
    model = randomised(TwoTower(catalog, dim=8, sequence_length=L, id_dropout=0.9))
    model.train()
    stacked = StackedUserTowers([model.user_tower])
    assert model.training  # the caller's mode is left as it was
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(stacked.items, model.user_tower.encoder(
            torch.arange(catalog.num_embeddings)))  # one member: its rows alone


def test_towers_of_different_architectures_are_not_stacked(catalog):
    attention = TwoTower(catalog, dim=8, sequence_length=L)
    pooled = TwoTower(catalog, dim=8, sequence_length=L, user_tower="pooled")
    wider = TwoTower(catalog, dim=16, sequence_length=L)
    for other in (pooled, wider):
        with pytest.raises(ValueError, match="one architecture"):
            StackedUserTowers([attention.user_tower, other.user_tower])
