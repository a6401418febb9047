"""The catalog feed without a broker: the items file it writes reads back as the same items, and
the topic's records fold into each item's latest update (the broker is in
tests/integration/gateway/test_catalog_updates.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from export.data.cleaning import items_from_frame
from export.data.interactions import read_table
from features.catalog_stream import LOGGED_INVALID, CatalogRead, _apply
from features.catalog_updates import ItemUpdate, to_item
from refresh.catalog_feed import ITEMS_COLUMNS, write_items_csv


def test_the_items_file_reads_back_as_the_same_items(tmp_path: Path):
    updates = {
        "b-2": ItemUpdate(item_id="b-2", title='A "quoted", title', categories=["Home", "Kitchen"],
                          price=19.99, year=2024, stock=0),
        "a:1": ItemUpdate(item_id="a:1", title="007", categories=[], price=None, year=None),
        "c.3": ItemUpdate(item_id="c.3", title="Tiny", categories=["X"], price=1e-05, year=1999),
    }
    path = tmp_path / "out" / "items.csv"
    assert write_items_csv(updates, path) == 3
    assert path.read_text().splitlines()[0] == ",".join(ITEMS_COLUMNS)
    items = items_from_frame(read_table(path))
    assert items == [to_item(updates[i]) for i in ("a:1", "b-2", "c.3")]
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temporary file left behind


def test_an_empty_feed_writes_a_header_only_file(tmp_path: Path):
    path = tmp_path / "items.csv"
    assert write_items_csv([], path) == 0
    assert items_from_frame(read_table(path)) == []


def record(value: bytes | None, key: bytes | None, offset: int):
    return SimpleNamespace(topic="catalog", partition=0, offset=offset, key=key, value=value)


def test_records_fold_into_the_latest_update_per_item(caplog):
    first = ItemUpdate(item_id="i1", title="Old", stock=5)
    latest = ItemUpdate(item_id="i1", title="New", stock=0)
    other = ItemUpdate(item_id="i2", title="Other")
    gone = ItemUpdate(item_id="i3", title="Deleted later")
    result = CatalogRead("catalog")
    for n, (value, key) in enumerate([
        (first.to_bytes(), b"i1"), (other.to_bytes(), b"i2"), (b"{broken", b"i9"),
        (latest.to_bytes(), b"i1"), (gone.to_bytes(), b"i3"), (None, b"i3"),
        (other.to_bytes(), b"i1"),  # keyed by another item: compaction would keep it as i1's
    ]):
        _apply(result, record(value, key, n))
    assert result.updates == {"i1": latest, "i2": other}
    assert (result.records, result.invalid, result.deleted) == (7, 2, 1)
    assert "offset 2: skipped: body: Invalid JSON" in caplog.text
    assert "7 records, 2 items, 2 invalid skipped, 1 tombstones" in result.summary()


def test_only_the_first_invalid_records_are_logged_one_by_one(caplog):
    result = CatalogRead("catalog")
    for n in range(LOGGED_INVALID + 5):
        _apply(result, record(b"[]", None, n))
    assert result.invalid == LOGGED_INVALID + 5
    assert caplog.text.count("skipped") == LOGGED_INVALID
