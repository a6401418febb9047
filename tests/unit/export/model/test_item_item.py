import numpy as np
import pytest
import torch

from export.data.split import leave_last_out
from export.data.synthetic import generate
from export.evaluation.baselines import binary_matrix, ease_matrix
from export.model.item_item import Blended, ItemItem, fit_item_item
from export.model.towers import TwoTower
from export.train import (
    TrainConfig,
    encode_histories,
    load_checkpoint,
    new_model,
    save_checkpoint,
    score_histories,
)
from features.catalog import OOV_INDEX, PAD_INDEX

L = 6


@pytest.fixture(scope="module")
def shop():
    dataset = generate(n_users=80, n_items=40, n_categories=3, days=5, seed=0).to_dataset()
    return dataset.catalog, leave_last_out(dataset).train


def term_scores(term: ItemItem, histories, catalog) -> np.ndarray:
    rows = encode_histories(histories, catalog, L)[:, :L]
    with torch.no_grad():
        return (term(rows) @ term.targets.T).numpy()


def test_at_full_rank_the_term_is_ease_on_the_window(shop):
    catalog, sequences = shop
    term = fit_item_item(sequences, catalog, rank=catalog.num_embeddings)
    histories = list(sequences.values())[:20]
    windows = [h[-L:] for h in histories]  # the user tower's input: the last L steps
    expected = binary_matrix(windows, catalog) @ ease_matrix(sequences, catalog)
    np.testing.assert_allclose(term_scores(term, histories, catalog), expected, atol=1e-4)


def test_randomised_svd_is_repeatable_and_close_to_the_exact_truncation(shop):
    catalog, sequences = shop
    rank = 8  # 42 rows > 4 * 8: the randomised path
    a, b = fit_item_item(sequences, catalog, rank), fit_item_item(sequences, catalog, rank)
    assert torch.equal(a.sources, b.sources) and torch.equal(a.targets, b.targets)
    u, s, vt = np.linalg.svd(ease_matrix(sequences, catalog))
    best = (u[:, :rank] * s[:rank]) @ vt[:rank]
    fitted = (a.sources @ a.targets.T).numpy()
    assert np.linalg.norm(fitted - best) <= 0.05 * np.linalg.norm(best)


def test_an_item_counts_once_and_pad_or_out_of_range_ids_add_nothing():
    torch.manual_seed(0)
    term = ItemItem(torch.randn(6, 3), torch.randn(6, 3))
    once = term(torch.tensor([[PAD_INDEX, 2, 3]]))
    assert torch.allclose(term(torch.tensor([[3, 2, 3]])), once)
    assert torch.allclose(term(torch.tensor([[99, -5, PAD_INDEX, OOV_INDEX, 2, 3]])), once)
    torch.testing.assert_close(once[0], term.sources[2] + term.sources[3])


def test_blended_score_is_towers_plus_weight_times_term_and_scripts(shop, tmp_path):
    catalog, sequences = shop
    torch.manual_seed(0)
    towers = TwoTower(catalog, dim=8, sequence_length=L).eval()
    term = fit_item_item(sequences, catalog, rank=8)
    blended = Blended(towers, term, 0.3).eval()
    histories = list(sequences.values())[:10]
    expected = score_histories(towers, catalog, L)(histories) + 0.3 * term_scores(term, histories, catalog)
    np.testing.assert_allclose(score_histories(blended, catalog, L)(histories), expected, atol=1e-5)

    rows = encode_histories(histories, catalog, L)
    scripted = torch.jit.script(blended.user_tower)
    history, types = rows[:, :L], rows[:, L:]
    torch.testing.assert_close(scripted(history, types), blended.user_tower(history, types))
    index = torch.tensor([0, 3, 999])
    items = blended.item_tower(index)  # an id outside the catalog: the towers' OOV row, no term
    torch.testing.assert_close(items[:2], blended.item_embeddings()[index[:2]])
    assert torch.all(items[2, 8:] == 0)

    # A checkpoint's config rebuilds the blended model (factors from the state dict).
    config = TrainConfig(dim=8, sequence_length=L, members=1, item_item_rank=8, item_item_weight=0.3)
    save_checkpoint(blended, None, config, [], tmp_path / "best.pt")
    loaded = new_model(catalog, config)
    load_checkpoint(loaded, tmp_path / "best.pt")
    assert isinstance(loaded, Blended)
    np.testing.assert_allclose(score_histories(loaded.eval(), catalog, L)(histories), expected, atol=1e-5)


def test_a_weight_of_zero_is_not_a_blend(shop):
    catalog, sequences = shop
    with pytest.raises(ValueError, match="positive"):
        Blended(TwoTower(catalog, dim=8), fit_item_item(sequences, catalog, rank=4), 0.0)
