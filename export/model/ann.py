"""Catalog-scale retrieval: exact brute force or an approximate (faiss) index, chosen by catalog size.

Every kind answers the same question as ``export.model.retrieval.TopKRetrieval``: the ``k`` items with the
highest inner product (= cosine, the embeddings are unit-norm) for each query, with the reserved
rows (PAD, OOV) and each query's excluded items never returned. Ids are model indices, i.e. rows of
the item-embedding matrix, so callers cannot tell the kinds apart except by recall and latency.

Result contract of ``RetrievalIndex.search``: ``ids`` [B, k] int64 and ``scores`` [B, k] float32,
each row sorted by descending score. A row has fewer than ``k`` real items only when the catalog
minus that row's exclusions is smaller than ``k``; the missing tail is ``id -1, score -inf``.

Measured with ``perf/bench_retrieval_scale.py`` (results in ``perf/results/retrieval_scale.*``);
``choose_index`` encodes what those measurements say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from features.catalog import FIRST_ITEM_INDEX

IndexKind = Literal["exact", "hnsw", "ivf"]
KINDS: tuple[IndexKind, ...] = get_args(IndexKind)

# choose_index: the largest catalog served by brute force (D=64; perf/results/retrieval_scale.*,
# 2 shared CPU cores, batch 1). Exact p50 is ~2 ms at 100k items, where the 26 MB matrix still fits
# the 32 MiB L3 cache; beyond that every query streams the matrix from DRAM: ~7 ms at 200k, ~13 ms
# at 500k, ~25 ms at 1M (over the 20 ms p99 budget), and its tail is the most exposed to other
# processes on the box (p99 up to 150 ms at 200k-1M). HNSW stays ~1 ms p50 at 1M with recall@10
# ~0.97. Up to this size an ANN index buys ~1-2 ms and costs recall, a build step and a second file.
EXACT_MAX_ITEMS = 100_000
# The ANN kind above EXACT_MAX_ITEMS. HNSW over IVF at 1M: ~3x lower latency (p50 ~1 ms vs ~3.6 ms)
# for recall ~0.97 vs ~0.99. IVF builds ~15x faster (15 s vs ~4 min on 2 cores) in half the memory:
# the choice when rebuild time matters more than latency.
ANN_KIND: IndexKind = "hnsw"

# IVF: k-means wants ~40+ training points per centroid, and ~sqrt(N) lists balances the cost of
# scanning the centroids against the cost of scanning the probed lists.
_IVF_MIN_POINTS_PER_LIST = 39


@dataclass(frozen=True)
class RetrievalIndexConfig:
    """Which index to build and its knobs (only those of ``kind`` are used).

    HNSW: ``hnsw_m`` graph degree (memory ~ 2*M*4 bytes/item on top of the vectors),
    ``hnsw_ef_construction`` build-time beam (build time vs graph quality), ``hnsw_ef_search``
    query-time beam (latency vs recall; faiss raises it to the number of results asked for).
    IVF: ``ivf_nlist`` k-means lists, ``ivf_nprobe`` lists scanned per query (latency vs recall).
    """

    kind: IndexKind = "exact"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 128
    ivf_nlist: int = 1024
    ivf_nprobe: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; expected one of {KINDS}")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


def config_for(kind: IndexKind, num_items: int) -> RetrievalIndexConfig:
    """Default knobs for ``kind`` at a catalog of ``num_items`` real items, tuned for recall@10
    >= ~0.95 on the benchmark's clustered data.

    HNSW does not depend on size: M=32, efConstruction=40, efSearch=128 gave recall@10 0.97 at 1M
    (efSearch 64: 0.92; M=16 with efSearch 128: 0.91, and built no faster). IVF scales nlist with
    sqrt(N) and probes 1/8 of the lists, at least 16 (recall 0.96-0.99 from 10k to 1M).
    """
    config = RetrievalIndexConfig(kind=kind)
    if kind != "ivf":
        return config
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(num_items))))
    nlist = max(1, min(nlist, num_items // _IVF_MIN_POINTS_PER_LIST))
    nprobe = min(nlist, max(16, nlist // 8))
    return replace(config, ivf_nlist=nlist, ivf_nprobe=nprobe)


def choose_index(num_items: int) -> RetrievalIndexConfig:
    """The index to serve a catalog of ``num_items`` real items: exact brute force up to
    ``EXACT_MAX_ITEMS`` (it fits the latency budget and is the reference), ``ANN_KIND`` above."""
    if num_items <= EXACT_MAX_ITEMS:
        return RetrievalIndexConfig(kind="exact")
    return config_for(ANN_KIND, num_items)


class RetrievalIndex:
    """Top-k inner-product search over the real items; see the module docstring for the contract.

    Subclasses search in *internal* ids (row - FIRST_ITEM_INDEX, i.e. reserved rows are not in the
    index at all) and implement ``_search``; this class converts ids and exclusions.
    """

    config: RetrievalIndexConfig

    @property
    def kind(self) -> IndexKind:
        return self.config.kind

    @property
    def num_items(self) -> int:
        """Real (recommendable) items in the index."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """Bytes the index holds (vectors plus any graph or lists)."""
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        raise NotImplementedError

    @staticmethod
    def load(path: str | Path) -> RetrievalIndex:
        return load_index(path)

    def search(self, queries: np.ndarray, k: int,
               exclude: list[np.ndarray] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` model indices and scores per query row.

        ``exclude``: one array of model indices per query (or a [B, E] array padded with PAD);
        reserved and out-of-range entries are ignored, like ``TopKRetrieval.top_k`` does.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [B, {self.dim}], got {list(queries.shape)}")
        if k < 1:
            raise ValueError("k must be >= 1")
        batch = queries.shape[0]
        if batch == 0:
            return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
        if exclude is not None and len(exclude) != batch:
            raise ValueError(f"exclude has {len(exclude)} rows for {batch} queries")
        none = np.empty(0, dtype=np.int64)
        internal = [self._internal_ids(e) for e in exclude] if exclude is not None else [none] * batch
        ids, scores = self._search(queries, k, internal)
        return np.where(ids >= 0, ids + FIRST_ITEM_INDEX, -1), scores

    def _internal_ids(self, model_indices: np.ndarray) -> np.ndarray:
        ids = np.asarray(model_indices, dtype=np.int64).ravel() - FIRST_ITEM_INDEX
        return np.unique(ids[(ids >= 0) & (ids < self.num_items)])

    def _search(self, queries: np.ndarray, k: int,
                exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ExactIndex(RetrievalIndex):
    """Brute force: one matmul and a top-k, the arithmetic of ``TopKRetrieval`` (the reference).

    Scores every item, so the cost grows linearly with the catalog: one pass over N*D*4 bytes per
    request, memory-bandwidth bound at batch 1."""

    def __init__(self, items: np.ndarray) -> None:
        """``items``: [N, D] real-item rows only (reserved rows already dropped)."""
        self._items = np.ascontiguousarray(items, dtype=np.float32)
        self.config = RetrievalIndexConfig(kind="exact")

    @property
    def num_items(self) -> int:
        return int(self._items.shape[0])

    @property
    def dim(self) -> int:
        return int(self._items.shape[1])

    def memory_bytes(self) -> int:
        return int(self._items.nbytes)

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:  # a file object, so numpy does not append ".npy"
            np.save(f, self._items)

    def _search(self, queries: np.ndarray, k: int,
                exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # numpy's BLAS for the product (measured ~3x faster than torch's CPU kernel for [B, D] x [D, N]
        # at small B), torch for the selection (torch.topk ~2x faster than np.argpartition at 1M).
        scores = queries @ self._items.T
        rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
        if rows.size:
            scores[rows, np.concatenate(exclude)] = -np.inf
        values, indices = torch.topk(torch.from_numpy(scores), min(k, self.num_items), dim=1)
        ids, values = indices.numpy(), values.numpy()
        ids = np.where(np.isneginf(values), -1, ids)  # masked items only surface when the catalog runs out
        return _pad(ids, values, k)


class FaissIndex(RetrievalIndex):
    """HNSW or IVF-Flat with inner-product metric. Exclusions: over-fetch ``k + len(exclude)`` and
    filter, which keeps one batched faiss call per request (a per-query IDSelector would not)."""

    def __init__(self, index, config: RetrievalIndexConfig) -> None:  # index: faiss.Index
        self._index = index
        self.config = config

    @property
    def num_items(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def memory_bytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self._index).nbytes)

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self._index, str(path))

    def _search(self, queries: np.ndarray, k: int,
                exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        n, batch = self.num_items, len(queries)
        # Excluded (row, id) pairs as sorted keys row * n + id: one searchsorted filters the batch.
        keys = np.sort(np.concatenate([row * n + e for row, e in enumerate(exclude)]))
        want = np.minimum(k, n - np.array([len(e) for e in exclude]))
        ids = np.full((batch, k), -1, dtype=np.int64)
        scores = np.full((batch, k), -np.inf, dtype=np.float32)
        fetch = min(n, k + max(len(e) for e in exclude))
        nprobe = self.config.ivf_nprobe
        todo = np.arange(batch)
        while True:
            got_scores, got_ids = self._index.search(queries[todo], fetch, params=self._params(nprobe))
            keep = got_ids >= 0
            if keys.size:
                pair = todo[:, None] * n + got_ids
                keep &= keys[np.searchsorted(keys, pair).clip(max=keys.size - 1)] != pair
            first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept positions, in score order
            kept = np.take_along_axis(keep, first, axis=1)
            ids[todo, :first.shape[1]] = np.where(kept, np.take_along_axis(got_ids, first, axis=1), -1)
            scores[todo, :first.shape[1]] = np.where(
                kept, np.take_along_axis(got_scores, first, axis=1), -np.inf)
            todo = todo[(ids[todo] >= 0).sum(axis=1) < want[todo]]
            # Rare: the approximate search found too few non-excluded items (IVF's probed lists too
            # small, or an HNSW beam full of exclusions). Widen the search for those rows only.
            exhausted = fetch == n and (self.kind != "ivf" or nprobe >= self.config.ivf_nlist)
            if not todo.size or exhausted:
                return ids, scores
            fetch = min(n, 2 * fetch)  # HNSW's beam is max(efSearch, fetch): this widens it too
            nprobe = min(self.config.ivf_nlist, 2 * nprobe)

    def _params(self, nprobe: int):
        """None (the index's own efSearch / nprobe) unless IVF is widening its probe."""
        if self.kind != "ivf" or nprobe == self.config.ivf_nprobe:
            return None
        import faiss

        return faiss.SearchParametersIVF(nprobe=nprobe)


def build_index(item_embeddings: np.ndarray, config: RetrievalIndexConfig | None = None) -> RetrievalIndex:
    """Index the real-item rows of ``item_embeddings`` ([N, D] float32, unit-norm, rows
    ``< FIRST_ITEM_INDEX`` reserved, as given to ``TopKRetrieval``). ``config`` defaults to
    ``choose_index`` for the catalog size."""
    item_embeddings = np.asarray(item_embeddings)
    if item_embeddings.ndim != 2:
        raise ValueError(f"item_embeddings must be [N, D], got {list(item_embeddings.shape)}")
    items = np.ascontiguousarray(item_embeddings[FIRST_ITEM_INDEX:], dtype=np.float32)
    if not len(items):
        raise ValueError("no real items to index")
    config = config or choose_index(len(items))
    if config.kind == "exact":
        return ExactIndex(items)

    import faiss

    dim = items.shape[1]
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    else:
        if config.ivf_nlist > len(items):
            raise ValueError(f"ivf_nlist={config.ivf_nlist} exceeds the {len(items)} items")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, config.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(items)
        index.nprobe = config.ivf_nprobe
    index.add(items)
    return FaissIndex(index, config)


def load_index(path: str | Path) -> RetrievalIndex:
    """Read an index written by ``RetrievalIndex.save``: a .npy matrix (exact) or a faiss index.

    The search knobs (efSearch, nprobe) come back as they were saved."""
    with open(path, "rb") as f:
        is_numpy = f.read(6) == b"\x93NUMPY"
    if is_numpy:
        return ExactIndex(np.load(path))

    import faiss

    index = faiss.read_index(str(path))  # swig returns the concrete class
    if isinstance(index, faiss.IndexHNSWFlat):
        hnsw = index.hnsw
        config = RetrievalIndexConfig(kind="hnsw", hnsw_m=hnsw.nb_neighbors(1),
                                      hnsw_ef_construction=hnsw.efConstruction,
                                      hnsw_ef_search=hnsw.efSearch)
    elif isinstance(index, faiss.IndexIVFFlat):
        config = RetrievalIndexConfig(kind="ivf", ivf_nlist=index.nlist, ivf_nprobe=index.nprobe)
    else:
        raise ValueError(f"{path}: unsupported faiss index {type(index).__name__}")
    return FaissIndex(index, config)


def _pad(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    missing = k - ids.shape[1]
    if missing <= 0:
        return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)
    return (np.pad(ids, ((0, 0), (0, missing)), constant_values=-1).astype(np.int64),
            np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf).astype(np.float32))
