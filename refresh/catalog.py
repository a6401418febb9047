"""The candidate's catalog: the live catalog, its items' attributes updated, new items appended.

Old items keep their indices (row ``FIRST_ITEM_INDEX + i`` stays item ``i``), so the live
checkpoint's rows still mean the same items (``refresh.warm_start``); categories the live model
never saw go after its own, so its category columns keep their meaning too. Updates come from the
catalog topic (``refresh.catalog_feed``, one ``ItemUpdate`` per item) and from an items file in
export's format; the topic wins where both name an item, being the newer source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from features.catalog import Item, ItemCatalog
from features.catalog_updates import ItemUpdate, to_item


@dataclass
class CatalogChange:
    catalog: ItemCatalog
    added: list[str] = field(default_factory=list)  # new item ids, in their (appended) order
    changed: list[str] = field(default_factory=list)  # live items whose attributes changed


def extend(live: ItemCatalog, updates: Mapping[str, ItemUpdate] | None = None,
           items: Iterable[Item] = ()) -> CatalogChange:
    """``live`` with ``items`` and then ``updates`` applied (later wins): changed attributes in
    place, unknown ids appended in id order (the same catalog from the same inputs)."""
    incoming: dict[str, Item] = {item.item_id: item for item in items}
    incoming.update({item_id: to_item(u) for item_id, u in (updates or {}).items()})
    changed = []
    kept = []
    for item in live.items:
        new = incoming.pop(item.item_id, None)
        if new is not None and new != item:
            changed.append(item.item_id)
            item = new
        kept.append(item)
    added = [incoming[item_id] for item_id in sorted(incoming)]
    all_items = kept + added
    extra = sorted({c for item in all_items for c in item.categories} - set(live.categories))
    return CatalogChange(ItemCatalog(items=all_items, categories=list(live.categories) + extra),
                         [item.item_id for item in added], changed)
