"""Item catalog: raw item ids <-> model indices, plus the attributes the item tower encodes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Index 0 pads short histories; index 1 stands for any item the model has never seen, so an
# unknown id can never index outside the embedding table inside Triton.
PAD_INDEX = 0
OOV_INDEX = 1
FIRST_ITEM_INDEX = 2


@dataclass(frozen=True)
class Item:
    """One catalog entry as served to clients."""

    item_id: str
    title: str
    categories: tuple[str, ...] = ()  # genres for movies, category path for products
    year: int | None = None
    price: float | None = None


@dataclass
class ItemCatalog:
    """The item vocabulary of one trained model (one retrieval version).

    Row ``FIRST_ITEM_INDEX + i`` of the item-embedding matrix belongs to ``items[i]``.
    """

    items: list[Item]
    categories: list[str]
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {item.item_id: FIRST_ITEM_INDEX + i for i, item in enumerate(self.items)}
        if len(self._index) != len(self.items):
            raise ValueError("duplicate item ids in catalog")

    @property
    def num_items(self) -> int:
        """Number of real items (excluding the PAD and OOV rows)."""
        return len(self.items)

    @property
    def num_embeddings(self) -> int:
        """Rows of every per-item table: real items plus PAD and OOV."""
        return len(self.items) + FIRST_ITEM_INDEX

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def index_of(self, item_id: str) -> int:
        """Model index of ``item_id``; unknown ids map to the OOV bucket."""
        return self._index.get(item_id, OOV_INDEX)

    def get(self, item_id: str) -> Item | None:
        """The catalog entry of ``item_id``, or None when the catalog does not know it."""
        index = self._index.get(item_id)
        return None if index is None else self.items[index - FIRST_ITEM_INDEX]

    def indices_of(self, item_ids: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.index_of(i) for i in item_ids), dtype=np.int64)

    def categories_by_item(self) -> dict[str, tuple[str, ...]]:
        """item id -> categories: what the feature stores need for category affinities."""
        return {item.item_id: item.categories for item in self.items if item.categories}

    def item_at(self, index: int) -> Item:
        if index < FIRST_ITEM_INDEX or index >= self.num_embeddings:
            raise IndexError(f"index {index} is not a real item")
        return self.items[index - FIRST_ITEM_INDEX]

    def category_matrix(self) -> np.ndarray:
        """Multi-hot categories, shape [num_embeddings, num_categories] (PAD/OOV rows are zero)."""
        out = np.zeros((self.num_embeddings, max(len(self.categories), 1)), dtype=np.float32)
        col = {g: j for j, g in enumerate(self.categories)}
        for i, item in enumerate(self.items):
            for g in item.categories:
                out[FIRST_ITEM_INDEX + i, col[g]] = 1.0
        return out

    def first_year(self) -> int | None:
        years = [item.year for item in self.items if item.year is not None]
        return min(years) if years else None

    def year_buckets(self, bucket_years: int = 5, first_year: int | None = None) -> np.ndarray:
        """Release year bucketed to ``bucket_years`` from ``first_year`` (default: the earliest
        in the catalog; a trained model passes its own so buckets keep their meaning); bucket 0 =
        unknown, earlier years share bucket 1. Shape [num_embeddings]."""
        first = self.first_year() if first_year is None else first_year
        out = np.zeros(self.num_embeddings, dtype=np.int64)
        if first is None:
            return out
        for i, item in enumerate(self.items):
            if item.year is not None:
                out[FIRST_ITEM_INDEX + i] = 1 + max(0, (item.year - first) // bucket_years)
        return out

    def price_buckets(self, buckets_per_decade: int = 4) -> np.ndarray:
        """Price on a log scale (``buckets_per_decade`` buckets per factor of 10); 0 = unknown.
        Shape [num_embeddings]."""
        out = np.zeros(self.num_embeddings, dtype=np.int64)
        for i, item in enumerate(self.items):
            if item.price is not None and item.price > 0:
                # +1 keeps bucket 0 for unknown; clamp: sub-cent prices share the first bucket
                out[FIRST_ITEM_INDEX + i] = 1 + max(0, int(np.floor(
                    (np.log10(item.price) + 2) * buckets_per_decade)))
        return out

    @classmethod
    def from_items(cls, items: Sequence[Item]) -> ItemCatalog:
        categories = sorted({g for item in items for g in item.categories})
        return cls(items=list(items), categories=categories)

    def to_json(self, path: Path) -> None:
        payload = {
            "categories": self.categories,
            "items": [
                {"item_id": it.item_id, "title": it.title, "categories": list(it.categories),
                 "year": it.year, "price": it.price}
                for it in self.items
            ],
        }
        path.write_text(json.dumps(payload))

    @classmethod
    def from_json(cls, path: Path) -> ItemCatalog:
        payload = json.loads(path.read_text())
        items = [
            # "genres": the key before categories were generalised (repositories exported then)
            Item(d["item_id"], d["title"], tuple(d.get("categories", d.get("genres", ()))),
                 d.get("year"), d.get("price"))
            for d in payload["items"]
        ]
        return cls(items=items, categories=list(payload.get("categories", payload.get("genres", []))))
