"""Cold items: embed new catalog items from their attributes with the trained item tower, without
retraining, and publish them as a new model version.

A new item has no trained id embedding, so its id row is zero and its vector comes from its
categories, year and price alone. Every existing item keeps exactly its embedding. The new
version holds ``user_tower``, ``retrieve``, ``recommend_fused`` and ``similar_items`` built from one
extended catalog, so one version number always means one item index space.

    python -m export.triton.cold_items --repository model_repository \\
        --checkpoint build/checkpoints/seed0/best.pt --items new_items.csv

or, from the catalog topic (the gateway's PUT /v1/admin/items/{id}), the items it has that the
newest version's catalog lacks; changed attributes of known items are reported, not applied (they
need a retrain):

    python -m export.triton.cold_items --checkpoint build/checkpoints/seed0/best.pt \\
        --catalog-topic catalog --kafka-bootstrap-servers 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from export.data.cleaning import items_from_frame
from export.data.interactions import read_table
from export.model.ensemble import TowerEnsemble, Towers
from export.model.item_item import Blended, ItemItem
from export.train import load_checkpoint, new_model
from export.triton.repository import ServingConfig, export_repository
from features import contract as sig
from features.catalog import PAD_INDEX, Item, ItemCatalog
from features.catalog_stream import read_catalog_topic
from features.catalog_updates import ItemUpdate, attributes_differ, to_item

log = logging.getLogger(__name__)


def extend_catalog(catalog: ItemCatalog, new_items: list[Item]) -> ItemCatalog:
    """Append items; unseen categories go after the trained ones so column meanings stay put."""
    known = [item.item_id for item in new_items if item.item_id in catalog]
    if known:
        raise ValueError(f"already in the catalog: {known[:5]}{' ...' if len(known) > 5 else ''}")
    extra = sorted({c for item in new_items for c in item.categories} - set(catalog.categories))
    return ItemCatalog(items=catalog.items + list(new_items), categories=catalog.categories + extra)


def split_updates(catalog: ItemCatalog, updates: Iterable[ItemUpdate]) -> tuple[list[Item], list[str]]:
    """(items ``catalog`` lacks, in id order; ids of its items whose attributes an update changes).
    The second are not applied: a trained item's vector came from its old attributes and its
    interactions together, and only a retrain can redo that."""
    updates = sorted(updates, key=lambda u: u.item_id)
    new = [to_item(u) for u in updates if u.item_id not in catalog]
    changed = [u.item_id for u in updates if u.item_id in catalog
               and attributes_differ(u, catalog.get(u.item_id))]
    return new, changed


@torch.no_grad()
def extend_model(model: Towers, catalog: ItemCatalog, extended: ItemCatalog) -> Towers:
    """Grow the (shared) item encoder's tables to ``extended`` in place, in every member of an
    ensemble; trained rows unchanged. A blended model's item-item factors get zero rows: a new
    item has no interactions for EASE to learn from, so the towers alone rank it."""
    if isinstance(model, Blended):
        extend_model(model.towers, catalog, extended)
        term = model.item_item
        shape = (extended.num_embeddings, term.sources.shape[1])
        model.item_item = ItemItem(grown(term.sources, shape), grown(term.targets, shape))
        return model
    if isinstance(model, TowerEnsemble):
        for member in model.members:
            extend_model(member, catalog, extended)
        return model
    encoder = model.item_tower.encoder
    old_rows, dim = encoder.id_embedding.weight.shape
    ids = nn.Embedding(extended.num_embeddings, dim, padding_idx=PAD_INDEX)
    ids.weight.zero_()
    ids.weight[:old_rows] = encoder.id_embedding.weight
    encoder.id_embedding = ids
    user_tower = model.user_tower
    if user_tower.transition:
        # A new item has no "what follows" yet: zero rows, as for an item never seen in training.
        rows = extended.num_embeddings
        follows = nn.Embedding(rows, dim, _weight=torch.zeros(rows, dim))
        follows.weight[:old_rows] = user_tower.next_embedding.weight
        user_tower.next_embedding = follows
    # Categories the model never saw have no trained projection: their columns are dropped.
    encoder.categories = torch.from_numpy(extended.category_matrix()[:, :len(catalog.categories)])
    years = extended.year_buckets(first_year=catalog.first_year())
    encoder.years = torch.from_numpy(years).clamp(max=encoder.year_embedding.num_embeddings - 1)
    prices = torch.from_numpy(extended.price_buckets())
    encoder.prices = prices.clamp(max=encoder.price_embedding.num_embeddings - 1)
    model.all_items = torch.arange(extended.num_embeddings)
    return model


def grown(value: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """``value`` in the leading corner of a zero tensor of ``shape`` (at least as large)."""
    shape = torch.Size(shape)
    if value.shape == shape:
        return value
    if value.dim() != len(shape) or any(a > b for a, b in zip(value.shape, shape, strict=True)):
        raise ValueError(f"cannot grow a {tuple(value.shape)} table into {tuple(shape)}")
    out = torch.zeros(shape, dtype=value.dtype)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out


def publish_cold_items(repository: Path, checkpoint: Path, new_items: list[Item],
                       serving: ServingConfig = ServingConfig()) -> int:
    """Write version N+1 of the models with ``new_items`` added; returns N+1.

    Load it with Triton's repository API (``load`` on each model); the version policy serves the
    newest, and the old version stays on disk for roll-back.
    """
    retrieve_dir = repository / sig.RETRIEVE
    current = sig.latest_version(retrieve_dir)
    catalog = ItemCatalog.from_json(retrieve_dir / str(current) / sig.CATALOG_FILE)
    info = json.loads((retrieve_dir / str(current) / sig.SERVING_FILE).read_text())
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # The checkpoint's own config, so the architecture (user tower kind, types, sequence length)
    # is the one its weights were trained with.
    model = new_model(catalog, state["config"])
    load_checkpoint(model, checkpoint)
    extended = extend_catalog(catalog, new_items)
    extend_model(model, catalog, extended)
    version = current + 1
    metadata = {k: v for k, v in info.items() if k not in ("version", "sequence_length", "dim")}
    metadata["cold_items_added"] = [item.item_id for item in new_items]
    export_repository(model.eval(), extended, repository, sequence_length=info["sequence_length"],
                      version=version, serving=serving, metadata=metadata)
    log.info("published version %d with %d new items (%d in all)", version, len(new_items),
             extended.num_items)
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.triton.cold_items", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--checkpoint", type=Path, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--items", type=Path, help="items file (schema: docs/data.md)")
    source.add_argument("--catalog-topic", help="Kafka topic of catalog updates (docs/data.md)")
    parser.add_argument("--kafka-bootstrap-servers", default="127.0.0.1:9092")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.items is not None:
        new_items = items_from_frame(read_table(args.items))
    else:
        retrieve_dir = args.repository / sig.RETRIEVE
        catalog = ItemCatalog.from_json(
            retrieve_dir / str(sig.latest_version(retrieve_dir)) / sig.CATALOG_FILE)
        feed = read_catalog_topic(args.kafka_bootstrap_servers, args.catalog_topic)
        new_items, changed = split_updates(catalog, feed.updates.values())
        if changed:
            print(f"{len(changed)} known items changed attributes; not applied, they need a "
                  f"retrain: {', '.join(changed[:10])}{' ...' if len(changed) > 10 else ''}")
        if not new_items:
            print(f"no new items on {args.catalog_topic} ({feed.summary()}); nothing published")
            return 0
    version = publish_cold_items(args.repository, args.checkpoint, new_items)
    print(f"published version {version} under {args.repository}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
