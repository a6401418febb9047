import numpy as np

from export.data.synthetic import generate
from export.evaluation.next_purchase import (
    VARIANTS,
    PurchaseSplit,
    first_purchases,
    fit_recently_touched,
    run,
)
from export.train import TrainConfig
from features.behaviour import Step
from features.catalog import Item, ItemCatalog

STEPS = [Step("a", "view"), Step("a", "purchase"), Step("b", "view"), Step("a", "purchase"),
         Step("c", "view"), Step("c", "cart"), Step("c", "purchase"), Step("d", "view")]


def test_targets_are_first_time_purchases_and_candidates_keep_what_was_only_viewed():
    assert first_purchases(STEPS) == [1, 6]  # the re-purchase of "a" is not a target
    split = PurchaseSplit({"u": STEPS, "w": [Step("x", "view")]})
    assert split.test == {"u": "c"} and split.valid == {"u": "a"}
    assert split.before_test["u"] == STEPS[:6] and split.train["u"] == STEPS[:1]
    assert split.bought_test["u"] == ["a"] and split.bought_valid["u"] == []
    assert split.train["w"] == ["x"]  # no target: all of it trains


def test_recently_touched_ranks_the_users_own_items_by_recency():
    catalog = ItemCatalog.from_items([Item(i, i) for i in "abcd"])
    scores = fit_recently_touched({"u": STEPS}, catalog)([["b", "a", "c"]])[0]
    order = np.argsort(-scores)[:3]
    assert [catalog.item_at(i).item_id for i in order] == ["c", "a", "b"]


def test_run_reports_every_variant_and_both_baselines():
    shop = generate(n_users=300, n_items=80, n_categories=4, days=10, seed=1).to_dataset()
    report = run(shop, TrainConfig(dim=8, epochs=1, batch_size=64), seeds=[0])
    assert set(report["models"]) == {"purchase_popularity", "recently_touched", *VARIANTS}
    assert report["users"] > 0 and report["training_examples"] > 0
    for metrics in report["models"].values():
        assert 0.0 <= metrics["recall@10"] <= metrics["recall@20"] <= 1.0
