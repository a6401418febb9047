"""Merging new events with the live version's data: the window, duplicates, unknown items."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.catalog import Item, ItemCatalog
from features.events import Event
from refresh import data

DAY = data.DAY_MS
CATALOG = ItemCatalog.from_items([Item("a", "A", ("x",)), Item("b", "B", ("y",))])


def frame(rows) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=["user_id", "item_id", "ts_ms", "event_id", "event_type"])
    out["ts_ms"] = out["ts_ms"].astype(np.int64)
    out["value"] = np.nan
    return out


def test_new_events_join_the_window_and_old_rows_fall_out():
    base = frame([("u1", "a", 0, "o1", "view"), ("u1", "b", 5 * DAY, "o2", "view")])
    new = frame([("u1", "a", 10 * DAY, "n1", "click"), ("u2", "b", 9 * DAY, "n2", "view")])
    merged = data.merge(base, new, CATALOG, window_ms=7 * DAY)
    assert list(merged.data["event_id"]) == ["o2", "n1", "n2"]  # user, then time order
    assert merged.outside_window == 1
    assert list(merged.new["event_id"]) == ["n1", "n2"]
    assert merged.window_end_ms == 10 * DAY + 1


def test_unknown_items_are_counted_and_kept_pending_not_trained_on(tmp_path):
    new = frame([("u1", "a", 1, "n1", "view"), ("u1", "zz", 2, "n2", "view"),
                 ("u2", "zz", 3, "n3", "cart")])
    merged = data.merge(frame([]), new, CATALOG, window_ms=DAY)
    assert list(merged.unknown["event_id"]) == ["n2", "n3"]
    assert "zz" not in set(merged.data["item_id"])
    data.write_pending(tmp_path, merged.unknown)
    pending = data.read_pending(tmp_path)
    assert [(e.event_id, e.item_id, e.event_type.value) for e in pending] == [
        ("n2", "zz", "view"), ("n3", "zz", "cart")]
    # Once the item is known, the pending events join the data.
    known = ItemCatalog.from_items([*CATALOG.items, Item("zz", "Z")])
    again = data.merge(merged.data, data.events_frame(pending), known, window_ms=DAY)
    assert set(again.data["event_id"]) == {"n1", "n2", "n3"} and again.unknown.empty


def test_a_re_read_event_is_not_counted_twice():
    base = frame([("u1", "a", 1, "n1", "view")])
    new = frame([("u1", "a", 1, "n1", "view"), ("u1", "b", 2, "n2", "view"),
                 ("u1", "b", 2, "n2", "view")])
    merged = data.merge(base, new, CATALOG, window_ms=DAY)
    assert merged.duplicates == 2 and list(merged.new["event_id"]) == ["n2"]
    assert len(merged.data) == 2


def test_events_frame_and_saved_data_round_trip(tmp_path):
    events = [Event(event_id="e1", user_id="u1", item_id="a", event_type="purchase", ts_ms=7)]
    rows = data.events_frame(events)
    assert rows.iloc[0][["user_id", "item_id", "ts_ms", "event_type"]].tolist() == ["u1", "a", 7, "purchase"]
    data.save_data(tmp_path, rows)
    back = data.load_base(tmp_path, None)
    assert back[list(data.COLUMNS[:-1])].equals(rows[list(data.COLUMNS[:-1])])


def test_the_first_run_reads_the_base_interactions_file(shop, tmp_path):
    base = data.load_base(tmp_path / "empty", shop.base_file)
    assert len(base) == len(shop.base) and list(base.columns) == list(data.COLUMNS)
