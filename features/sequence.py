"""User behaviour sequence -> user-tower input. Used by training examples and by serving."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from features.catalog import FIRST_ITEM_INDEX, PAD_INDEX, ItemCatalog


def encode_history(item_ids: Sequence[str], catalog: ItemCatalog, length: int) -> np.ndarray:
    """The last ``length`` items of a chronological history as model indices.

    Left-padded with ``PAD_INDEX`` so the most recent item is always the last column, which is
    where the user tower reads "what the user just did". Unknown items map to the OOV bucket.
    """
    return pad_left(catalog.indices_of(item_ids[-length:] if length else ()), length)


def pad_left(indices: np.ndarray, length: int) -> np.ndarray:
    """Keep the last ``length`` indices, left-padded with ``PAD_INDEX`` to exactly ``length``."""
    out = np.full(length, PAD_INDEX, dtype=np.int64)
    tail = np.asarray(indices, dtype=np.int64)[-length:] if length else np.empty(0, np.int64)
    if len(tail):
        out[length - len(tail):] = tail
    return out


def exclusion_indices(item_ids: Iterable[str], catalog: ItemCatalog) -> np.ndarray:
    """Model indices of the items never to return: unique, real items only (unknown ids dropped)."""
    indices = np.unique(catalog.indices_of(item_ids))
    return indices[indices >= FIRST_ITEM_INDEX]


def pad_exclusions(indices: np.ndarray, minimum: int = 16) -> np.ndarray:
    """PAD-fill to the next power of two: Triton batches only requests of equal shape, and a
    handful of sizes lets most requests share a batch."""
    size = max(minimum, 1 << int(np.ceil(np.log2(max(len(indices), 1)))))
    out = np.full(size, PAD_INDEX, dtype=np.int64)
    out[:len(indices)] = indices
    return out
