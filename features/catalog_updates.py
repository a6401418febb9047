"""The catalog update: one item's attributes and stock, as put through the gateway's admin API and
carried on the ``catalog`` topic, the schema shared by the gateway (producer), the refresh job and
the cold-item path (readers).

The topic is compacted by item id, so only an item's latest record survives: every record is the
item's whole state (a PUT replaces it), never a patch that would need the records before it.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from features.catalog import Item
from features.events import ID_PATTERN, validation_reason

MAX_TITLE_CHARS = 512
MAX_CATEGORIES = 32
MAX_CATEGORY_CHARS = 64
# "|" separates categories in the items file (export/data/cleaning.py), so a category holding one
# would come back from the file as two.
CATEGORY_SEPARATOR = "|"
# Release years outside this are unit or typing errors (a price in the year field, a 2-digit year).
MIN_YEAR, MAX_YEAR = 1000, 2999
MAX_PRICE = 1e9
MAX_STOCK = 1_000_000_000  # as PUT /v1/admin/stock
# Far larger than any record the schema allows (about 3 KB at most); anything bigger is an abuse.
MAX_UPDATE_BYTES = 8192

Category = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                            max_length=MAX_CATEGORY_CHARS)]


class ItemAttributes(BaseModel):
    """An item's state without its id: the body of ``PUT /v1/admin/items/{item_id}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Stripped as the items file's reader strips it, so an update and its row in the file agree.
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                            max_length=MAX_TITLE_CHARS)]
    categories: tuple[Category, ...] = Field(default=(), max_length=MAX_CATEGORIES)
    price: float | None = Field(default=None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    year: int | None = Field(default=None, ge=MIN_YEAR, le=MAX_YEAR)
    # None: this update says nothing about stock (the item's level stays as it was).
    stock: int | None = Field(default=None, ge=0, le=MAX_STOCK)
    updated_at_ms: int = Field(default_factory=lambda: int(time.time() * 1000), ge=0)

    @field_validator("categories")
    @classmethod
    def _categories_survive_the_items_file(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in value if CATEGORY_SEPARATOR in c]
        if bad:
            raise ValueError(f"a category may not contain {CATEGORY_SEPARATOR!r} (the items file's "
                             f"separator): {bad[0]!r}")
        # Repeats kept would weigh a category twice nowhere, but differ from what the file reads.
        return tuple(dict.fromkeys(value))


class ItemUpdate(ItemAttributes):
    """One record of the catalog topic (key: the item id)."""

    item_id: str = Field(pattern=ID_PATTERN)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> ItemUpdate:
        return cls.model_validate_json(raw)


class InvalidItemUpdate(ValueError):
    """A catalog record that is not an acceptable update; ``reason`` says why (logged and counted
    by the readers, the 422's message at the gateway)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_item_update(raw: bytes | None, *, key: bytes | None = None,
                      max_bytes: int = MAX_UPDATE_BYTES) -> ItemUpdate:
    """Decode and check one record of the catalog topic, or raise InvalidItemUpdate with the reason.
    ``key``: the record's key, when there is one; it must be the item id, or compaction would keep
    the wrong record as the item's latest."""
    if raw is None:
        raise InvalidItemUpdate("body: empty message (tombstone)")
    if len(raw) > max_bytes:
        raise InvalidItemUpdate(f"body: {len(raw)} bytes, larger than the {max_bytes}-byte limit")
    try:
        update = ItemUpdate.from_bytes(raw)
    except ValidationError as exc:
        raise InvalidItemUpdate(validation_reason(exc)) from None
    if key is not None and key != update.item_id.encode():
        raise InvalidItemUpdate(f"key: {key[:80]!r} is not the record's item_id {update.item_id!r}")
    return update


def to_item(update: ItemUpdate) -> Item:
    """The catalog entry an update describes (stock and time are not model attributes)."""
    return Item(item_id=update.item_id, title=update.title, categories=tuple(update.categories),
                year=update.year, price=update.price)


def attributes_differ(update: ItemUpdate, item: Item) -> bool:
    """Whether ``update`` changes what a model version's catalog holds of ``item`` (its title, or
    the attributes the item tower encodes); a stock-only update does not.
    Prices compare within a tiny tolerance: a float through JSON and back may move in its last bit."""
    new = to_item(update)
    if (new.title, new.categories, new.year) != (item.title, item.categories, item.year):
        return True
    if (new.price is None) != (item.price is None):
        return True
    return new.price is not None and not math.isclose(new.price, item.price, rel_tol=1e-9, abs_tol=1e-6)
