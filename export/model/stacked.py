"""The served user tower: K members' user towers computed as one stack of matrices.

Trained and evaluated, an ensemble's user vector is K ``UserTower`` calls in a row
(``export.model.ensemble.UserTowers``). At batch 1 that is dominated by per-operation overhead,
not arithmetic, so K members cost about K times one (measured: the 3-member fused model 1.0 ms
in-process against 0.37 ms for one member, docs/performance.md). ``StackedUserTowers`` computes
the same function with every weight stacked along a leading member axis, so each step of the
tower is one batched operation for all members, and it reads each member's item encoder
(id + categories + year + price) from a table computed once at export instead of recomputing
it per request. The table replaces the encoder's id table and attribute lookups, so it costs
about the memory they did.

Only serving uses it (``export.triton.repository.scripted_modules``): the same function as
the members', to float rounding (tests/unit/export/model/test_stacked.py holds it to 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.model.ensemble import Towers, members_of
from export.model.item_item import Blended, BlendedUserTower
from export.model.towers import UserTower
from features.catalog import OOV_INDEX, PAD_INDEX


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach().float() for t in tensors]).contiguous()


class StackedUserTowers(nn.Module):
    """K user towers of one architecture -> [B, K*D], as ``UserTowers`` lays it out (members'
    unit vectors side by side, times 1/sqrt(K); K = 1 is one tower's vector). Inference only:
    every weight is a buffer and dropout is off."""

    def __init__(self, towers: list[UserTower]) -> None:
        super().__init__()
        first = towers[0]
        shape = {n: tuple(p.shape) for n, p in first.state_dict().items()}
        for tower in towers[1:]:
            same = (tower.attention, tower.use_types, tower.transition) == \
                (first.attention, first.use_types, first.transition)
            if not same or {n: tuple(p.shape) for n, p in tower.state_dict().items()} != shape:
                raise ValueError("stacked user towers must share one architecture")
        self.pad_index = PAD_INDEX  # attributes, so TorchScript sees them
        self.oov_index = OOV_INDEX
        self.attention = first.attention
        self.use_types = first.use_types
        self.transition = first.transition
        self.scale = first.scale
        self.members_scale = len(towers) ** -0.5
        with torch.no_grad():
            rows = first.encoder.id_embedding.num_embeddings
            every = torch.arange(rows)
            was = [t.encoder.training for t in towers]
            for t in towers:
                t.encoder.eval()
            # [K, N, D]: each member's encoder output for every catalog row
            self.register_buffer("items", _stack([t.encoder(every) for t in towers]))
            for t, training in zip(towers, was, strict=True):
                t.encoder.train(training)
            length = first.positions.shape[0]
            age = torch.arange(length - 1, -1, -1, dtype=torch.float32)
            # [K, L]: a step's recency weight by its age, as UserTower computes it per request
            self.register_buffer("recency", _stack(
                [torch.pow(torch.full_like(age, t.recency_decay), age) for t in towers]))
            self.register_buffer("type_embedding", _stack([t.type_embedding.weight for t in towers]))
            self.register_buffer("type_weight", _stack([F.softplus(t.type_weight) for t in towers]))
            self.register_buffer("positions", _stack([t.positions for t in towers]))
            # key(x)·query(last) = x·(last Wqᵀ Wk): one [D, D] matrix per member instead of two
            self.register_buffer("query_key", _stack([t.query.weight.T @ t.key.weight for t in towers]))
            self.register_buffer("value", _stack([t.value.weight.T for t in towers]))
            self.register_buffer("follows", _stack([t.next_embedding.weight for t in towers]))
            self.register_buffer("hidden_weight", _stack([t.head[0].weight.T for t in towers]))
            self.register_buffer("hidden_bias", _stack([t.head[0].bias.unsqueeze(0) for t in towers]))
            self.register_buffer("out_weight", _stack([t.head[2].weight.T for t in towers]))
            self.register_buffer("out_bias", _stack([t.head[2].bias.unsqueeze(0) for t in towers]))

    def forward(self, history: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        batch, length = history.shape
        # Out-of-range ids read as OOV, as ItemEncoder does.
        in_range = (history >= 0) & (history < self.items.shape[1])
        steps = self.items[:, torch.where(in_range, history, torch.full_like(history, self.oov_index))]
        present = (history != self.pad_index).to(steps.dtype)  # [B, L]
        weights = present * self.recency[:, -length:].unsqueeze(1)  # [K, B, L]
        if self.use_types:
            valid = (types >= 0) & (types < self.type_embedding.shape[1])
            types = torch.where(valid, types, torch.zeros_like(types))
            steps = steps + self.type_embedding[:, types]
            weights = weights * self.type_weight[:, types]
        pooled = torch.matmul(weights.unsqueeze(-2), steps).squeeze(-2) \
            / weights.sum(-1, keepdim=True).clamp_min(1e-6)  # [K, B, D]
        last = steps[:, :, -1] * present[:, -1:]
        views = [pooled, last]
        if self.attention:
            query = torch.bmm(last, self.query_key)  # [K, B, D]
            keys = steps + self.positions[:, -length:].unsqueeze(1)
            logits = torch.matmul(keys, query.unsqueeze(-1)).squeeze(-1) * self.scale  # [K, B, L]
            logits = logits.masked_fill(present == 0, -1e9)
            attention = torch.softmax(logits, dim=-1) * present
            read = torch.matmul(attention.unsqueeze(-2), steps).squeeze(-2)
            views.append(torch.bmm(read, self.value))
        if self.transition:
            last_index = history[:, -1]
            in_range = (last_index >= 0) & (last_index < self.follows.shape[1])
            last_index = torch.where(in_range, last_index, torch.zeros_like(last_index))
            views.append(self.follows[:, last_index] * present[:, -1:])
        hidden = F.gelu(torch.baddbmm(self.hidden_bias, torch.cat(views, dim=-1), self.hidden_weight))
        user = F.normalize(torch.baddbmm(self.out_bias, hidden, self.out_weight), dim=-1)  # [K, B, D]
        return user.transpose(0, 1).reshape(batch, -1) * self.members_scale


def served_user_tower(model: Towers) -> nn.Module:
    """``model.user_tower``'s function in its served form: the members stacked, and a blended
    model's item-item vector appended as ``Blended.user_tower`` appends it."""
    model = model.eval()
    if isinstance(model, Blended):
        return BlendedUserTower(served_user_tower(model.towers), model.item_item, model.weight)
    return StackedUserTowers([m.user_tower for m in members_of(model)])
