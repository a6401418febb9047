"""Train the two towers: next-item prediction with a full softmax over the catalog.

Each training example is (the last L items before position t, the item at t) for every position
of every user's training sequence. The catalog is small enough (thousands of items) that scoring
the whole of it each step is cheaper than sampling negatives and needs no correction.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from export.towers import TwoTower
from features.catalog import FIRST_ITEM_INDEX, ItemCatalog
from features.sequence import pad_left

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 64
    sequence_length: int = 50
    epochs: int = 6
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    temperature: float = 0.07
    recency_decay: float = 0.9
    dropout: float = 0.1
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_examples(
    sequences: dict[str, list[str]], catalog: ItemCatalog, sequence_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """(histories [N, L], targets [N]) for every next-item position of every sequence."""
    histories, targets = [], []
    for user in sorted(sequences):
        indices = catalog.indices_of(sequences[user])
        for t in range(1, len(indices)):
            histories.append(pad_left(indices[max(0, t - sequence_length):t], sequence_length))
            targets.append(indices[t])
    return np.stack(histories), np.asarray(targets, dtype=np.int64)


def encode_histories(histories: Sequence[Sequence[str]], catalog: ItemCatalog, length: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([pad_left(catalog.indices_of(h), length) for h in histories]))


def score_histories(model: TwoTower, catalog: ItemCatalog, length: int):
    """A ScoreFn (see export.evaluate) backed by the model, cosine scores over every catalog row."""

    @torch.no_grad()
    def score(histories: Sequence[Sequence[str]]) -> np.ndarray:
        model.eval()
        users = model.user_tower(encode_histories(histories, catalog, length))
        return (users @ model.item_embeddings().T).numpy()

    return score


def train(
    model: TwoTower,
    histories: np.ndarray,
    targets: np.ndarray,
    config: TrainConfig,
    on_epoch_end=None,
) -> list[dict]:
    """Train in place; returns one dict of epoch statistics per epoch.

    ``on_epoch_end(epoch, model) -> dict`` may add validation metrics to the epoch record.
    """
    seed_everything(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    x_all = torch.from_numpy(histories)
    y_all = torch.from_numpy(targets)
    generator = torch.Generator().manual_seed(config.seed)
    records = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(y_all), generator=generator)
        total, batches = 0.0, 0
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"epoch {epoch}/{config.epochs}",
                   unit="batch", leave=False)
        for start in bar:
            idx = order[start:start + config.batch_size]
            users = model.user_tower(x_all[idx])
            items = model.item_embeddings()
            logits = users @ items.T / config.temperature
            logits[:, :FIRST_ITEM_INDEX] = float("-inf")  # PAD/OOV are never a right answer
            loss = F.cross_entropy(logits, y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss)
            batches += 1
            bar.set_postfix(loss=f"{total / batches:.3f}")
        record = {"epoch": epoch, "loss": total / max(batches, 1)}
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch, model))
        log.info("epoch %s", record)
        records.append(record)
    model.eval()
    return records
