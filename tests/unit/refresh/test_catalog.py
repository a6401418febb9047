from __future__ import annotations

from types import SimpleNamespace

from features.catalog import Item
from refresh.catalog import extend


def test_old_items_keep_their_indices_new_ones_are_appended(catalog):
    updates = {"z": SimpleNamespace(item_id="z", title="Zulu", categories=["Horror"], price=3.0,
                                    year=None, stock=4),
               "a": SimpleNamespace(item_id="a", title="Alpha 2", categories=["Action"], price=None,
                                    year=1990, stock=None)}
    change = extend(catalog, updates, [Item("y", "Yankee", ("Comedy",))])
    assert [i.item_id for i in change.catalog.items] == ["a", "b", "c", "d", "e", "f", "y", "z"]
    assert all(change.catalog.index_of(i.item_id) == catalog.index_of(i.item_id) for i in catalog.items)
    assert change.added == ["y", "z"] and change.changed == ["a"]
    assert change.catalog.get("a").title == "Alpha 2"
    assert change.catalog.categories == [*catalog.categories, "Horror"]


def test_an_update_equal_to_the_live_item_changes_nothing(catalog):
    same = catalog.items[0]
    change = extend(catalog, {}, [same])
    assert change.changed == [] and change.added == [] and change.catalog.items == catalog.items
