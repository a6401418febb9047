"""The serving contract: model names, tensor names and file layout of the Triton repository.

Imported by the exporter (which writes config.pbtxt from it) and by the gateway (which builds
requests with it). Kept free of heavy imports so the gateway does not pull in torch.
"""

from pathlib import Path

USER_TOWER = "user_tower"
RETRIEVE = "retrieve"
RECOMMEND = "recommend"  # the ensemble: user_tower -> retrieve
RECOMMEND_FUSED = "recommend_fused"  # the same inputs/outputs, one TorchScript step

HISTORY = "HISTORY"  # INT64 [L] item indices, left-padded, most recent last
USER_EMBEDDING = "USER_EMBEDDING"  # FP32 [D]
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
