import numpy as np
import pytest

from export.data.synthetic import generate
from export.evaluation.cold_start import (
    category_popularity,
    forget_ids,
    hold_out_items,
    restrict_to,
    run,
    user_category,
)
from export.model.towers import TwoTower
from export.train import TrainConfig


@pytest.fixture(scope="module")
def shop():
    return generate(n_users=150, n_items=120, n_categories=6, days=10, seed=3).to_dataset()


def test_held_out_items_are_seeded_and_a_tenth_of_the_interacted_ones(shop):
    cold = hold_out_items(shop, 0.1, seed=0)
    interacted = set(shop.interactions["item_id"])
    assert cold <= interacted and len(cold) == round(0.1 * len(interacted))
    assert cold == hold_out_items(shop, 0.1, seed=0) and cold != hold_out_items(shop, 0.1, seed=1)


def test_restriction_leaves_only_the_candidates(catalog):
    rows = np.array([catalog.index_of("b"), catalog.index_of("d")])
    scores = restrict_to(lambda batch: np.ones((len(batch), catalog.num_embeddings)), rows,
                         catalog.num_embeddings)([["a"]])
    assert np.flatnonzero(np.isfinite(scores[0])).tolist() == sorted(rows.tolist())


def test_category_baselines_score_items_without_interactions(catalog):
    histories = {"u1": ["a", "b"], "u2": ["a"]}  # Action 3 touches, Comedy 1
    popular = category_popularity(histories, catalog)([[]])[0]
    at = catalog.index_of
    # the mean over an item's categories: more categories do not make an item more likely
    assert popular[at("a")] == 3 and popular[at("b")] == 2 and popular[at("c")] == 1
    assert popular[at("d")] == 0 and popular[at("f")] == 0  # Drama / no category: never touched
    assert popular[at("e")] == 1.5  # Drama + Action
    mine = user_category(histories, catalog)([["c"]])[0]  # this user only watched Comedy
    assert mine[at("c")] > mine[at("b")] > mine[at("a")] > mine[at("d")]  # popularity breaks ties


def test_forgetting_ids_leaves_attribute_only_vectors(catalog):
    model = TwoTower(catalog, dim=8)
    forget_ids(model, catalog, {"c"})
    weights = model.item_tower.encoder.id_embedding.weight
    assert not weights[catalog.index_of("c")].any() and weights[catalog.index_of("a")].any()


def test_a_tiny_run_reports_both_views_for_model_and_baselines(shop):
    report = run(shop, TrainConfig(epochs=1, dim=16, sequence_length=10, batch_size=128), seeds=[0])
    assert report["users"] > 0 and report["cold_items"] == round(0.1 * shop.interactions["item_id"].nunique())
    assert set(report["models"]) == {"category_popularity", "user_category", "two_tower"}
    for views in report["models"].values():
        for view in ("cold_candidates", "full_catalog"):
            assert 0.0 <= views[view]["recall@10"] <= 1.0
        # among fewer candidates a hit is easier than in the full catalog
        assert views["cold_candidates"]["recall@10"] >= views["full_catalog"]["recall@10"]
    assert report["item_attributes"]
