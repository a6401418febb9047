"""A synthetic shop whose tastes shift half-way, and a block of new items arrives with the shift.

Both halves come from ``export.data.synthetic.generate`` with the same item arguments and seed, so
they hold the same items (the generator draws items first); the second half's users draw fresh
category tastes (a different user count shifts every later draw). In the second half, a share of
the interactions with items of ``NEW_CATEGORIES`` moves to the new items of the same category,
the way new products take demand from old ones; the new items' attributes say which category
they are in, which is all a stale model could know of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from export.data.synthetic import START_S, generate
from features.events import Event

DAY_S = 86_400


@dataclass
class DriftShop:
    before: pd.DataFrame  # interactions (export's columns) of the first half
    after: pd.DataFrame  # the second half, new items included
    items: pd.DataFrame  # the first half's items (the stale model's catalog)
    new_items: pd.DataFrame  # the block of new items (export's items columns)

    def events_after(self) -> list[Event]:
        """The second half as the gateway would have produced it, in time order."""
        frame = self.after.sort_values(["timestamp", "user_id"], kind="stable")
        return [Event(event_id=f"e{i}", user_id=u, item_id=it, event_type=t, ts_ms=int(ts) * 1000)
                for i, (u, it, t, ts) in enumerate(zip(frame["user_id"], frame["item_id"],
                                                       frame["event_type"], frame["timestamp"],
                                                       strict=True))]

    def new_item_category(self) -> dict[str, str]:
        return {row.item_id: row.categories.split("|")[-1] for row in self.new_items.itertuples()}


def drift_shop(users: int = 600, items: int = 200, categories: int = 8, days: int = 20,
               new_per_category: int = 4, new_categories: tuple[int, ...] = (0, 1, 2, 3),
               moved_share: float = 0.6, seed: int = 3) -> DriftShop:
    common = dict(n_items=items, n_categories=categories, days=days, seed=seed)
    first = generate(n_users=users, **common)
    second = generate(n_users=users + 1, start_s=START_S + days * DAY_S, **common)
    assert first.items.equals(second.items)  # the same shop, other tastes
    rng = np.random.default_rng(seed)
    rows = []
    for c in new_categories:
        template = first.items[first.items["categories"].str.endswith(f"cat_{c:02d}")].iloc[0]
        for k in range(new_per_category):
            rows.append({"item_id": f"n{c:02d}{k:02d}", "title": f"New product {k} (cat {c:02d})",
                         "categories": template["categories"],
                         "price": round(float(template["price"]) * rng.uniform(0.8, 1.2), 2),
                         "stock": 50})
    new_items = pd.DataFrame(rows)
    after = second.interactions[second.interactions["user_id"] != f"u{users:05d}"].copy()
    category = after["item_id"].map(dict(zip(first.items["item_id"],
                                             first.items["categories"].str[-2:].astype(int),
                                             strict=True)))
    for c in new_categories:
        # Per (user, old item) pair, so a view and the click, cart and purchase after it move
        # together to the same new item.
        pairs = after.loc[category == c, ["user_id", "item_id"]].drop_duplicates()
        moved = pairs[rng.random(len(pairs)) < moved_share]
        block = new_items["item_id"][new_items["item_id"].str.startswith(f"n{c:02d}")].to_numpy()
        target = dict(zip(zip(moved["user_id"], moved["item_id"], strict=True),
                          rng.choice(block, len(moved)), strict=True))
        keys = list(zip(after["user_id"], after["item_id"], strict=True))
        after["item_id"] = [target.get(k, k[1]) for k in keys]
    after = after.drop_duplicates(subset=["user_id", "item_id", "timestamp", "event_type"])
    columns = ["user_id", "item_id", "timestamp", "event_type", "value"]
    return DriftShop(first.interactions[columns], after[columns].reset_index(drop=True),
                     first.items, new_items)
