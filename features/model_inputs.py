"""A user's behaviour -> the served model's inputs, and its outputs -> catalog items.

The one place a request for ``recommend`` / ``recommend_fused`` is assembled: the gateway, the
rollout checks, the perf scripts and the tests all call ``build_inputs`` (one user) and
``stack_inputs`` (a batch), so they cannot drift apart from each other or from the contract in
``features/contract.py``. ``ranked_items`` is the way back: indices of one version's catalog to
items, resolved once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from features import contract
from features.behaviour import encode_types
from features.catalog import FIRST_ITEM_INDEX, PAD_INDEX, Item, ItemCatalog
from features.sequence import encode_history, exclusion_indices, pad_exclusions


@dataclass(frozen=True)
class ModelInputs:
    """A batch of requests, one row per user, in the contract's dtypes and shapes."""

    history: np.ndarray  # INT64 [B, L]: item indices, left-padded, most recent last
    history_types: np.ndarray  # INT64 [B, L]: event-type codes of the same steps
    exclude: np.ndarray  # INT64 [B, E]: item indices never to return, PAD-filled
    k: np.ndarray  # INT32 [B, 1]

    @property
    def batch_size(self) -> int:
        return len(self.history)

    def tensors(self) -> dict[str, np.ndarray]:
        """Contract tensor name -> array, in the models' input order."""
        return {contract.HISTORY: self.history, contract.HISTORY_TYPES: self.history_types,
                contract.EXCLUDE: self.exclude, contract.K: self.k}

    def infer_inputs(self, client: ModuleType, names: Mapping[str, str] | None = None) -> list:
        """``InferInput``s for ``tritonclient.grpc`` / ``tritonclient.grpc.aio`` /
        ``tritonclient.http`` (passed in, so this layer does not import a Triton client), named
        by ``names`` (contract name -> the model's name: ``contract.tensor_names(config).inputs``,
        e.g. ``INPUT__0`` for HISTORY under libtorch; default: the contract names)."""
        return [infer_input(client, names[name] if names else name, array)
                for name, array in self.tensors().items()]


_TRITON_DTYPES = {np.int64: "INT64", np.int32: "INT32", np.float32: "FP32"}


def infer_input(client: ModuleType, name: str, array: np.ndarray):
    """One Triton ``InferInput`` named ``name`` holding ``array`` (a client module, as above)."""
    tensor = client.InferInput(name, list(array.shape), _TRITON_DTYPES[array.dtype.type])
    tensor.set_data_from_numpy(array)
    return tensor


def build_inputs(history: Sequence[str], catalog: ItemCatalog, sequence_length: int, k: int, *,
                 exclude: Iterable[str] = ()) -> ModelInputs:
    """One user's request: the chronological behaviour (oldest first: ``features.behaviour.Step``s,
    or plain item ids, read as type "unknown") and the item ids never to return. Unknown history
    items map to the OOV bucket; unknown exclusions are dropped (the model cannot return them
    anyway). Exclusions are padded to a power of two so that requests of similar size share a
    Triton batch."""
    return ModelInputs(
        history=encode_history(history, catalog, sequence_length).reshape(1, -1),
        history_types=encode_types(history, sequence_length).reshape(1, -1),
        exclude=pad_exclusions(exclusion_indices(exclude, catalog)).reshape(1, -1),
        k=np.array([[k]], dtype=np.int32),
    )


def stack_inputs(rows: Sequence[ModelInputs]) -> ModelInputs:
    """Several requests as one batch; exclusions PAD-filled to the widest row."""
    if not rows:
        raise ValueError("no requests to stack")
    width = max(r.exclude.shape[1] for r in rows)
    exclude = np.full((sum(r.batch_size for r in rows), width), PAD_INDEX, dtype=np.int64)
    start = 0
    for r in rows:
        exclude[start:start + r.batch_size, :r.exclude.shape[1]] = r.exclude
        start += r.batch_size
    return ModelInputs(history=np.concatenate([r.history for r in rows]),
                       history_types=np.concatenate([r.history_types for r in rows]),
                       exclude=exclude, k=np.concatenate([r.k for r in rows]))


def ranked_items(indices: np.ndarray, scores: np.ndarray,
                 catalog: ItemCatalog) -> list[tuple[Item, float]]:
    """One row of the model's answer as (item, score), best first. Rows past the last real item
    (score -inf: fewer than k items were left after exclusions) and reserved rows are dropped."""
    return [(catalog.item_at(i), s)
            for i, s in zip(np.asarray(indices).tolist(), np.asarray(scores).tolist(), strict=True)
            if i >= FIRST_ITEM_INDEX and np.isfinite(s)]
