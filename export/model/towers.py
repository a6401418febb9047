"""The two towers. Cosine similarity between their outputs ranks the next item.

Both towers share one ``ItemEncoder`` (item id + categories + year bucket + price bucket), so the history the
user tower reads and the candidates the item tower scores live in the same space. The item
attribute tables are buffers, so an exported tower needs nothing but item indices as input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from features.catalog import OOV_INDEX, PAD_INDEX, ItemCatalog


class ItemEncoder(nn.Module):
    """Item index -> dense vector from id, categories, year bucket and price bucket (bucket 0 =
    unknown, so a dataset without prices or years just learns one constant vector)."""

    def __init__(self, catalog: ItemCatalog, dim: int, id_dropout: float = 0.0) -> None:
        super().__init__()
        # Training only: the id part of an item's vector is dropped with this probability, so the
        # attribute parts must carry the item on their own — what a new item (embedded from its
        # attributes, see export.triton.cold_items) and an item with few interactions rely on.
        self.id_dropout = id_dropout
        categories = torch.from_numpy(catalog.category_matrix())
        years = torch.from_numpy(catalog.year_buckets())
        prices = torch.from_numpy(catalog.price_buckets())
        self.register_buffer("categories", categories)
        self.register_buffer("years", years)
        self.register_buffer("prices", prices)
        self.oov_index = OOV_INDEX  # an attribute, so TorchScript sees it
        self.id_embedding = nn.Embedding(catalog.num_embeddings, dim, padding_idx=PAD_INDEX)
        self.category_projection = nn.Linear(categories.shape[1], dim, bias=False)
        self.year_embedding = nn.Embedding(int(years.max()) + 1, dim)
        self.price_embedding = nn.Embedding(int(prices.max()) + 1, dim)
        nn.init.normal_(self.id_embedding.weight, std=0.05)
        with torch.no_grad():
            self.id_embedding.weight[PAD_INDEX].zero_()

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        # Out-of-range ids (a stale or hostile client) fall into the OOV bucket instead of
        # raising inside Triton and failing a whole batch.
        in_range = (index >= 0) & (index < self.id_embedding.num_embeddings)
        index = torch.where(in_range, index, torch.full_like(index, self.oov_index))
        ids = self.id_embedding(index)
        if self.training and self.id_dropout > 0:
            keep = torch.rand(index.shape, device=index.device) >= self.id_dropout
            ids = ids * keep.unsqueeze(-1).to(ids.dtype)
        return (
            ids
            + self.category_projection(self.categories[index])
            + self.year_embedding(self.years[index])
            + self.price_embedding(self.prices[index])
        )


class ItemTower(nn.Module):
    """Item index [B] -> unit-norm item embedding [B, D]."""

    def __init__(self, encoder: ItemEncoder, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        x = self.encoder(index)
        return F.normalize(x + self.head(x), dim=-1)


class UserTower(nn.Module):
    """Recent items [B, L] (left-padded, most recent last) -> unit-norm user embedding [B, D].

    Two views of the history: a recency-weighted mean (long-term taste) and the last item
    (short-term intent), blended by an MLP.
    """

    def __init__(self, encoder: ItemEncoder, dim: int, recency_decay: float = 0.9,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.pad_index = PAD_INDEX  # an attribute, so TorchScript sees it
        self.recency_decay = recency_decay
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        items = self.dropout(self.encoder(history))  # [B, L, D]
        present = (history != self.pad_index).to(items.dtype)  # [B, L]
        length = history.shape[1]
        age = torch.arange(length - 1, -1, -1, device=history.device, dtype=items.dtype)
        weights = present * torch.pow(torch.full_like(age, self.recency_decay), age)
        pooled = (weights.unsqueeze(-1) * items).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-6)
        last = items[:, -1] * present[:, -1:]
        return F.normalize(self.head(torch.cat([pooled, last], dim=-1)), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, catalog: ItemCatalog, dim: int = 64, recency_decay: float = 0.9,
                 dropout: float = 0.1, id_dropout: float = 0.0) -> None:
        super().__init__()
        encoder = ItemEncoder(catalog, dim, id_dropout)
        self.user_tower = UserTower(encoder, dim, recency_decay, dropout)
        self.item_tower = ItemTower(encoder, dim)
        self.register_buffer("all_items", torch.arange(catalog.num_embeddings))

    def item_embeddings(self) -> torch.Tensor:
        """Embeddings of every row of the catalog, [num_embeddings, D] (PAD/OOV rows included)."""
        return self.item_tower(self.all_items)
