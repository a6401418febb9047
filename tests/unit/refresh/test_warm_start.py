"""The candidate starts as the live model: every live weight kept, new items' id rows zero."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

import refresh.warm_start as warm_start_module
from export.model.item_item import Blended, fit_item_item
from export.train import TrainConfig, new_model
from export.triton.cold_items import extend_catalog, extend_model
from features.catalog import FIRST_ITEM_INDEX, Item
from refresh.catalog import extend
from refresh.warm_start import grown, load_live, refit_item_item, warm_start, zero_rows

CONFIG = TrainConfig(dim=8, sequence_length=5, transition=True, members=1)


@pytest.fixture
def live(catalog):
    torch.manual_seed(0)
    return new_model(catalog, CONFIG).eval()


def test_old_rows_are_kept_and_new_id_rows_are_zero(catalog, live):
    change = extend(catalog, {}, [Item("new1", "N1", ("Horror",), 2001, 5.0),
                                  Item("new2", "N2", ("Comedy",), None, None)])
    model = warm_start(live, catalog, change.catalog, CONFIG).eval()
    old_rows = catalog.num_embeddings
    ids = model.item_tower.encoder.id_embedding.weight
    assert torch.equal(ids[:old_rows], live.item_tower.encoder.id_embedding.weight)
    assert torch.count_nonzero(ids[old_rows:]) == 0
    assert torch.count_nonzero(model.user_tower.next_embedding.weight[old_rows:]) == 0
    projection = model.item_tower.encoder.category_projection.weight  # [dim, categories]
    assert torch.equal(projection[:, :len(catalog.categories)],
                       live.item_tower.encoder.category_projection.weight)
    assert torch.count_nonzero(projection[:, len(catalog.categories):]) == 0  # "Horror"
    with torch.no_grad():
        before, after = live.item_embeddings(), model.item_embeddings()
    # The live items are exactly where they were; the new ones come from their attributes.
    assert torch.allclose(after[FIRST_ITEM_INDEX:old_rows], before[FIRST_ITEM_INDEX:], atol=1e-6)
    assert torch.isfinite(after[old_rows:]).all() and after[old_rows:].norm(dim=1).gt(0.99).all()
    history = torch.tensor([[0, 2, 3, 4, 5]]), torch.ones(1, 5, dtype=torch.long)
    with torch.no_grad():
        assert torch.allclose(model.user_tower(*history), live.user_tower(*history), atol=1e-6)


def test_every_parameter_is_copied(catalog, live):
    model = warm_start(live, catalog, extend(catalog).catalog, CONFIG)
    for (name, a), b in zip(live.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_catalog_that_reorders_live_items_is_refused(catalog, live):
    reordered = extend(catalog).catalog
    reordered.items.reverse()
    with pytest.raises(ValueError, match="live items"):
        warm_start(live, catalog, type(catalog)(reordered.items, catalog.categories), CONFIG)


def test_grown_pads_with_zeros():
    out = grown(torch.ones(2, 3), torch.Size([4, 3]))
    assert out.sum() == 6 and torch.count_nonzero(out[2:]) == 0
    with pytest.raises(ValueError):
        grown(torch.ones(4, 3), torch.Size([2, 3]))


def test_a_live_version_with_cold_items_loads_from_the_older_checkpoint(catalog, live, tmp_path):
    """cold_items published a version with two more items: its checkpoint is the older one."""
    checkpoint = tmp_path / "older.pt"
    torch.save({"model": live.state_dict(), "config": CONFIG.as_dict()}, checkpoint)
    new = [Item("cold1", "C1", ("Comedy",), 1995, None), Item("cold2", "C2", ("Horror",), None, None)]
    served = extend_catalog(catalog, new)
    model, config = load_live(checkpoint, served)
    cold = extend_model(copy.deepcopy(live), catalog, served)  # what cold_items serves
    with torch.no_grad():
        assert torch.allclose(model.item_embeddings(), cold.item_embeddings(), atol=1e-6)
    assert config == CONFIG


def test_a_checkpoint_larger_than_the_live_catalog_is_refused(catalog, live, tmp_path):
    checkpoint = tmp_path / "bigger.pt"
    bigger = extend(catalog, {}, [Item("x", "X", ("Action",))]).catalog
    torch.save({"model": new_model(bigger, CONFIG).state_dict(), "config": CONFIG.as_dict()}, checkpoint)
    with pytest.raises(ValueError, match="not this version's checkpoint"):
        load_live(checkpoint, catalog)


def test_an_ensemble_is_warm_started_and_loaded_member_by_member(catalog, tmp_path):
    config = replace(CONFIG, members=2)
    torch.manual_seed(0)
    live = new_model(catalog, config).eval()
    change = extend(catalog, {}, [Item("new1", "N1", ("Horror",), 2031, 5.0)])
    model = warm_start(live, catalog, change.catalog, config).eval()
    old_rows = catalog.num_embeddings
    for old, new in zip(live.members, model.members, strict=True):
        ids = new.item_tower.encoder.id_embedding.weight
        assert torch.equal(ids[:old_rows], old.item_tower.encoder.id_embedding.weight)
        assert torch.count_nonzero(ids[old_rows:]) == 0
    assert zero_rows(model, old_rows).shape == (1, 16) and not zero_rows(model, old_rows).any()
    checkpoint = tmp_path / "ensemble.pt"
    torch.save({"model": live.state_dict(), "config": config.as_dict()}, checkpoint)
    served = extend_catalog(catalog, [Item("cold1", "C1", ("Comedy",), 1995, None)])
    loaded, loaded_config = load_live(checkpoint, served)
    cold = extend_model(copy.deepcopy(live), catalog, served)
    with torch.no_grad():
        assert torch.allclose(loaded.item_embeddings(), cold.item_embeddings(), atol=1e-6)
    assert loaded_config == config and loaded.item_embeddings().shape[1] == 16


@pytest.mark.parametrize(("saved", "used"), [(True, True), (False, False), (None, False)])
def test_fine_tuning_builds_the_examples_its_model_was_trained_on(catalog, live, monkeypatch,
                                                                  saved, used):
    """A checkpoint's config carries its run's whole-history choice; a warm start has no pilot,
    so an undecided (hand-made) config trains on the plain examples."""
    built = []

    def spy(sequences, catalog, length, **kwargs):
        built.append(kwargs.get("whole_history"))
        return real(sequences, catalog, length, **kwargs)

    real = warm_start_module.build_examples
    monkeypatch.setattr(warm_start_module, "build_examples", spy)
    sequences = {"u": [item.item_id for item in catalog.items[:4]]}
    records, examples = warm_start_module.finetune(
        live, catalog, sequences, replace(CONFIG, whole_history=saved, epochs=1, batch_size=4), None)
    assert built == [used] and len(records) == 1
    # three new items after the first; with whole-history rows also all four, from the others
    assert examples == (3 + 4 if used else 3)


def test_a_blended_live_model_keeps_its_term_and_refitting_it_uses_the_new_data(catalog, tmp_path):
    histories = {"u1": ["a", "b", "c"], "u2": ["a", "b", "d"], "u3": ["b", "c", "e", "f"]}
    term = fit_item_item(histories, catalog)
    # the rank the pipeline records is the fitted one (here all 8 rows, below the default 256)
    config = replace(CONFIG, item_item_weight=0.5, item_item_rank=term.sources.shape[1])
    torch.manual_seed(0)
    live = Blended(new_model(catalog, CONFIG), term, 0.5).eval()
    checkpoint = tmp_path / "live.pt"
    torch.save({"model": live.state_dict(), "config": config.as_dict()}, checkpoint)
    served = extend_catalog(catalog, [Item("cold1", "C1", ("Comedy",), 1995, None)])
    loaded, loaded_config = load_live(checkpoint, served)
    cold = extend_model(copy.deepcopy(live), catalog, served)  # what cold_items serves
    with torch.no_grad():
        assert torch.allclose(loaded.item_embeddings(), cold.item_embeddings(), atol=1e-6)
    assert isinstance(loaded, Blended) and loaded_config == config

    later = {**histories, "u4": ["cold1", "a", "e"]}
    refitted = refit_item_item(loaded, served, later, loaded_config)
    expected = fit_item_item(later, served, config.item_item_rank)
    assert refitted.towers is loaded.towers and refitted.weight == 0.5
    assert torch.equal(refitted.item_item.sources, expected.sources)
    assert refitted.item_item.sources[served.index_of("cold1")].any()  # the new item has its row now
    assert refit_item_item(live.towers, catalog, later, CONFIG) is live.towers  # no term: unchanged
