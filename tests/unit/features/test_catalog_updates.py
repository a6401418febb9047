"""The catalog update schema: what it accepts, what it refuses and why, and what it becomes."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from features.catalog import Item
from features.catalog_updates import (
    MAX_CATEGORIES,
    MAX_UPDATE_BYTES,
    InvalidItemUpdate,
    ItemUpdate,
    attributes_differ,
    parse_item_update,
    to_item,
)


def update(**fields) -> ItemUpdate:
    return ItemUpdate(**{"item_id": "sku-1", "title": "Kettle", **fields})


def test_round_trips_through_bytes_without_nones():
    u = update(categories=["Home", "Kitchen"], price=19.99, year=2024, stock=3, updated_at_ms=5)
    raw = u.to_bytes()
    assert json.loads(raw) == {"item_id": "sku-1", "title": "Kettle", "categories": ["Home", "Kitchen"],
                               "price": 19.99, "year": 2024, "stock": 3, "updated_at_ms": 5}
    assert ItemUpdate.from_bytes(raw) == u
    assert "price" not in json.loads(update().to_bytes())


def test_is_frozen_and_forbids_unknown_fields():
    with pytest.raises(ValidationError):
        update(colour="red")
    with pytest.raises(ValidationError):
        update().title = "x"  # type: ignore[misc]


def test_strips_text_and_drops_repeated_categories():
    u = update(title="  Kettle ", categories=[" Home", "Home ", "Kitchen"])
    assert u.title == "Kettle" and u.categories == ("Home", "Kitchen")


def test_defaults_the_time_to_now():
    assert update().updated_at_ms > 1_700_000_000_000


@pytest.mark.parametrize("fields, where", [
    ({"item_id": "bad id"}, "item_id"),
    ({"item_id": "sku\n"}, "item_id"),
    ({"item_id": "x" * 65}, "item_id"),
    ({"title": "   "}, "title"),
    ({"title": "t" * 513}, "title"),
    ({"categories": ["a|b"]}, "categories"),
    ({"categories": [""]}, "categories"),
    ({"categories": ["c" * 65]}, "categories"),
    ({"categories": [f"c{i}" for i in range(MAX_CATEGORIES + 1)]}, "categories"),
    ({"price": -1}, "price"),
    ({"price": float("inf")}, "price"),
    ({"year": 24}, "year"),
    ({"year": 2024.5}, "year"),
    ({"stock": -1}, "stock"),
    ({"updated_at_ms": -1}, "updated_at_ms"),
])
def test_refuses_out_of_bounds_fields(fields, where):
    with pytest.raises(ValidationError) as info:
        update(**fields)
    assert info.value.errors()[0]["loc"][0] == where


def test_the_largest_valid_update_is_within_the_byte_limit():
    u = update(title="t" * 512, categories=[f"{i:02d}" + "c" * 62 for i in range(MAX_CATEGORIES)],
               price=1e9, year=2999, stock=10**9, item_id="i" * 64)
    assert len(u.to_bytes()) < MAX_UPDATE_BYTES


def test_parse_accepts_a_valid_record_with_its_key():
    u = update(price=2.5)
    assert parse_item_update(u.to_bytes(), key=b"sku-1") == u
    assert parse_item_update(u.to_bytes()) == u


@pytest.mark.parametrize("raw, key, reason", [
    (None, b"sku-1", "tombstone"),
    (b"not json", None, "body: Invalid JSON"),
    (b'{"item_id": "sku-1"}', None, "title: Field required"),
    (b'{"item_id": "sku-1", "title": "K", "price": "free"}', None, "price:"),
    (b'{"item_id": "sku-1", "title": "K", "stock": -2}', None, "stock: Input should be greater"),
    (b"x" * (MAX_UPDATE_BYTES + 1), None, "larger than the 8192-byte limit"),
    (b'{"item_id": "sku-1", "title": "K"}', b"sku-2", "key: b'sku-2' is not the record's item_id"),
])
def test_parse_refuses_bad_records_with_a_reason(raw, key, reason):
    with pytest.raises(InvalidItemUpdate) as info:
        parse_item_update(raw, key=key)
    assert reason in info.value.reason
    assert str(info.value) == info.value.reason


def test_to_item_is_the_catalog_entry():
    u = update(categories=["Home"], price=9.5, year=2020, stock=0)
    assert to_item(u) == Item("sku-1", "Kettle", ("Home",), 2020, 9.5)
    assert to_item(update()) == Item("sku-1", "Kettle", (), None, None)


def test_attributes_differ_ignores_stock_and_float_noise():
    item = Item("sku-1", "Kettle", ("Home",), 2020, 0.1 + 0.2)
    assert not attributes_differ(update(categories=["Home"], year=2020, price=0.3, stock=0), item)
    assert attributes_differ(update(categories=["Home"], year=2020, price=0.4), item)
    assert attributes_differ(update(categories=["Home"], year=2020), item)
    assert attributes_differ(update(categories=["Garden"], year=2020, price=0.3), item)
    assert attributes_differ(update(title="Pot", categories=["Home"], year=2020, price=0.3), item)
