"""Several two-tower models served as one: a deep ensemble that is still a two-tower model.

Each member is a whole ``TwoTower`` with its own initial weights. The ensemble's user and item
vectors are the members' unit vectors side by side, scaled by 1/sqrt(K): a dot product of two
of them is the mean of the members' cosine similarities, so Triton's top-k retrieval over the
item matrix ranks by the ensemble's score with no other change (the vectors are K times wider).

Why: on small or sparse data a single model's ranking moves a lot with its random start (on
MovieLens latest-small three seeds scored .082–.100 Recall@10), and averaging members removes
much of that noise (docs/model.md has the measurements). Members are trained one after another,
each as one model is, with its own seed (``export.train.train``).
"""

from __future__ import annotations

import torch
from torch import nn

from export.model.item_item import Blended
from export.model.towers import ItemTower, TwoTower, UserTower


class UserTowers(nn.Module):
    """K user towers -> [B, K*D]: their unit-norm outputs concatenated, times 1/sqrt(K)."""

    def __init__(self, towers: list[UserTower]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)
        self.scale = len(towers) ** -0.5

    def forward(self, history: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for tower in self.towers:
            parts.append(tower(history, types))
        return torch.cat(parts, dim=-1) * self.scale


class ItemTowers(nn.Module):
    """K item towers -> [B, K*D], laid out as ``UserTowers`` lays out the user vector."""

    def __init__(self, towers: list[ItemTower]) -> None:
        super().__init__()
        self.towers = nn.ModuleList(towers)
        self.scale = len(towers) ** -0.5

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for tower in self.towers:
            parts.append(tower(index))
        return torch.cat(parts, dim=-1) * self.scale


class TowerEnsemble(nn.Module):
    """K ``TwoTower`` members with a two-tower model's interface (``user_tower``, ``item_tower``,
    ``item_embeddings``). The towers are views built on access, so the weights are stored once,
    under ``members.<i>.``."""

    def __init__(self, members: list[TwoTower]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    @property
    def user_tower(self) -> UserTowers:
        return UserTowers([m.user_tower for m in self.members])

    @property
    def item_tower(self) -> ItemTowers:
        return ItemTowers([m.item_tower for m in self.members])

    def item_embeddings(self) -> torch.Tensor:
        """[num_embeddings, K*D], every catalog row (PAD/OOV rows included)."""
        return torch.cat([m.item_embeddings() for m in self.members], dim=-1) * len(self.members) ** -0.5


Towers = TwoTower | TowerEnsemble | Blended


def members_of(model: Towers) -> list[TwoTower]:
    """The single models inside ``model`` (itself, when it is one; a ``Blended`` model's towers')."""
    if isinstance(model, Blended):
        model = model.towers
    return list(model.members) if isinstance(model, TowerEnsemble) else [model]
