"""Small worlds for the refresh job: a tiny shop, a random-weight live checkpoint, fakes for the
events topic and the rollout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from export.data.synthetic import START_S, generate
from export.train import TrainConfig, new_model
from features.catalog import Item, ItemCatalog
from features.events import Event
from refresh.data import event_row
from refresh.source import ReadResult

# One model: the job's decisions are what these tests check (warm starts of an ensemble are
# checked in test_warm_start.py)
CONFIG = TrainConfig(dim=16, sequence_length=8, epochs=1, batch_size=64, members=1)
DAY_S = 86_400


@dataclass
class Shop:
    base: object  # interactions frame (export's file columns)
    catalog: ItemCatalog
    events: list[Event]  # the "new" half, ten days later
    checkpoint: Path
    base_file: Path


@pytest.fixture
def shop(tmp_path) -> Shop:
    first = generate(n_users=60, n_items=30, n_categories=4, days=10, seed=5)
    second = generate(n_users=61, n_items=30, n_categories=4, days=10, seed=5,
                      start_s=START_S + 10 * DAY_S)
    catalog = first.to_dataset().catalog
    base_file = tmp_path / "base.csv"
    first.interactions[["user_id", "item_id", "timestamp", "event_type", "value"]].to_csv(base_file,
                                                                                        index=False)
    frame = second.interactions
    events = [Event(event_id=f"e{i}", user_id=u, item_id=it, event_type=t, ts_ms=int(ts) * 1000)
              for i, (u, it, t, ts) in enumerate(zip(frame["user_id"], frame["item_id"],
                                                     frame["event_type"], frame["timestamp"],
                                                     strict=True))]
    torch.manual_seed(0)
    model = new_model(catalog, CONFIG)
    checkpoint = tmp_path / "live.pt"
    torch.save({"model": model.state_dict(), "config": CONFIG.as_dict()}, checkpoint)
    return Shop(first.interactions, catalog, events, checkpoint, base_file)


class FakeSource:
    """The events topic as the job sees it; ``committed`` counts the commits."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.commits = 0
        self.closed = False

    def read(self) -> ReadResult:
        return ReadResult([event_row(e) for e in self.events], start={0: 0},
                          end={0: len(self.events)})

    def commit(self) -> None:
        self.commits += 1

    def close(self) -> None:
        self.closed = True


@dataclass
class FakePublisher:
    catalogs: dict[int, ItemCatalog]
    live: int = 1
    published: list[Path] = field(default_factory=list)
    promoted: list[int] = field(default_factory=list)

    def live_version(self) -> int:
        return self.live

    def catalog(self, version: int) -> ItemCatalog:
        return self.catalogs[version]

    def publish(self, staging: Path) -> int:
        self.published.append(staging)
        version = max(self.catalogs) + 1
        self.catalogs[version] = ItemCatalog.from_json(staging / "retrieve" / "1" / "catalog.json")
        return version

    def promote(self, version, shadow_histories, min_overlap) -> dict:
        self.promoted.append(version)
        self.live = version
        return {"smoke": "ok"}

    def start_ab(self, version, candidate_weight) -> dict:
        return {"experiment": "x"}


def new_item(item_id: str, category: str) -> Item:
    return Item(item_id, f"New {item_id}", (category,), None, 9.99)
