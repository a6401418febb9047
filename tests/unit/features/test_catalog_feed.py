"""The catalog feed without a broker: the items file it writes reads back as the same items, and
the topic's records fold into each item's latest update (the broker is in
tests/integration/gateway/test_catalog_updates.py)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from export.data.cleaning import items_from_frame
from export.data.interactions import read_table
from features import catalog_stream
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


class FakeConsumer:
    """kafka-python's KafkaConsumer over in-memory partitions (lists of (key, value)); ``grow``
    appends to partition 0 after each poll, as a producer writing during the read would."""

    partitions: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    grow: list[tuple[bytes | None, bytes | None]] = []
    stall = False

    def __init__(self, **config) -> None:
        self.positions: dict = {}
        self.closed = False

    def topics(self):
        return {"catalog"} if self.partitions else set()

    def partitions_for_topic(self, topic):
        return set(self.partitions)

    def assign(self, parts):
        self.parts = parts

    def seek_to_beginning(self, *parts):
        self.positions = {tp: 0 for tp in parts}

    def end_offsets(self, parts):
        return {tp: len(self.partitions[tp.partition]) for tp in parts}

    def position(self, tp):
        return self.positions[tp]

    def poll(self, timeout_ms=0):
        if self.stall:
            time.sleep(0.01)  # as a real poll waits, rather than spin
        out = {}
        for tp, pos in self.positions.items():
            records = self.partitions[tp.partition]
            if self.stall or pos >= len(records):
                continue
            batch = records[pos:pos + 2]  # a few at a time, as real fetches are
            out[tp] = [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=pos + i,
                                       key=k, value=v) for i, (k, v) in enumerate(batch)]
            self.positions[tp] = pos + len(batch)
        self.partitions[0].extend(self.grow)
        return out

    def close(self):
        self.closed = True


def test_the_topic_is_read_to_its_end_offsets_at_call_time(monkeypatch):
    def rec(item_id, title):
        return item_id.encode(), ItemUpdate(item_id=item_id, title=title).to_bytes()

    monkeypatch.setattr(FakeConsumer, "partitions", {0: [rec("i1", "a"), rec("i2", "b"), rec("i1", "c")],
                                                      1: [], 2: [rec("i3", "d"), (b"x", b"[]")]})
    monkeypatch.setattr(FakeConsumer, "grow", [rec("i9", "written later")])
    monkeypatch.setattr(catalog_stream, "KafkaConsumer", FakeConsumer)
    read = catalog_stream.read_catalog_topic("k:9", "catalog")
    assert {i: u.title for i, u in read.updates.items()} == {"i1": "c", "i2": "b", "i3": "d"}
    assert (read.records, read.invalid) == (5, 1)


def test_a_read_that_cannot_reach_the_end_fails_rather_than_leave_items_out(monkeypatch):
    monkeypatch.setattr(FakeConsumer, "partitions", {0: [(b"i1", b"{}")]})
    monkeypatch.setattr(FakeConsumer, "grow", [])
    monkeypatch.setattr(FakeConsumer, "stall", True)
    monkeypatch.setattr(catalog_stream, "KafkaConsumer", FakeConsumer)
    with pytest.raises(TimeoutError, match="not read to its end within 0.3 s"):
        catalog_stream.read_catalog_topic("k:9", "catalog", timeout_s=0.3)


def test_an_absent_topic_holds_no_updates(monkeypatch):
    monkeypatch.setattr(FakeConsumer, "partitions", {})
    monkeypatch.setattr(catalog_stream, "KafkaConsumer", FakeConsumer)
    read = catalog_stream.read_catalog_topic("k:9", "catalog")
    assert read.updates == {} and not read.topic_exists and "does not exist" in read.summary()
