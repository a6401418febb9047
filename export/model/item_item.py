"""An item-to-item term beside the towers: EASE, factorised so that it is one more pair of vectors.

EASE (``export.evaluation.baselines.ease_matrix``) scores item ``j`` for a user as
``sum over the user's items i of B[i, j]``. Its weights come in closed form from who interacted with
what, and it is strongest exactly where the towers are weakest. On Last.fm, split by how often
the test target was seen in training, the towers win on the most popular targets and EASE on the
middle of the catalog (docs/model.md, "The item-item term"). The two together beat both on
validation, so the served score is

    score(u, j) = mean cosine of the towers + weight * sum over i in window(u) of B_r[i, j]

where ``B_r = S T^T`` is the best rank-``r`` approximation of ``B`` (truncated SVD, ``S = U
sqrt(sigma)``, ``T = V sqrt(sigma)``). The window is the user tower's own input, the last L
steps, each item counted once as EASE counts it. Both parts are dot products, so the whole
score is one. The user vector is the towers' vector with ``sqrt(weight) * sum of S rows``
appended, and the item vector is the towers' item vector with ``sqrt(weight) * T row`` appended.
Triton's retrieval, the fused model, the ANN index and the gateway serve it unchanged. The vectors
are only ``r`` wider.

The weight is chosen on validation (``export.pipeline.blend_item_item``). Zero, when the term
does not help, leaves the towers alone. Items outside the fit (new items, or items beyond
``DENSE_ITEMS_MAX``) have zero rows and are ranked by the towers alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.evaluation.baselines import EASE_LAMBDA, ease_matrix, fitted_items
from features.catalog import FIRST_ITEM_INDEX, ItemCatalog

# On Last.fm validation the blend with rank 256 did as well as with full EASE; 64 kept half the gain
# (docs/model.md). The vectors grow by this many columns.
ITEM_ITEM_RANK = 256


class ItemItem(nn.Module):
    """The factors of ``B_r``: ``sources`` [N, r] (what an item in the history contributes) and
    ``targets`` [N, r] (how a candidate receives it), both buffers (fitted, not trained)."""

    def __init__(self, sources: torch.Tensor, targets: torch.Tensor) -> None:
        super().__init__()
        if sources.shape != targets.shape or sources.ndim != 2:
            raise ValueError(f"sources and targets must be [N, r] alike, not {list(sources.shape)} "
                             f"and {list(targets.shape)}")
        self.register_buffer("sources", sources.detach().float().contiguous())
        self.register_buffer("targets", targets.detach().float().contiguous())
        self.first_item_index = FIRST_ITEM_INDEX  # an attribute, so TorchScript sees it

    @classmethod
    def empty(cls, rows: int, rank: int) -> ItemItem:
        """Zero factors of the right shape, for ``load_state_dict`` to fill."""
        return cls(torch.zeros(rows, rank), torch.zeros(rows, rank))

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """[B, L] item indices (left-padded) -> [B, r]: the sum of the ``sources`` rows of the
        distinct items in the window. PAD, OOV and out-of-range indices add nothing."""
        real = (history >= self.first_item_index) & (history < self.sources.shape[0])
        index = torch.where(real, history, 0)
        # an item repeated in the window counts once: EASE's input is the set of items
        same = index.unsqueeze(2) == index.unsqueeze(1)  # [B, L, L]
        length = history.shape[1]
        later = torch.ones(length, length, dtype=torch.bool, device=history.device).triu(1)
        keep = (real & ~(same & later).any(dim=2)).to(self.sources.dtype)
        return F.embedding_bag(index, self.sources, mode="sum", per_sample_weights=keep)


def fit_item_item(histories: dict[str, list], catalog: ItemCatalog, rank: int = ITEM_ITEM_RANK,
                  lam: float = EASE_LAMBDA) -> ItemItem:
    """EASE on ``histories`` (the baseline's fit, with its item cap), truncated to ``rank``."""
    columns = fitted_items(histories, catalog)
    b = ease_matrix(histories, catalog, lam, columns)
    rank = min(rank, len(columns))
    if len(columns) <= 4 * rank:
        u, sigma, vt = np.linalg.svd(b)
        u, sigma, v = u[:, :rank], sigma[:rank], vt[:rank].T
    else:
        # Randomised SVD: seconds instead of minutes at 10^4 items. Its own seed, so a run's
        # global random state (and with it the towers' training) is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            u, sigma, v = (t.numpy() for t in torch.svd_lowrank(torch.from_numpy(b), q=rank + 16, niter=4))
        u, sigma, v = u[:, :rank], sigma[:rank], v[:, :rank]
    root = np.sqrt(sigma)
    sources = np.zeros((catalog.num_embeddings, rank), dtype=np.float32)
    targets = np.zeros_like(sources)
    sources[columns] = u * root
    targets[columns] = v * root
    return ItemItem(torch.from_numpy(sources), torch.from_numpy(targets))


class BlendedUserTower(nn.Module):
    """The towers' user vector with ``sqrt(weight) *`` the item-item vector appended."""

    def __init__(self, towers: nn.Module, item_item: ItemItem, weight: float) -> None:
        super().__init__()
        self.towers = towers
        self.item_item = item_item
        self.scale = math.sqrt(weight)

    def forward(self, history: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.towers(history, types), self.item_item(history) * self.scale], dim=-1)


class BlendedItemTower(nn.Module):
    """The towers' item vector with ``sqrt(weight) *`` the item's ``targets`` row appended (an
    item outside the fit: zeros)."""

    def __init__(self, towers: nn.Module, item_item: ItemItem, weight: float) -> None:
        super().__init__()
        self.towers = towers
        self.item_item = item_item
        self.scale = math.sqrt(weight)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        rows = self.item_item.targets.shape[0]
        in_range = (index >= 0) & (index < rows)
        safe = torch.where(in_range, index, torch.zeros_like(index))
        extra = self.item_item.targets[safe] * in_range.unsqueeze(-1).to(self.item_item.targets.dtype)
        return torch.cat([self.towers(index), extra * self.scale], dim=-1)


class Blended(nn.Module):
    """Towers (one ``TwoTower`` or an ensemble) plus the item-item term, with a two-tower model's
    interface (``user_tower``, ``item_tower``, ``item_embeddings``), so training code, evaluation
    and export treat it as one more model. The towers' weights sit under ``towers.``, the
    factors under ``item_item.``."""

    def __init__(self, towers: nn.Module, item_item: ItemItem, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"the item-item weight must be positive, not {weight} (0: use the towers)")
        self.towers = towers
        self.item_item = item_item
        self.weight = float(weight)

    @property
    def user_tower(self) -> BlendedUserTower:
        return BlendedUserTower(self.towers.user_tower, self.item_item, self.weight)

    @property
    def item_tower(self) -> BlendedItemTower:
        return BlendedItemTower(self.towers.item_tower, self.item_item, self.weight)

    def item_embeddings(self) -> torch.Tensor:
        """[num_embeddings, D + r], every catalog row."""
        return torch.cat([self.towers.item_embeddings(),
                          self.item_item.targets * math.sqrt(self.weight)], dim=-1)
