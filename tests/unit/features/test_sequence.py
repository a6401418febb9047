import numpy as np

from features.catalog import OOV_INDEX, PAD_INDEX
from features.sequence import encode_history, pad_left


def test_short_history_is_left_padded_with_most_recent_last(catalog):
    out = encode_history(["a", "c"], catalog, 4)
    np.testing.assert_array_equal(out, [PAD_INDEX, PAD_INDEX, catalog.index_of("a"), catalog.index_of("c")])
    assert out.dtype == np.int64


def test_long_history_keeps_the_last_items(catalog):
    out = encode_history(["a", "b", "c", "d", "e"], catalog, 3)
    np.testing.assert_array_equal(out, catalog.indices_of(["c", "d", "e"]))


def test_unknown_items_become_oov_and_empty_history_is_all_pad(catalog):
    assert encode_history(["nope"], catalog, 2).tolist() == [PAD_INDEX, OOV_INDEX]
    assert encode_history([], catalog, 3).tolist() == [PAD_INDEX] * 3
    assert pad_left(np.array([7, 8]), 0).tolist() == []
