"""Behaviour logs in, clean chronological interactions out.

Three sources, one code path (``dataset_from_frames``): the bundled MovieLens-100K, a user-supplied
interactions file (CSV or Parquet, optional item-attributes file) and the synthetic generator in
``export/data/synthetic.py``. Every source goes through ``clean_interactions``
(``export/data/cleaning.py``), which rejects malformed rows with counted reasons instead of
training on them silently.

MovieLens-100K is read from the files the ``recbole==1.2.1`` wheel ships (the package is never
imported; MovieLens terms forbid committing copies of the data).
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from export.data.cleaning import CleaningReport, DatasetError, clean_interactions, items_from_frame
from features.behaviour import Step
from features.catalog import Item, ItemCatalog

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Interactions sorted by (user, time, event id) plus the item catalog they refer to."""

    name: str
    # columns: user_id (str), item_id (str), ts_ms (int64 epoch ms), event_id (str),
    # event_type (str, one of EVENT_TYPES), value (float, NaN when absent)
    interactions: pd.DataFrame
    catalog: ItemCatalog
    cleaning: CleaningReport | None = None

    def user_steps(self) -> dict[str, list[Step]]:
        """Every user's behaviour as the user tower reads it (``features.behaviour``): one step per
        event, in (time, event id) order, repeats included."""
        return steps_by_user(self.interactions)

    def user_sequences(self, first_occurrence_only: bool = False) -> dict[str, list[str]]:
        """Chronological item ids per user; optionally each item only where the user first met it."""
        groups = self.interactions.groupby("user_id", sort=False)["item_id"]
        if first_occurrence_only:
            return {u: list(dict.fromkeys(g)) for u, g in groups}
        return {u: list(g) for u, g in groups}

    def snapshot_rows(self) -> dict[str, list[list]]:
        """Per user ``[event_id, item_id, event_type, ts_ms]`` rows: the batch snapshot the feature
        stores load (``FeatureStore.load_snapshot``), so serving starts from the same events, in
        the same order, with the same types as training."""
        frame = self.interactions
        rows = zip(frame["event_id"], frame["item_id"], frame["event_type"],
                   frame["ts_ms"].astype(int).tolist(), strict=True)
        out: dict[str, list[list]] = {}
        for user, row in zip(frame["user_id"], rows, strict=True):
            out.setdefault(user, []).append(list(row))
        return out


def steps_by_user(frame: pd.DataFrame) -> dict[str, list[Step]]:
    """Steps per user of a frame sorted by (user, time, event id), e.g. any slice of
    ``Dataset.interactions``."""
    out: dict[str, list[Step]] = {}
    for user, item, event_type, ts_ms in zip(frame["user_id"], frame["item_id"], frame["event_type"],
                                             frame["ts_ms"], strict=True):
        out.setdefault(user, []).append(Step(item, event_type, ts_ms))
    return out


# --- sources ----------------------------------------------------------------------------------


def movielens_100k_dir() -> Path:
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError as exc:
        raise DatasetError(
            "MovieLens-100K comes from the recbole==1.2.1 wheel; run scripts/setup.sh "
            "(pip install --no-deps recbole==1.2.1)"
        ) from exc
    path = Path(str(dist.locate_file("recbole/dataset_example/ml-100k")))
    if not (path / "ml-100k.inter").is_file():
        raise DatasetError(f"ml-100k files not found under {path}")
    return path


def load_movielens_100k() -> Dataset:
    """Every rating is an interaction (the protocol in docs/evaluation.md); value = the rating."""
    root = movielens_100k_dir()
    inter = pd.read_csv(
        root / "ml-100k.inter",
        sep="\t",
        header=0,
        names=["user_id", "item_id", "value", "timestamp"],
        dtype={"user_id": str, "item_id": str, "value": float, "timestamp": np.int64},
    )
    inter["event_type"] = "rating"
    raw_items = pd.read_csv(
        root / "ml-100k.item",
        sep="\t",
        header=0,
        names=["item_id", "title", "year", "genres"],
        dtype=str,
        keep_default_na=False,
    )
    items = pd.DataFrame({
        "item_id": raw_items["item_id"],
        "title": raw_items["title"],
        "year": raw_items["year"],
        "categories": raw_items["genres"].str.split().str.join("|"),
    })
    return dataset_from_frames("ml-100k", inter, items)


def load_interactions_file(
    path: str | Path, items_path: str | Path | None = None, name: str | None = None
) -> Dataset:
    """A behaviour log (CSV or Parquet, chosen by suffix) and optional item attributes.

    Interactions: ``user_id, item_id, timestamp`` required; ``event_type``, ``value``, ``event_id``
    and ``context`` optional; other columns are ignored. Items: ``item_id`` required;
    ``title, categories, year, price`` optional (``stock`` and others ignored). See docs/data.md,
    "Bring your own data".
    """
    path = Path(path)
    interactions = read_table(path)
    items = read_table(Path(items_path)) if items_path is not None else None
    return dataset_from_frames(name or _stem(path), interactions, items, source=str(path))


def read_table(path: Path) -> pd.DataFrame:
    """CSV (all cells read as text, so cleaning sees exactly what the file says) or Parquet."""
    suffixes = "".join(path.suffixes[-2:]).lower()
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix.lower() == ".csv" or suffixes == ".csv.gz":
            return pd.read_csv(path, dtype=str)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            ValueError) as exc:
        raise DatasetError(f"{path}: cannot be read ({exc})") from exc
    raise DatasetError(f"{path}: unknown file type (use .csv, .csv.gz, .parquet or .pq)")


def dataset_from_frames(
    name: str,
    interactions: pd.DataFrame,
    items: pd.DataFrame | None = None,
    *,
    source: str | None = None,
    now_s: float | None = None,
) -> Dataset:
    """Clean the interactions and build the catalog: listed items first (file order, including
    items nobody interacted with, i.e. cold items), then unlisted interacted items (sorted, title =
    id, no attributes)."""
    source = source or name
    cleaned, report = clean_interactions(interactions, source=source, now_s=now_s)
    listed = items_from_frame(items, source=f"{source} (items)") if items is not None else []
    known = {item.item_id for item in listed}
    unlisted = [Item(i, title=i) for i in sorted(set(cleaned["item_id"]) - known)]
    if listed and unlisted:
        log.info("%s: %d interacted items have no attributes", source, len(unlisted))
    return Dataset(name, cleaned, ItemCatalog.from_items(listed + unlisted), report)


def _stem(path: Path) -> str:
    return Path(path.name.removesuffix(".gz")).stem
