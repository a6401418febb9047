"""Top-k retrieval over the item-embedding matrix: the `retrieve` stage (and the item-to-item
`similar_items` model), as TorchScript modules.

The same module is served by Triton and used in-process, so both rank with the same arithmetic.

The matrix is stored as columns ([D, num_embeddings], one row per dimension): a single query then
streams it front to back, adding one scaled row per dimension, rather than taking one short dot
product per item. It is the same product: on a CPU, 1.3-3.1x faster at batch 1 in 11 of 12
measured shapes and about even at batch 16 (perf/bench_item_matrix.py, perf/README.md).
"""

from __future__ import annotations

import torch
from torch import nn

from features.catalog import FIRST_ITEM_INDEX, OOV_INDEX


class TopKRetrieval(nn.Module):
    """Cosine scores of a user embedding against every real item; excluded items masked."""

    def __init__(self, item_embeddings: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("item_columns", item_embeddings.detach().float().t().contiguous())
        self.first_item_index = FIRST_ITEM_INDEX  # an attribute, so TorchScript sees it

    @torch.jit.export
    def item_embeddings(self) -> torch.Tensor:
        """[num_embeddings, D], one row per item (a view of the stored columns)."""
        return self.item_columns.t()

    @torch.jit.export
    def num_items(self) -> int:
        return int(self.item_columns.shape[1]) - self.first_item_index

    @torch.jit.export
    def embed(self, user_embedding: torch.Tensor) -> torch.Tensor:
        """The query vector for an ANN index: already a user embedding here."""
        return user_embedding

    @torch.jit.export
    def scores(self, user_embedding: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [B, num_embeddings] cosine scores, unrecommendable rows at -inf."""
        s = user_embedding @ self.item_columns
        s[:, :self.first_item_index] = float("-inf")  # PAD and OOV are never recommendable
        return s

    @torch.jit.export
    def top_k(self, scores: torch.Tensor, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask ``exclude`` ([B, E] item indices, PAD allowed) in ``scores`` and take the top ``k``.

        Excluded indices outside the matrix are ignored rather than raising: a stale client must
        not be able to crash a batch.
        """
        valid = (exclude >= 0) & (exclude < scores.shape[1])
        # An invalid index masks PAD instead, which is never recommendable anyway: one scatter,
        # no boolean indexing.
        scores = scores.scatter(1, torch.where(valid, exclude, 0), float("-inf"))
        values, indices = torch.topk(scores, k, dim=1)
        return indices, values

    def forward(self, user_embedding: torch.Tensor, exclude: torch.Tensor,
                k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensor-only signature for the libtorch backend, which batches requests into one call:
        every row gets the batch's largest ``k`` (callers slice to their own)."""
        return self.top_k(self.scores(user_embedding), exclude, int(k.max()))


class FusedRecommender(nn.Module):
    """User tower and retrieval in one TorchScript module: one Triton step instead of two, which
    saves the ensemble's hop between model instances per request. Its query is the user tower's
    two inputs (item indices, event-type codes); ``TopKRetrieval``'s is one user embedding."""

    def __init__(self, user_tower: nn.Module, retrieval: TopKRetrieval) -> None:
        super().__init__()
        self.user_tower = user_tower
        self.retrieval = retrieval

    @torch.jit.export
    def num_items(self) -> int:
        return self.retrieval.num_items()

    @torch.jit.export
    def embed(self, history: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Item indices and event-type codes, both [B, L] -> the ANN query vectors [B, D]."""
        return self.user_tower(history, types)

    @torch.jit.export
    def scores(self, history: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return self.retrieval.scores(self.user_tower(history, types))

    @torch.jit.export
    def top_k(self, scores: torch.Tensor, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.retrieval.top_k(scores, exclude, k)

    def forward(self, history: torch.Tensor, types: torch.Tensor, exclude: torch.Tensor,
                k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.retrieval.top_k(self.scores(history, types), exclude, int(k.max()))


class SimilarItems(nn.Module):
    """Item-to-item retrieval over the same item matrix: the `similar_items` model. Its query is
    one item index per row ([B, 1] int64); the answer is the items whose embeddings are closest
    (cosine, as the item matrix is the one ``TopKRetrieval`` scores users against). PAD, OOV and
    the query item itself are never returned. An index outside the matrix is bucketed to OOV, as
    the towers do, rather than raising (its row scores every item against the OOV embedding)."""

    def __init__(self, retrieval: TopKRetrieval) -> None:
        super().__init__()
        self.retrieval = retrieval
        self.oov_index = OOV_INDEX

    @torch.jit.export
    def num_items(self) -> int:
        return self.retrieval.num_items()

    def _rows(self, item: torch.Tensor) -> torch.Tensor:
        """[B, 1] (or [B]) item indices -> [B] rows of the item matrix, out of range -> OOV."""
        rows = item.reshape(-1).to(torch.int64)
        size = self.retrieval.item_columns.shape[1]
        return torch.where((rows >= 0) & (rows < size), rows, torch.full_like(rows, self.oov_index))

    def _query(self, rows: torch.Tensor) -> torch.Tensor:
        """Those rows' item embeddings [B, D], read from the stored columns."""
        return self.retrieval.item_columns.index_select(1, rows).t()

    @torch.jit.export
    def embed(self, item: torch.Tensor) -> torch.Tensor:
        """[B, 1] item indices -> their embeddings [B, D] (the ANN query vectors)."""
        return self._query(self._rows(item))

    @torch.jit.export
    def scores(self, item: torch.Tensor) -> torch.Tensor:
        """[B, 1] item indices -> [B, num_embeddings] cosine scores; PAD, OOV and the query at -inf."""
        rows = self._rows(item)
        s = self.retrieval.scores(self._query(rows))
        return s.scatter(1, rows.unsqueeze(1), float("-inf"))

    @torch.jit.export
    def top_k(self, scores: torch.Tensor, exclude: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.retrieval.top_k(scores, exclude, k)

    def forward(self, item: torch.Tensor, exclude: torch.Tensor,
                k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.retrieval.top_k(self.scores(item), exclude, int(k.max()))
