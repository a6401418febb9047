"""perf_analyzer input data built from real user histories, encoded with the serving feature code.

perf_analyzer's ``--input-data`` JSON (docs: perf_analyzer "Real Input Data") is::

    {"data": [{"HISTORY": {"content": [...], "shape": [L]}, "HISTORY_TYPES": {...},
               "EXCLUDE": {...}, "K": {...}}, ...]}

one entry per request (batch 1, so ``shape`` leaves out the batch dimension), sent round-robin,
each tensor under the name the model's config gives it (``INPUT__i`` under the libtorch target:
``features.contract.tensor_names``).
Random or zero inputs would measure a different workload: an all-PAD history skips most of the
tower's work and an empty exclusion list skips the masking.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from features import contract as sig
from features.behaviour import Step, steps_of
from features.catalog import PAD_INDEX, ItemCatalog
from features.model_inputs import ModelInputs, build_inputs, stack_inputs
from features.user_state import SnapshotRow, snapshot_events

log = logging.getLogger(__name__)

# Triton's dynamic batcher only puts requests with equal shapes into one batch, so every request
# carries EXCLUDE at the same width. 256 covers all seen items of 91% of ML-100K users (median 65); longer
# histories keep their most recent 256 (the items a user is most likely to be shown again).
EXCLUDE_WIDTH = 256
DEFAULT_K = 10
# Below this share of known items the histories belong to another catalog (another dataset):
# every row would be OOV, which is no better than zeros.
MIN_KNOWN_SHARE = 0.9


def snapshot_steps(snapshot: Mapping[str, Sequence[SnapshotRow]]) -> dict[str, list[Step]]:
    """A user-history snapshot (``user_histories.json``: bare item ids or typed event rows, see
    ``features.user_state``) as each user's steps, in the order and with the types the feature
    stores give the gateway."""
    return {user: steps_of(snapshot_events(user, rows)) for user, rows in snapshot.items()}


def recent_seen(item_ids: Sequence[str], catalog: ItemCatalog, limit: int) -> list[str]:
    """The distinct items of a history that ``catalog`` knows, most recent first, at most ``limit``.

    What a request at a fixed EXCLUDE width can exclude: the gateway excludes every seen item,
    but a fixed width has to choose, and the recent ones are the most likely to be shown again.
    """
    out: dict[str, None] = {}
    for item in reversed(item_ids):
        if len(out) == limit:
            break
        if item in catalog:
            out.setdefault(item)
    return list(out)


def fixed_width(exclude: np.ndarray, width: int) -> np.ndarray:
    """EXCLUDE rows PAD-filled or cut to exactly ``width`` columns; only PAD may be cut."""
    if (exclude[:, width:] != PAD_INDEX).any():
        raise ValueError(f"an EXCLUDE row has more than {width} items")
    out = np.full((len(exclude), width), PAD_INDEX, dtype=np.int64)
    keep = min(width, exclude.shape[1])
    out[:, :keep] = exclude[:, :keep]
    return out


def build_rows(
    histories: Mapping[str, Sequence[str]],
    catalog: ItemCatalog,
    sequence_length: int,
    *,
    users: int,
    exclude_width: int = EXCLUDE_WIDTH,
    k: int = DEFAULT_K,
    seed: int = 0,
) -> ModelInputs:
    """``users`` randomly chosen (seeded) users' requests, one row each, built as the gateway
    builds them (``features.model_inputs.build_inputs``) but with EXCLUDE at one fixed width.
    ``histories`` are steps (``snapshot_steps``), or plain item ids, sent with type "unknown".

    Raises ValueError if the histories do not belong to ``catalog`` (too many unknown items) or
    no user has a known item.
    """
    item_ids = [i for h in histories.values() for i in h]
    known = sum(i in catalog for i in item_ids) / max(len(item_ids), 1)
    if known < MIN_KNOWN_SHARE:
        raise ValueError(f"only {known:.0%} of history items are in the catalog: the histories "
                         "come from another dataset than the model")
    candidates = sorted(u for u, h in histories.items() if any(i in catalog for i in h))
    if not candidates:
        raise ValueError("no user has a known item")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), size=min(users, len(candidates)), replace=False)
    picked = [histories[candidates[i]] for i in sorted(chosen)]
    batch = stack_inputs([build_inputs(h, catalog, sequence_length, k,
                                       exclude=recent_seen(h, catalog, exclude_width))
                          for h in picked])
    return replace(batch, exclude=fixed_width(batch.exclude, exclude_width))


def user_embeddings(user_tower_pt: Path, history: np.ndarray, history_types: np.ndarray,
                    chunk: int = 256) -> np.ndarray:
    """Run the exported TorchScript user tower on ``history`` and its type codes: the
    USER_EMBEDDING rows that the ensemble's first step would hand to ``retrieve``."""
    import torch  # only needed here; keeps the JSON helpers importable without torch

    tower = torch.jit.load(str(user_tower_pt), map_location="cpu").eval()
    with torch.inference_mode():
        parts = [tower(torch.from_numpy(history[i:i + chunk]),
                       torch.from_numpy(history_types[i:i + chunk])).numpy()
                 for i in range(0, len(history), chunk)]
    return np.concatenate(parts).astype(np.float32)


def perf_analyzer_data(tensors: Mapping[str, np.ndarray]) -> dict:
    """``{"data": [...]}`` with one batch-1 request per row of the (equally long) arrays."""
    lengths = {len(a) for a in tensors.values()}
    if len(lengths) != 1:
        raise ValueError(f"tensors have different row counts: { {n: len(a) for n, a in tensors.items()} }")
    rows = lengths.pop()
    return {"data": [
        {name: {"content": a[r].ravel().tolist(), "shape": list(a[r].shape)}
         for name, a in tensors.items()}
        for r in range(rows)
    ]}


def model_tensors(rows: ModelInputs, embeddings: np.ndarray | None) -> dict[str, dict[str, np.ndarray]]:
    """Inputs per model: the ensemble and the fused model take what a client sends; ``user_tower``
    only the history (items and types); ``retrieve`` the tower's output (when ``embeddings`` is
    given)."""
    client = rows.tensors()
    out = {
        sig.USER_TOWER: {sig.HISTORY: rows.history, sig.HISTORY_TYPES: rows.history_types},
        sig.RECOMMEND: client,
        sig.RECOMMEND_FUSED: client,
    }
    if embeddings is not None:
        out[sig.RETRIEVE] = {sig.USER_EMBEDDING: embeddings, sig.EXCLUDE: rows.exclude, sig.K: rows.k}
    return out


def latest_version(model_dir: Path) -> Path:
    """The newest version folder itself (``sig.latest_version`` gives its number)."""
    return model_dir / str(sig.latest_version(model_dir))


def write_input_files(
    repository: Path,
    histories: Mapping[str, Sequence[str]],
    out_dir: Path,
    *,
    users: int,
    exclude_width: int = EXCLUDE_WIDTH,
    k: int = DEFAULT_K,
    seed: int = 0,
) -> dict[str, Path]:
    """One perf_analyzer JSON per model, from the repository's own catalog and sequence length,
    its tensors named as the model's config.pbtxt maps the contract (either target)."""
    from export.triton.config_files import read_config_json

    retrieve_dir = latest_version(repository / sig.RETRIEVE)
    catalog = ItemCatalog.from_json(retrieve_dir / sig.CATALOG_FILE)
    serving = json.loads((retrieve_dir / sig.SERVING_FILE).read_text())
    rows = build_rows(histories, catalog, int(serving["sequence_length"]), users=users,
                      exclude_width=exclude_width, k=k, seed=seed)
    tower_pt = latest_version(repository / sig.USER_TOWER) / "model.pt"
    embeddings = user_embeddings(tower_pt, rows.history, rows.history_types)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for model, tensors in model_tensors(rows, embeddings).items():
        names = sig.tensor_names(read_config_json(repository / model / "config.pbtxt")).inputs
        paths[model] = out_dir / f"input_{model}.json"
        paths[model].write_text(json.dumps(perf_analyzer_data({names[n]: a for n, a in tensors.items()})))
    log.info("input data: %d users, L=%d, EXCLUDE width %d, K=%d -> %s", rows.batch_size,
             rows.history.shape[1], exclude_width, k, out_dir)
    return paths
