from __future__ import annotations

import pytest

from features.catalog import Item, ItemCatalog


@pytest.fixture
def catalog() -> ItemCatalog:
    """Six items, three categories: small enough to reason about by hand."""
    return ItemCatalog.from_items([
        Item("a", "Alpha", ("Action",), 1990),
        Item("b", "Bravo", ("Action", "Comedy"), 1995),
        Item("c", "Charlie", ("Comedy",), 2000),
        Item("d", "Delta", ("Drama",), None),
        Item("e", "Echo", ("Drama", "Action"), 1980),
        Item("f", "Foxtrot", (), 1999),
    ])
