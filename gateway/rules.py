"""Business rules applied to every response, model or fallback alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from features.catalog import Item


@dataclass(frozen=True)
class Rules:
    exclude: frozenset[str] = frozenset()  # seen/bought, out of stock, asked to exclude
    categories: frozenset[str] = frozenset()  # when given: only items in at least one of them
    max_per_category: int = 0  # by the item's primary (first) category; 0 = no cap

    @property
    def filters_after_retrieval(self) -> bool:
        """True when the model's top k may lose items to the rules (so ask it for more)."""
        return bool(self.categories) or self.max_per_category > 0

    def select(self, candidates: Iterable[tuple[Item, float | None]],
               k: int) -> list[tuple[Item, float | None]]:
        """The first ``k`` candidates (catalog items, best first) that pass every rule."""
        picked: list[tuple[Item, float | None]] = []
        per_category: Counter[str] = Counter()
        chosen: set[str] = set()
        for item, score in candidates:
            item_id = item.item_id
            if item_id in self.exclude or item_id in chosen:
                continue
            categories = item.categories
            if self.categories and not self.categories.intersection(categories):
                continue
            if self.max_per_category and categories:
                if per_category[categories[0]] >= self.max_per_category:
                    continue
                per_category[categories[0]] += 1
            picked.append((item, score))
            chosen.add(item_id)
            if len(picked) == k:
                break
        return picked
