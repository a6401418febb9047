"""The served user tower: K members' user towers computed as one stack of matrices.

Trained and evaluated, an ensemble's user vector is K ``UserTower`` calls in a row
(``export.model.ensemble.UserTowers``). At batch 1 that is dominated by per-operation overhead,
not arithmetic, so K members cost about K times one. ``StackedUserTowers`` computes
the same function with every weight stacked along a leading member axis, so each step of the
tower is one batched operation for all members, and it reads each member's item encoder
(id + categories + year + price) from a table computed once at export instead of recomputing
it per request. The table replaces the encoder's id table and attribute lookups, so it costs
about the memory they did. Measured (perf/bench_user_tower.py, scripted fused model, batch 1, one
thread): three members 0.48 ms stacked against 1.05 ms one after another; one member 0.38 ms
stacked, 0.45 ms not.

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
    every weight is a buffer and dropout is off.

    Besides stacking, three rewrites that leave the function as it was (to float rounding) and
    take operations off every request: the attention's query and key projections (and its
    1/sqrt(D)) are one [D, D] matrix, the value projection is folded into the head's first
    layer, and the recency-weighted mean and the attention read-out are one weighted sum."""

    def __init__(self, towers: list[UserTower]) -> None:
        super().__init__()
        first = towers[0]
        shape = {n: tuple(p.shape) for n, p in first.state_dict().items()}
        for tower in towers[1:]:
            same = (tower.attention, tower.use_types, tower.transition) == \
                (first.attention, first.use_types, first.transition)
            if not same or {n: tuple(p.shape) for n, p in tower.state_dict().items()} != shape:
                raise ValueError("stacked user towers must share one architecture")
        members, dim = len(towers), first.positions.shape[1]
        rows = first.encoder.id_embedding.num_embeddings
        type_rows = first.type_embedding.num_embeddings
        self.pad_index = PAD_INDEX  # attributes, so TorchScript sees them
        self.oov_index = OOV_INDEX
        self.rows, self.type_rows = rows, type_rows
        self.attention = first.attention
        self.use_types = first.use_types
        self.transition = first.transition
        self.members_scale = members ** -0.5
        with torch.no_grad():
            every = torch.arange(rows)
            was = [t.encoder.training for t in towers]
            for t in towers:
                t.encoder.eval()
            # Member k's encoder output for row i is row k*N + i: one lookup for all members.
            self.register_buffer("items", _stack([t.encoder(every) for t in towers]).reshape(-1, dim))
            for t, training in zip(towers, was, strict=True):
                t.encoder.train(training)
            self.register_buffer("item_offsets", (torch.arange(members) * rows).view(members, 1, 1))
            # A type's embedding and, in the last column, its weight in the mean (softplus applied).
            typed = torch.cat([_stack([t.type_embedding.weight for t in towers]),
                               _stack([F.softplus(t.type_weight) for t in towers]).unsqueeze(-1)], -1)
            self.register_buffer("type_table", typed.reshape(-1, dim + 1))
            self.register_buffer("type_offsets", (torch.arange(members) * type_rows).view(members, 1, 1))
            length = first.positions.shape[0]
            age = torch.arange(length - 1, -1, -1, dtype=torch.float32)
            # [K, 1, L]: a step's recency weight by its age, as UserTower computes it per request
            self.register_buffer("recency", _stack(
                [torch.pow(torch.full_like(age, t.recency_decay), age) for t in towers]).unsqueeze(1))
            self.register_buffer("positions", _stack([t.positions for t in towers]).unsqueeze(1))
            # key(x)·query(last)/sqrt(D) = x·(last Wqᵀ Wk / sqrt(D))
            self.register_buffer("query_key", _stack([t.query.weight.T @ t.key.weight * t.scale
                                                      for t in towers]))
            follows = _stack([t.next_embedding.weight for t in towers])
            self.register_buffer("follows", follows.reshape(-1, dim))
            self.register_buffer("hidden_weight", _stack([_first_layer(t, dim) for t in towers]))
            self.register_buffer("hidden_bias", _stack([t.head[0].bias.unsqueeze(0) for t in towers]))
            self.register_buffer("out_weight", _stack([t.head[2].weight.T for t in towers]))
            self.register_buffer("out_bias", _stack([t.head[2].bias.unsqueeze(0) for t in towers]))

    def forward(self, history: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        batch, length = history.shape
        # Out-of-range ids read as OOV and out-of-range type codes as PAD, as UserTower reads them.
        index = torch.where((history >= 0) & (history < self.rows), history, self.oov_index)
        steps = F.embedding(index.unsqueeze(0) + self.item_offsets, self.items)  # [K, B, L, D]
        present = (history != self.pad_index).to(steps.dtype)  # [B, L]
        weights = present * self.recency[:, :, -length:]  # [K, B, L]
        if self.use_types:
            types = torch.where((types >= 0) & (types < self.type_rows), types, 0)
            typed = F.embedding(types.unsqueeze(0) + self.type_offsets, self.type_table)  # [K, B, L, D+1]
            steps = steps + typed[:, :, :, :-1]
            weights = weights * typed[:, :, :, -1]
        last = steps[:, :, -1] * present[:, -1:]
        mixes = [weights / weights.sum(-1, keepdim=True).clamp_min(1e-6)]
        if self.attention:
            query = torch.bmm(last, self.query_key)  # [K, B, D]
            logits = torch.matmul(steps + self.positions[:, :, -length:], query.unsqueeze(-1)).squeeze(-1)
            mixes.append(torch.softmax(logits.masked_fill(present == 0, -1e9), dim=-1) * present)
        # [K, B, V*D]: the weighted sums (mean, then read-out), then the last step
        views = [torch.matmul(torch.stack(mixes, 2), steps).flatten(2), last]
        if self.transition:
            last_index = history[:, -1]
            last_index = torch.where((last_index >= 0) & (last_index < self.rows), last_index, 0)
            follows = F.embedding(last_index.unsqueeze(0) + self.item_offsets[:, :, 0], self.follows)
            views.append(follows * present[:, -1:])
        hidden = F.gelu(torch.baddbmm(self.hidden_bias, torch.cat(views, dim=-1), self.hidden_weight))
        user = F.normalize(torch.baddbmm(self.out_bias, hidden, self.out_weight), dim=-1)  # [K, B, D]
        return user.transpose(0, 1).reshape(batch, -1) * self.members_scale


def _first_layer(tower: UserTower, dim: int) -> torch.Tensor:
    """The head's first weight, transposed, for its input in the served order [mean, read-out,
    last, follows] (trained: [mean, last, value(read-out), follows]), the value projection
    folded into the read-out's block."""
    weight = tower.head[0].weight  # [2D, V*D]
    blocks = [weight[:, :dim]]
    if tower.attention:
        blocks.append(weight[:, 2 * dim:3 * dim] @ tower.value.weight)
    blocks.append(weight[:, dim:2 * dim])
    if tower.transition:
        blocks.append(weight[:, -dim:])
    return torch.cat(blocks, dim=1).T


def served_user_tower(model: Towers) -> nn.Module:
    """``model.user_tower``'s function in its served form: the members stacked, and a blended
    model's item-item vector appended as ``Blended.user_tower`` appends it."""
    if isinstance(model, Blended):
        return BlendedUserTower(served_user_tower(model.towers), model.item_item, model.weight)
    return StackedUserTowers([m.user_tower for m in members_of(model)])
