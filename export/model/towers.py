"""The two towers. Cosine similarity between their outputs ranks the next item.

Both towers share one ``ItemEncoder`` (item id + categories + year bucket + price bucket), so the history the
user tower reads and the candidates the item tower scores live in the same space. The item
attribute tables are buffers, so an exported tower needs nothing but item indices as input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from features.behaviour import NUM_TYPE_CODES, PAD_TYPE
from features.catalog import OOV_INDEX, PAD_INDEX, ItemCatalog

USER_TOWER_KINDS = ("attention", "pooled")


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
    """Recent steps -> unit-norm user embedding [B, D].

    Inputs: item indices [B, L] and their event-type codes [B, L] (``features.behaviour``),
    left-padded, most recent last. Views of the history, blended by an MLP:

    * a recency-weighted mean (long-term taste), each step also weighted by a learned weight of its
      event type (a purchase may count for more than a view);
    * the last step (short-term intent);
    * ``kind="attention"`` only: an attention read-out over the whole window, queried by the last
      step, with a learned embedding per position, so the order of the history beyond its last
      step counts. ``kind="pooled"`` (the first two views) is kept as the ablation.

    Each step's vector is its item vector plus an embedding of its event type. Both type tables
    start at "no effect" (zero vector, weight 1), so a type that never occurs in training —
    every type but "rating" on MovieLens, "unknown" in a shop log — changes nothing when it
    occurs online. ``use_types=False`` ignores the types altogether (the id-only ablation).
    """

    def __init__(self, encoder: ItemEncoder, dim: int, sequence_length: int,
                 recency_decay: float = 0.9, dropout: float = 0.1, kind: str = "attention",
                 use_types: bool = True, transition: bool = False) -> None:
        super().__init__()
        if kind not in USER_TOWER_KINDS:
            raise ValueError(f"unknown user tower {kind!r} (one of {', '.join(USER_TOWER_KINDS)})")
        self.encoder = encoder
        self.pad_index = PAD_INDEX  # attributes, so TorchScript sees them
        self.recency_decay = recency_decay
        self.attention = kind == "attention"
        self.use_types = use_types
        self.scale = float(dim) ** -0.5
        self.dropout = nn.Dropout(dropout)
        self.type_embedding = nn.Embedding(NUM_TYPE_CODES, dim, padding_idx=PAD_TYPE)
        nn.init.zeros_(self.type_embedding.weight)
        # softplus(0.5413) = 1: every type starts with the weight of a plain step
        self.type_weight = nn.Parameter(torch.full((NUM_TYPE_CODES,), 0.5413))
        self.positions = nn.Parameter(torch.zeros(sequence_length, dim))
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        # Optional: a vector per item for "what follows it", untied from the item's own embedding,
        # read for the last step (factorised item-to-item transitions, as in FPMC). Zero at start.
        self.transition = transition
        rows = encoder.id_embedding.num_embeddings if transition else 1
        # _weight: zeros without drawing random numbers, so the option leaves seeds' runs as they were
        self.next_embedding = nn.Embedding(rows, dim, _weight=torch.zeros(rows, dim))
        views = (3 if self.attention else 2) + int(transition)
        self.head = nn.Sequential(nn.Linear(views * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, history: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        items = self.encoder(history)  # [B, L, D]
        present = (history != self.pad_index).to(items.dtype)  # [B, L]
        length = history.shape[1]
        age = torch.arange(length - 1, -1, -1, device=history.device, dtype=items.dtype)
        weights = present * torch.pow(torch.full_like(age, self.recency_decay), age)
        if self.use_types:
            # Out-of-range codes (a stale or hostile client) read as PAD: no effect.
            valid = (types >= 0) & (types < self.type_embedding.num_embeddings)
            types = torch.where(valid, types, torch.zeros_like(types))
            items = items + self.type_embedding(types)
            weights = weights * F.softplus(self.type_weight[types])
        items = self.dropout(items)
        pooled = (weights.unsqueeze(-1) * items).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-6)
        last = items[:, -1] * present[:, -1:]
        views = [pooled, last]
        if self.attention:
            # key(x)·q = x·(Wkᵀq) and Σ a·value(x) = value(Σ a·x) (no biases): the same read-out
            # with the projections applied once per user instead of once per step
            query = self.query(last) @ self.key.weight  # [B, D]
            steps = items + self.positions[-length:]
            logits = torch.bmm(steps, query.unsqueeze(-1)).squeeze(-1) * self.scale  # [B, L]
            logits = logits.masked_fill(present == 0, -1e9)
            attention = torch.softmax(logits, dim=-1) * present
            views.append(self.value(torch.bmm(attention.unsqueeze(1), items).squeeze(1)))
        if self.transition:
            last_index = history[:, -1]
            in_range = (last_index >= 0) & (last_index < self.next_embedding.num_embeddings)
            last_index = torch.where(in_range, last_index, torch.zeros_like(last_index))
            views.append(self.next_embedding(last_index) * present[:, -1:])
        return F.normalize(self.head(torch.cat(views, dim=-1)), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, catalog: ItemCatalog, dim: int = 64, sequence_length: int = 50,
                 recency_decay: float = 0.9, dropout: float = 0.1, id_dropout: float = 0.0,
                 user_tower: str = "attention", use_types: bool = True,
                 transition: bool = False) -> None:
        super().__init__()
        encoder = ItemEncoder(catalog, dim, id_dropout)
        self.user_tower = UserTower(encoder, dim, sequence_length, recency_decay, dropout,
                                    user_tower, use_types, transition)
        self.item_tower = ItemTower(encoder, dim)
        self.register_buffer("all_items", torch.arange(catalog.num_embeddings))

    def item_embeddings(self) -> torch.Tensor:
        """Embeddings of every row of the catalog, [num_embeddings, D] (PAD/OOV rows included)."""
        return self.item_tower(self.all_items)
