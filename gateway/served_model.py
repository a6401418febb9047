"""What the gateway needs to know about the model Triton serves: item catalog, popular items."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from features import contract as sig
from features.catalog import ItemCatalog


@dataclass(frozen=True)
class ServedModel:
    version: int
    catalog: ItemCatalog
    popular_items: list[str]
    sequence_length: int


def load_served_model(repository: Path, version: int | None = None) -> ServedModel:
    """Read the catalog of ``version`` (default: the live one, see ``features.contract``)."""
    version = sig.live_version(repository) if version is None else version
    version_dir = repository / sig.RETRIEVE / str(version)
    info = json.loads((version_dir / sig.SERVING_FILE).read_text())
    return ServedModel(
        version=version,
        catalog=ItemCatalog.from_json(version_dir / sig.CATALOG_FILE),
        popular_items=list(info.get("popular_items", [])),
        sequence_length=int(info["sequence_length"]),
    )
