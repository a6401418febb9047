"""Seeded synthetic e-commerce behaviour for demos, load and fault tests.

Never a substitute for real data in quality claims (docs/evaluation.md); its job is to look like a
shop: a few items get most of the attention (Zipf popularity), users prefer a few categories
(Dirichlet affinity) that shift over time (intent drift), events come in sessions, and each view
may go down the funnel view -> click -> cart -> purchase. Items are priced log-normally around a
per-category level; some are out of stock and are then never carted or bought.

``write_files`` writes the documented file schemas, so the data loads back through
``export.data.load_interactions_file`` — the same path a user's own log takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from export.data.cleaning import INTERACTION_COLUMNS
from export.data.interactions import Dataset, dataset_from_frames

START_S = 1_704_067_200  # 2024-01-01T00:00:00Z: fixed, so a seed gives the same file every day
CATEGORIES_PER_DEPARTMENT = 4

# Funnel: probability of the next step given the previous one (no cart when out of stock).
P_CLICK_GIVEN_VIEW = 0.35
P_CART_GIVEN_CLICK = 0.25
P_PURCHASE_GIVEN_CART = 0.5
# Seconds from one funnel step to the next (uniform range).
FUNNEL_DELAY_S = {"click": (5, 60), "cart": (20, 180), "purchase": (60, 600)}


@dataclass
class SyntheticData:
    """Interactions (``Dataset`` columns plus ``session_id``) and item attributes including stock;
    and the hidden truth behind them, for simulations that need to know what a user wants."""

    interactions: pd.DataFrame  # user_id, item_id, timestamp, event_type, value, session_id
    items: pd.DataFrame  # item_id, title, categories ("|"-separated), price, stock
    # The category preference of each user's last session: index user_id, columns cat_XX, rows sum
    # to 1. Never given to a model; a simulated shopper clicks by it (tests/support/shop.py).
    user_affinity: pd.DataFrame | None = None

    def to_dataset(self, name: str = "synthetic") -> Dataset:
        """Through the same cleaning and catalog code as a file would go."""
        return dataset_from_frames(name, self.interactions[list(INTERACTION_COLUMNS)], self.items)


def generate(
    n_users: int = 2_000,
    n_items: int = 1_000,
    n_categories: int = 20,
    days: int = 60,
    seed: int = 0,
    *,
    sessions_per_user: float = 5.0,
    views_per_session: float = 3.5,
    zipf_exponent: float = 1.0,
    affinity_concentration: float = 0.3,
    drift: float = 0.2,
    mean_event_gap_s: float = 90.0,
    start_s: int = START_S,
) -> SyntheticData:
    """Generate a shop's behaviour log; the same arguments always give the same data.

    ``sessions_per_user`` and ``views_per_session`` are means (user activity is log-normal, so
    some users are far more active than others); about 1.5 events follow each view on average
    once the funnel is added. ``drift`` is how far a user's category affinity moves toward a fresh
    random preference at each session (0 = fixed taste). ``affinity_concentration`` is the
    Dirichlet parameter: smaller means users focus on fewer categories.
    """
    if min(n_users, n_items, n_categories, days) < 1:
        raise ValueError("n_users, n_items, n_categories and days must be positive")
    rng = np.random.default_rng(seed)
    items = _items(rng, n_items, n_categories, zipf_exponent)
    views, affinity = _views(rng, items, n_users, n_categories, days, sessions_per_user,
                             views_per_session, affinity_concentration, drift, mean_event_gap_s, start_s)
    interactions = _funnel(rng, views, items)
    users = pd.Index([f"u{u:05d}" for u in range(n_users)], name="user_id")
    user_affinity = pd.DataFrame(affinity, index=users, columns=[f"cat_{c:02d}" for c in range(n_categories)])
    return SyntheticData(interactions, items.drop(columns=["category", "popularity"]), user_affinity)


def write_files(data: SyntheticData, out_dir: str | Path, fmt: str = "csv") -> tuple[Path, Path]:
    """Write ``interactions.<fmt>`` and ``items.<fmt>`` (csv or parquet) in the documented schemas.

    Returns (interactions_path, items_path).
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown format {fmt!r} (csv or parquet)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / f"interactions.{fmt}", out_dir / f"items.{fmt}"
    for frame, path in zip((data.interactions[list(INTERACTION_COLUMNS)], data.items), paths, strict=False):
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    return paths


def _items(rng: np.random.Generator, n_items: int, n_categories: int, zipf_exponent: float
           ) -> pd.DataFrame:
    category = rng.integers(0, n_categories, n_items)
    # Popularity rank is independent of the id, so "i00001" is not automatically the best seller.
    popularity = 1.0 / rng.permutation(np.arange(1, n_items + 1)) ** zipf_exponent
    # Each category has its own price level (a few dollars to a few hundred); items spread around it.
    level_usd = np.exp(rng.uniform(np.log(5), np.log(500), n_categories))
    price_usd = np.round(level_usd[category] * rng.lognormal(0.0, 0.5, n_items), 2)
    in_stock = rng.random(n_items) >= 0.1
    stock = np.where(in_stock, rng.geometric(1 / 40, n_items), 0)
    ids = [f"i{i:05d}" for i in range(n_items)]
    departments = category // CATEGORIES_PER_DEPARTMENT
    return pd.DataFrame({
        "item_id": ids,
        "title": [f"Product {i} (cat {c:02d})" for i, c in enumerate(category)],
        "categories": [f"dept_{d:02d}|cat_{c:02d}" for d, c in zip(departments, category, strict=False)],
        "price": np.maximum(price_usd, 0.01),
        "stock": stock.astype(np.int64),
        "category": category,
        "popularity": popularity,
    })


def _views(
    rng: np.random.Generator,
    items: pd.DataFrame,
    n_users: int,
    n_categories: int,
    days: int,
    sessions_per_user: float,
    views_per_session: float,
    concentration: float,
    drift: float,
    mean_event_gap_s: float,
    start_s: int,
) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per view: user index, item index, timestamp, session id (vectorised: no loop
    over users or events, so the default size takes well under a second); and each user's
    category affinity in their last session [users, categories]."""
    activity = rng.lognormal(0.0, 0.8, n_users)
    activity /= activity.mean()
    sessions_of_user = 1 + rng.poisson(max(sessions_per_user - 1, 0) * activity)
    session_user = np.repeat(np.arange(n_users), sessions_of_user)
    # Sessions are numbered in time order per user: session ids follow (user, start).
    start_offset_s = rng.uniform(0, days * 86_400, len(session_user))
    start_offset_s = start_offset_s[np.lexsort((start_offset_s, session_user))]

    has_items = np.bincount(items["category"].to_numpy(), minlength=n_categories) > 0
    affinity = _drifting_affinity(rng, session_user, sessions_of_user, n_categories, concentration,
                                  drift) * has_items
    affinity /= affinity.sum(axis=1, keepdims=True)

    views_of_session = rng.geometric(1 / views_per_session, len(session_user))
    session = np.repeat(np.arange(len(session_user)), views_of_session)
    # A session has one main intent; a few views stray to the user's other interests.
    intent = _sample_rows(rng, affinity)
    stray = rng.random(len(session)) >= 0.8
    category = intent[session]
    category[stray] = _sample_rows(rng, affinity[session[stray]])

    gaps_s = rng.exponential(mean_event_gap_s, len(session))
    first = np.r_[0, np.cumsum(views_of_session)[:-1]]
    gaps_s[first] = 0.0
    elapsed_s = np.cumsum(gaps_s)
    elapsed_s -= np.repeat(elapsed_s[first], views_of_session)  # restart the clock per session
    views = pd.DataFrame({
        "user": session_user[session],
        "item": _items_in_categories(rng, items, category, n_categories),
        "time_s": start_s + start_offset_s[session] + elapsed_s,
        "session_id": session,
    })
    return views, affinity[np.cumsum(sessions_of_user) - 1]


def _drifting_affinity(
    rng: np.random.Generator,
    session_user: np.ndarray,
    sessions_of_user: np.ndarray,
    n_categories: int,
    concentration: float,
    drift: float,
) -> np.ndarray:
    """Category preference per session: each session moves the user's previous preference a
    ``drift`` step toward a fresh Dirichlet draw. Shape [sessions, categories]."""
    alpha = np.full(n_categories, concentration)
    current = rng.dirichlet(alpha, len(sessions_of_user))
    fresh = rng.dirichlet(alpha, len(session_user))
    first = np.r_[0, np.cumsum(sessions_of_user)[:-1]]
    out = np.empty_like(fresh)
    # Loop over the k-th session of every user at once: a few dozen steps, not one per session.
    for k in range(int(sessions_of_user.max())):
        users = np.flatnonzero(sessions_of_user > k)
        rows = first[users] + k
        current[users] = (1 - drift) * current[users] + drift * fresh[rows]
        out[rows] = current[users]
    return out


def _sample_rows(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One column index per row of a row-stochastic matrix (inverse CDF)."""
    cdf = np.cumsum(probabilities, axis=1)
    u = rng.random(len(probabilities)) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), probabilities.shape[1] - 1)


def _items_in_categories(rng: np.random.Generator, items: pd.DataFrame, category: np.ndarray,
                         n_categories: int) -> np.ndarray:
    """An item per requested category, drawn by popularity within that category."""
    order = np.lexsort((np.arange(len(items)), items["category"].to_numpy()))
    cat = items["category"].to_numpy()[order]
    pop = items["popularity"].to_numpy()[order]
    totals = np.bincount(cat, weights=pop, minlength=n_categories)
    within = np.cumsum(pop) - np.r_[0, np.cumsum(totals)[:-1]][cat]
    # Category c owns the key range (c, c + 1]: one sorted array serves every category.
    keys = cat + within / totals[cat]
    pos = np.searchsorted(keys, category + rng.random(len(category)), side="right")
    last_of_category = np.cumsum(np.bincount(cat, minlength=n_categories)) - 1
    return order[np.minimum(pos, last_of_category[category])]


def _funnel(rng: np.random.Generator, views: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Add click/cart/purchase events after some views; value = price paid on purchases."""
    n = len(views)
    in_stock = items["stock"].to_numpy()[views["item"].to_numpy()] > 0
    clicked = rng.random(n) < P_CLICK_GIVEN_VIEW
    carted = clicked & in_stock & (rng.random(n) < P_CART_GIVEN_CLICK)
    bought = carted & (rng.random(n) < P_PURCHASE_GIVEN_CART)
    frames = [views.assign(event_type="view")]
    time_s = views["time_s"].to_numpy()
    for event_type, mask in (("click", clicked), ("cart", carted), ("purchase", bought)):
        low, high = FUNNEL_DELAY_S[event_type]
        time_s = time_s + rng.uniform(low, high, n)
        frames.append(views[mask].assign(event_type=event_type, time_s=time_s[mask]))
    events = pd.concat(frames, ignore_index=True)

    price = items["price"].to_numpy()[events["item"].to_numpy()]
    out = pd.DataFrame({
        "user_id": [f"u{u:05d}" for u in events["user"]],
        "item_id": items["item_id"].to_numpy()[events["item"].to_numpy()],
        "timestamp": events["time_s"].to_numpy().astype(np.int64),
        "event_type": events["event_type"].to_numpy(),
        "value": np.where(events["event_type"] == "purchase", price, np.nan),
        "session_id": events["session_id"].to_numpy(),
    })
    # Whole seconds can make two views of one item identical; a log would not repeat a row.
    out = out.drop_duplicates(subset=list(INTERACTION_COLUMNS))
    return out.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
