"""A simulated shop: shoppers who want what the synthetic generator says they want.

Each shopper has the hidden category affinity of a synthetic user (``SyntheticData.user_affinity``,
never shown to a model). Shown a list, they look down it with a position bias (the first item is
always looked at, the p-th with probability ``1 / (1 + p) ** examine_decay``), click a looked-at
item with a probability that grows with how much they like its category, and some clicks go on
to a cart and a purchase (valued at the item's price). Every event names the list and the
position it came from (``context.request_id`` / ``context.position``), as a shop's front end
would, so the online metrics can attribute it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ClickModel:
    examine_decay: float = 1.0
    # P(click | looked at) = click_scale * affinity(category) / the shopper's top affinity
    click_scale: float = 0.8
    p_cart_given_click: float = 0.3
    p_purchase_given_cart: float = 0.6


@dataclass
class Catalog:
    category: dict[str, str]  # item id -> its category (cat_XX)
    price: dict[str, float]

    @classmethod
    def from_items(cls, items: pd.DataFrame) -> Catalog:
        """``items``: the generator's item frame ("dept_XX|cat_YY" categories, prices)."""
        return cls({i: c.split("|")[-1] for i, c in zip(items["item_id"], items["categories"], strict=True)},
                   dict(zip(items["item_id"], items["price"].astype(float), strict=True)))


@dataclass
class Shopper:
    user_id: str
    affinity: pd.Series  # category -> preference, sums to 1
    rng: np.random.Generator
    model: ClickModel = field(default_factory=ClickModel)

    def react(self, request_id: str, items: list[str], catalog: Catalog) -> list[dict]:
        """The events this shopper sends after seeing ``items`` (the list ``request_id``)."""
        top = float(self.affinity.max())
        events = []
        for position, item_id in enumerate(items):
            if self.rng.random() >= 1.0 / (1 + position) ** self.model.examine_decay:
                continue
            liking = float(self.affinity.get(catalog.category.get(item_id, ""), 0.0)) / top
            if self.rng.random() >= self.model.click_scale * liking:
                continue
            context = {"request_id": request_id, "position": str(position)}
            events.append(self._event(item_id, "click", context))
            if self.rng.random() < self.model.p_cart_given_click:
                events.append(self._event(item_id, "cart", context))
                if self.rng.random() < self.model.p_purchase_given_cart:
                    value = {"value": f"{catalog.price[item_id]:.2f}"}
                    events.append(self._event(item_id, "purchase", context | value))
        return events

    def _event(self, item_id: str, event_type: str, context: dict[str, str]) -> dict:
        return {"user_id": self.user_id, "item_id": item_id, "event_type": event_type,
                "context": context}
