"""Behaviour logs in, clean chronological interactions out.

The bundled real dataset is MovieLens-100K, read from the files the ``recbole==1.2.1`` wheel ships
(the package is never imported; MovieLens terms forbid committing copies of the data).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.catalog import Item, ItemCatalog


class DatasetError(RuntimeError):
    """The requested dataset cannot be found or read."""


@dataclass
class Dataset:
    """Interactions sorted by (user, time) plus the item catalog they refer to."""

    name: str
    interactions: pd.DataFrame  # columns: user_id (str), item_id (str), timestamp (int64)
    catalog: ItemCatalog

    def user_sequences(self) -> dict[str, list[str]]:
        """Chronological item ids per user."""
        return {u: list(g) for u, g in self.interactions.groupby("user_id", sort=False)["item_id"]}


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
    """Every rating is an interaction (the protocol in shared/DESIGN.md)."""
    root = movielens_100k_dir()
    inter = pd.read_csv(
        root / "ml-100k.inter",
        sep="\t",
        header=0,
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": str, "item_id": str, "rating": float, "timestamp": np.int64},
    )
    raw_items = pd.read_csv(
        root / "ml-100k.item",
        sep="\t",
        header=0,
        names=["item_id", "title", "year", "genres"],
        dtype=str,
        keep_default_na=False,
    )
    items = [
        Item(
            item_id=row.item_id,
            title=row.title,
            categories=tuple(row.genres.split()),
            year=int(row.year) if row.year.isdigit() else None,
        )
        for row in raw_items.itertuples(index=False)
    ]
    return Dataset("ml-100k", clean_interactions(inter), ItemCatalog.from_items(items))


def clean_interactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop exact duplicates and sort by (user, timestamp).

    The sort is stable, so ties in timestamp keep file order: the "last" interaction of a user is
    then well defined and the same in every run.
    """
    frame = frame[["user_id", "item_id", "timestamp"]].drop_duplicates()
    return frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


@dataclass
class LeaveLastOutSplit:
    """Per user: last interaction = test, second last = validation, the rest = train."""

    train: dict[str, list[str]]
    valid: dict[str, str]
    test: dict[str, str]

    def history_for(self, stage: str) -> dict[str, list[str]]:
        """What the model may see when predicting ``stage`` ("valid" or "test")."""
        if stage == "valid":
            return self.train
        if stage == "test":
            return {u: self.train[u] + [self.valid[u]] for u in self.test}
        raise ValueError(f"unknown stage {stage!r}")


def leave_last_out(dataset: Dataset, min_interactions: int = 3) -> LeaveLastOutSplit:
    """The DESIGN.md protocol; users with fewer than ``min_interactions`` are left out."""
    train, valid, test = {}, {}, {}
    for user, seq in dataset.user_sequences().items():
        if len(seq) < min_interactions:
            continue
        train[user], valid[user], test[user] = seq[:-2], seq[-2], seq[-1]
    return LeaveLastOutSplit(train, valid, test)
