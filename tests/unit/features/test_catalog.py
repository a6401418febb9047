import numpy as np
import pytest

from features.catalog import FIRST_ITEM_INDEX, OOV_INDEX, PAD_INDEX, ItemCatalog


def test_indices_start_after_pad_and_oov(catalog):
    assert catalog.index_of("a") == FIRST_ITEM_INDEX
    assert catalog.item_at(FIRST_ITEM_INDEX + 2).item_id == "c"
    assert catalog.num_embeddings == catalog.num_items + 2
    assert {PAD_INDEX, OOV_INDEX} == {0, 1}


def test_unknown_items_map_to_oov_and_reserved_rows_are_not_items(catalog):
    assert catalog.index_of("zzz") == OOV_INDEX
    assert "zzz" not in catalog and "a" in catalog
    for reserved in (PAD_INDEX, OOV_INDEX, catalog.num_embeddings):
        with pytest.raises(IndexError):
            catalog.item_at(reserved)


def test_category_matrix_is_multi_hot_with_empty_reserved_rows(catalog):
    m = catalog.category_matrix()
    assert m.shape == (catalog.num_embeddings, 3)
    assert catalog.categories == ["Action", "Comedy", "Drama"]
    np.testing.assert_array_equal(m[catalog.index_of("b")], [1, 1, 0])
    np.testing.assert_array_equal(m[catalog.index_of("f")], [0, 0, 0])
    assert m[:FIRST_ITEM_INDEX].sum() == 0


def test_year_buckets_reserve_zero_for_unknown(catalog):
    years = catalog.year_buckets(bucket_years=5)
    assert years[catalog.index_of("d")] == 0  # unknown year
    assert years[catalog.index_of("e")] == 1  # earliest year, first bucket
    assert years[catalog.index_of("c")] == 1 + (2000 - 1980) // 5


def test_json_round_trip(catalog, tmp_path):
    path = tmp_path / "catalog.json"
    catalog.to_json(path)
    again = ItemCatalog.from_json(path)
    assert again.items == catalog.items and again.categories == catalog.categories
    assert again.index_of("e") == catalog.index_of("e")


def test_price_buckets_are_log_scaled_and_zero_when_unknown():
    from features.catalog import Item
    catalog = ItemCatalog.from_items([Item("p1", "cheap", price=1.0), Item("p2", "dear", price=100.0),
                                      Item("p3", "unknown"), Item("p4", "free", price=0.0)])
    buckets = catalog.price_buckets(buckets_per_decade=4)
    cheap, dear, unknown, free = (buckets[catalog.index_of(i)] for i in ("p1", "p2", "p3", "p4"))
    assert unknown == 0 and free == 0
    assert dear - cheap == 8  # two decades apart
    assert cheap >= 1
