"""The candidate starts where the live version is: its weights on the extended catalog.

A new model is built on the candidate's catalog (old items first, at their old indices; new
categories after the old ones) and every parameter of the live checkpoint is copied in. Tables
that grew keep the live rows and columns; what is new is zero: a new item's id row (so, as with
``export.triton.cold_items``, its vector starts from its categories, year and price alone), its
"what follows" row, a new category's projection column, a new year or price bucket. Training then
fine-tunes all of it (``finetune``), on the CPU or a GPU.

Year buckets are counted from the live catalog's first year, so bucket ``b`` keeps its meaning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from export.data.examples import build_examples
from export.data.loaders import InMemoryBatches
from export.model.ensemble import Towers, members_of
from export.model.item_item import Blended, fit_item_item
from export.train import (
    TrainConfig,
    config_from_dict,
    new_model,
    seed_everything,
    target_log_frequencies,
    train,
)
from export.triton.cold_items import grown
from features.behaviour import Step
from features.catalog import FIRST_ITEM_INDEX, ItemCatalog

log = logging.getLogger(__name__)


def load_live(checkpoint: Path, catalog: ItemCatalog) -> tuple[Towers, TrainConfig]:
    """The live version's model (from its training checkpoint) and the config it was built with.

    A checkpoint with fewer item rows or categories than ``catalog`` was trained on a prefix of
    it: the live version added cold items (``export.triton.cold_items`` appends items and
    categories). It is extended the way that path extends it, new rows zero."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = config_from_dict(state["config"])
    weights = state["model"]
    # The first member's tables (an ensemble's members all have the same shapes)
    rows = _first(weights, "item_tower.encoder.id_embedding.weight").shape[0]
    columns = _first(weights, "item_tower.encoder.category_projection.weight").shape[1]
    if (rows, columns) == (catalog.num_embeddings, max(len(catalog.categories), 1)):
        model = new_model(catalog, config)
        model.load_state_dict(weights)
        return model.eval(), config
    if rows > catalog.num_embeddings or columns > max(len(catalog.categories), 1):
        raise ValueError(f"{checkpoint} has {rows - 2} items and {columns} categories, more than "
                         f"the live catalog ({catalog.num_items}, {len(catalog.categories)}): it is "
                         "not this version's checkpoint")
    trained_on = ItemCatalog(items=catalog.items[:rows - FIRST_ITEM_INDEX],
                             categories=catalog.categories[:columns])
    model = new_model(trained_on, config)
    model.load_state_dict(weights)
    log.info("%s: trained on %d of the live version's %d items; extended as cold items",
             checkpoint, trained_on.num_items, catalog.num_items)
    return warm_start(model, trained_on, catalog, config).eval(), config


def _first(weights: dict[str, torch.Tensor], suffix: str) -> torch.Tensor:
    return next(value for name, value in weights.items() if name.endswith(suffix))


@torch.no_grad()
def warm_start(live: Towers, live_catalog: ItemCatalog, catalog: ItemCatalog,
               config: TrainConfig) -> Towers:
    """A model on ``catalog`` (which extends ``live_catalog``) holding every live weight."""
    head = catalog.items[:live_catalog.num_items]
    if [i.item_id for i in head] != [i.item_id for i in live_catalog.items]:
        raise ValueError("the candidate catalog must start with the live items, in their order")
    if catalog.categories[:len(live_catalog.categories)] != live_catalog.categories:
        raise ValueError("the candidate catalog must start with the live categories, in their order")
    model = new_model(catalog, config)
    years = catalog.year_buckets(first_year=live_catalog.first_year())
    grown_years = int(years.max()) + 1
    for member in members_of(model):
        encoder = member.item_tower.encoder
        if grown_years > encoder.year_embedding.num_embeddings:
            encoder.year_embedding = torch.nn.Embedding(grown_years, config.dim)
        encoder.years = torch.from_numpy(years)
    target = model.state_dict()
    for name, value in live.state_dict().items():
        # The encoder is shared: its tables appear under both towers' prefixes.
        if name.rpartition(".")[2] in ("all_items", "categories", "years", "prices"):
            continue  # the catalog's own attribute tables, built for the candidate above
        target[name].copy_(grown(value, target[name].shape))
    model.load_state_dict(target)
    return model


def finetune(model: Towers, catalog: ItemCatalog, train_sequences: dict[str, list[Step]],
             config: TrainConfig,
             validate: Callable[[Towers], dict[str, float]] | None) -> tuple[list[dict], int]:
    """Train ``model`` in place on every new-item position of ``train_sequences`` (export's
    examples and losses); early stopping on ``validate`` when given. Returns the epoch records
    and the number of training examples."""
    # A checkpoint's config carries the choice its run made (None only in a hand-made config:
    # a warm start has no pilot to decide it, so the plain examples)
    histories, targets = build_examples(train_sequences, catalog, config.sequence_length,
                                        whole_history=bool(config.whole_history))
    if not len(targets):
        raise ValueError("no training examples in the window")
    log.info("fine-tuning on %d examples (%d users), %d epochs at most", len(targets),
             len(train_sequences), config.epochs)
    log_q = target_log_frequencies(targets, catalog.num_embeddings)
    seed_everything(config.seed)
    batches = InMemoryBatches(histories, targets, config.batch_size, seed=config.seed)
    records = train(model, batches, config, log_q=log_q, validate=validate)
    model.cpu()
    return records, len(targets)


def refit_item_item(model: Towers, catalog: ItemCatalog, train_sequences: dict[str, list[Step]],
                    config: TrainConfig) -> Towers:
    """A blended model (``export.model.item_item``) with its item-item term fitted again on the
    candidate's training data, at the live weight: the term is fitted, not trained, so this is
    its fine-tuning, and new items with interactions get their rows. Other models as they are."""
    if not isinstance(model, Blended):
        return model
    return Blended(model.towers, fit_item_item(train_sequences, catalog, config.item_item_rank),
                   model.weight)


def finetune_config(live: TrainConfig, *, epochs: int, patience: int, learning_rate: float,
                    batch_size: int, device: str, seed: int) -> TrainConfig:
    """The live architecture with the refresh's training knobs."""
    return replace(live, epochs=epochs, patience=patience, learning_rate=learning_rate,
                   batch_size=batch_size, device=device, seed=seed)


def zero_rows(model: Towers, first: int) -> np.ndarray:
    """The id rows from ``first`` on (new items) of every member, side by side, for checks."""
    return np.concatenate([m.item_tower.encoder.id_embedding.weight[first:].detach().numpy()
                           for m in members_of(model)], axis=1)
