"""The cold-item path fed from the catalog topic: new items are added, changed ones reported as
needing a retrain, nothing new publishes nothing (the topic read and the publishing are faked;
tests/unit/export/triton/test_cold_items.py publishes for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.triton import cold_items
from export.triton.cold_items import split_updates
from features import contract as sig
from features.catalog import Item
from features.catalog_stream import CatalogRead
from features.catalog_updates import ItemUpdate


def updates(*records: ItemUpdate) -> dict[str, ItemUpdate]:
    return {u.item_id: u for u in records}


FEED = updates(
    ItemUpdate(item_id="z-new", title="Zulu", categories=["Garden"], price=5.0),
    ItemUpdate(item_id="a", title="Alpha", categories=["Action"], year=1990, stock=0),  # stock only
    ItemUpdate(item_id="b", title="Bravo", categories=["Comedy"], year=1995),  # categories changed
    ItemUpdate(item_id="m-new", title="Mike"),
)


def test_split_updates_adds_the_unknown_and_reports_the_changed(catalog):
    new, changed = split_updates(catalog, FEED.values())
    assert new == [Item("m-new", "Mike"), Item("z-new", "Zulu", ("Garden",), None, 5.0)]
    assert changed == ["b"]
    assert split_updates(catalog, []) == ([], [])


@pytest.fixture
def repository(tmp_path: Path, catalog) -> Path:
    version_dir = tmp_path / "repo" / sig.RETRIEVE / "3"
    version_dir.mkdir(parents=True)
    catalog.to_json(version_dir / sig.CATALOG_FILE)
    return tmp_path / "repo"


@pytest.fixture
def published(monkeypatch) -> list:
    calls = []

    def publish(repository, checkpoint, new_items):
        calls.append((repository, checkpoint, new_items))
        return 4

    monkeypatch.setattr(cold_items, "publish_cold_items", publish)
    return calls


def feed(monkeypatch, found: dict[str, ItemUpdate]) -> list:
    reads = []

    def read(bootstrap_servers, topic, timeout_s=30):
        reads.append((bootstrap_servers, topic))
        return CatalogRead(topic, updates=found, records=len(found))

    monkeypatch.setattr(cold_items, "read_catalog_topic", read)
    return reads


def test_the_catalog_topic_option_publishes_only_new_items(monkeypatch, repository, published, capsys):
    reads = feed(monkeypatch, FEED)
    assert cold_items.main(["--repository", str(repository), "--checkpoint", "ck.pt",
                            "--catalog-topic", "items", "--kafka-bootstrap-servers", "k:9"]) == 0
    assert reads == [("k:9", "items")]
    [(repo, checkpoint, new_items)] = published
    assert repo == repository and checkpoint == Path("ck.pt")
    assert [i.item_id for i in new_items] == ["m-new", "z-new"]
    out = capsys.readouterr().out
    assert "1 known items changed attributes; not applied, they need a retrain: b" in out
    assert "published version 4" in out


def test_nothing_new_on_the_topic_publishes_nothing(monkeypatch, repository, published, capsys):
    feed(monkeypatch, updates(ItemUpdate(item_id="a", title="Alpha", categories=["Action"], year=1990)))
    assert cold_items.main(["--repository", str(repository), "--checkpoint", "ck.pt",
                            "--catalog-topic", "catalog"]) == 0
    assert published == []
    assert "no new items on catalog" in capsys.readouterr().out


def test_items_file_and_topic_are_alternatives(capsys):
    with pytest.raises(SystemExit):
        cold_items.main(["--checkpoint", "ck.pt"])
    with pytest.raises(SystemExit):
        cold_items.main(["--checkpoint", "ck.pt", "--items", "x.csv", "--catalog-topic", "catalog"])
