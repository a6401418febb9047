"""User behaviour sequence -> user-tower input. Used by training examples and by serving."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.catalog import PAD_INDEX, ItemCatalog


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
