"""The serving contract: model names, tensor names and file layout of the Triton repository.

Imported by the exporter (which writes config.pbtxt from it) and by the gateway (which builds
requests with it). Kept free of heavy imports so the gateway does not pull in torch.
"""

import json
from pathlib import Path
from typing import NamedTuple

USER_TOWER = "user_tower"
RETRIEVE = "retrieve"
RECOMMEND = "recommend"  # the ensemble: user_tower -> retrieve
RECOMMEND_FUSED = "recommend_fused"  # the same inputs/outputs, one TorchScript step
SIMILAR_ITEMS = "similar_items"  # item-to-item: ITEM, EXCLUDE, K -> ITEM_INDEX, SCORE

HISTORY = "HISTORY"  # INT64 [L] item indices, left-padded, most recent last
HISTORY_TYPES = "HISTORY_TYPES"  # INT64 [L] event-type codes of those steps (features.behaviour)
USER_EMBEDDING = "USER_EMBEDDING"  # FP32 [D]
ITEM = "ITEM"  # INT64 [1] the query item's index (similar_items)
EXCLUDE = "EXCLUDE"  # INT64 [-1] item indices never to return (PAD=0 allowed as filler)
K = "K"  # INT32 [1]
ITEM_INDEX = "ITEM_INDEX"  # INT64 [-1]
SCORE = "SCORE"  # FP32 [-1] cosine similarity

# Files next to the retrieve model that the gateway needs to turn indices back into items.
CATALOG_FILE = "catalog.json"
SERVING_FILE = "serving.json"


def latest_version(model_dir: Path) -> int:
    """The newest numbered version directory of a model (the one Triton's policy serves)."""
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise FileNotFoundError(f"no version directories under {model_dir}")
    return max(versions)


# Which version the gateways serve, written by `python -m export.triton.rollout` at the repository root:
# {"live": N, "previous": M | null, ...}. Without it, the newest version is live.
ROLLOUT_FILE = "rollout.json"
# The models that carry a version per rollout (the ensemble pins its steps to the live version).
# similar_items is the newest: a repository exported before it lacks it (export/triton/rollout.py
# keeps serving such a repository and refuses to publish into it; the gateway's similar-items
# route answers 501 there).
VERSIONED_MODELS = (USER_TOWER, RETRIEVE, RECOMMEND_FUSED, SIMILAR_ITEMS)


def versioned_models(repository: Path) -> tuple[str, ...]:
    """The versioned models ``repository`` has: one exported before a model existed lacks it (and
    is still served, rolled back and promoted over the ones it has)."""
    return tuple(m for m in VERSIONED_MODELS if (Path(repository) / m).is_dir())


def missing_models(*repositories: Path) -> str | None:
    """Why versions cannot move between ``repositories`` (a versioned model one of them lacks),
    or None: a version must hold the same models everywhere (export/triton/rollout.py publish)."""
    for repository in repositories:
        missing = sorted(set(VERSIONED_MODELS) - set(versioned_models(repository)))
        if missing:
            return (f"{repository} has no {', '.join(missing)} model: it was exported before it "
                    "existed, and a version must hold the same models everywhere; export a new "
                    "repository and deploy it instead of publishing a version")
    return None


def live_version(repository: Path) -> int:
    """The version gateways should serve: the rollout pointer, else the newest retrieve version."""
    pointer = Path(repository) / ROLLOUT_FILE
    if pointer.is_file():
        return int(json.loads(pointer.read_text())["live"])
    return latest_version(Path(repository) / RETRIEVE)


# Which contract tensor each of a model's inputs and outputs is, in config order: the exporter
# writes both parameters into every config.pbtxt (export/triton/repository.py, from model_specs),
# comma-separated. Under the python target they repeat the tensor names; under libtorch, whose
# models name tensors by position (INPUT__i / OUTPUT__i), they are how a client finds HISTORY.
CONTRACT_INPUTS = "contract_inputs"
CONTRACT_OUTPUTS = "contract_outputs"


class TensorNames(NamedTuple):
    """Contract name -> the model's own tensor name, for its inputs and for its outputs."""

    inputs: dict[str, str]
    outputs: dict[str, str]


def tensor_names(config: dict) -> TensorNames:
    """The mapping a client sends and reads by, from a model's config in Triton's JSON form (as
    ``get_model_config(..., as_json=True)`` or ``/v2/models/<m>/config`` answer it). A config
    without the parameters (an older export, a foreign model) maps every tensor to itself.
    Raises ValueError when a parameter does not name one contract tensor per config tensor."""
    parameters = config.get("parameters") or {}
    maps = []
    for field, key in (("input", CONTRACT_INPUTS), ("output", CONTRACT_OUTPUTS)):
        own = [t["name"] for t in config.get(field) or []]
        recorded = (parameters.get(key) or {}).get("string_value")
        contract = recorded.split(",") if recorded else own
        if len(contract) != len(own):
            raise ValueError(f"model {config.get('name')!r}: parameter {key} names {len(contract)} "
                             f"tensors ({recorded}) for its {len(own)} {field}s ({', '.join(own)})")
        maps.append(dict(zip(contract, own, strict=True)))
    return TensorNames(*maps)
