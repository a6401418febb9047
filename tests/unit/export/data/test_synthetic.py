import time

import numpy as np
import pandas as pd
import pytest

from export.data.interactions import load_interactions_file
from export.data.synthetic import generate, write_files


@pytest.fixture(scope="module")
def data():
    return generate(n_users=500, n_items=400, n_categories=12, days=30, seed=3)


def test_same_seed_same_data_other_seed_other_data():
    a, b = generate(n_users=50, n_items=40, seed=1), generate(n_users=50, n_items=40, seed=1)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.items, b.items)
    c = generate(n_users=50, n_items=40, seed=2)
    assert not a.interactions[["item_id", "timestamp"]].equals(c.interactions[["item_id", "timestamp"]])


def test_defaults_are_demo_sized_and_fast():
    started = time.perf_counter()
    data = generate()
    elapsed_s = time.perf_counter() - started
    assert elapsed_s < 3.0
    assert data.interactions["user_id"].nunique() == 2_000 and len(data.items) == 1_000
    assert 40_000 <= len(data.interactions) <= 65_000


def test_popularity_is_heavy_tailed(data):
    counts = data.interactions["item_id"].value_counts()
    top = counts.iloc[: len(data.items) // 10].sum()
    assert top / len(data.interactions) > 0.4


def test_funnel_narrows_and_out_of_stock_items_are_never_bought(data):
    counts = data.interactions["event_type"].value_counts()
    assert counts["purchase"] < counts["cart"] < counts["click"] < counts["view"]
    out_of_stock = set(data.items.loc[data.items["stock"] == 0, "item_id"])
    assert out_of_stock
    carted = data.interactions[data.interactions["event_type"].isin(["cart", "purchase"])]
    assert not set(carted["item_id"]) & out_of_stock
    purchases = data.interactions[data.interactions["event_type"] == "purchase"]
    prices = data.items.set_index("item_id")["price"]
    assert np.allclose(purchases["value"], prices[purchases["item_id"]].to_numpy())
    assert data.interactions.loc[data.interactions["event_type"] != "purchase", "value"].isna().all()


def test_prices_are_positive_and_skewed(data):
    prices = data.items["price"]
    assert (prices > 0).all() and prices.mean() > prices.median()


def test_events_come_in_sessions(data):
    gaps_s = data.interactions.groupby("user_id")["timestamp"].diff().dropna()
    assert (gaps_s <= 10 * 60).mean() > 0.7  # within a session: minutes apart
    assert (gaps_s >= 3600).mean() > 0.05  # between sessions: hours or days
    within = data.interactions.groupby("session_id")["timestamp"].agg(lambda t: t.max() - t.min())
    assert within.median() < 30 * 60


def test_intent_drifts_over_time():
    def early_late_overlap(drift: float) -> float:
        data = generate(n_users=300, n_items=300, n_categories=10, seed=5, drift=drift,
                        sessions_per_user=10)
        views = data.interactions.merge(data.items[["item_id", "categories"]], on="item_id")
        views["late"] = views.groupby("user_id").cumcount() >= views.groupby("user_id")["item_id"] \
            .transform("size") / 2
        share = pd.crosstab([views["user_id"], views["late"]], views["categories"], normalize="index")
        early, late = share.xs(False, level="late"), share.xs(True, level="late")
        return float(np.minimum(early, late.loc[early.index]).sum(axis=1).mean())

    assert early_late_overlap(drift=0.5) < early_late_overlap(drift=0.0) - 0.1


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_files_round_trip_through_the_file_loader(data, tmp_path, fmt):
    interactions_path, items_path = write_files(data, tmp_path, fmt=fmt)
    assert interactions_path.suffix == f".{fmt}" and items_path.suffix == f".{fmt}"
    loaded = load_interactions_file(interactions_path, items_path, name="synthetic")
    expected = data.to_dataset()
    pd.testing.assert_frame_equal(loaded.interactions, expected.interactions)
    assert loaded.catalog.items == expected.catalog.items
    assert loaded.cleaning.rejected == {} and loaded.cleaning.duplicates == 0
    assert loaded.catalog.num_items == len(data.items)  # never-seen items stay in the catalog
