import numpy as np
import pandas as pd
import pytest

from export.data.cleaning import (
    BAD_ID,
    BAD_TIMESTAMP,
    BAD_VALUE,
    EXAMPLES_PER_REASON,
    FUTURE_TIMESTAMP,
    MISSING_VALUE,
    UNKNOWN_EVENT_TYPE,
    DatasetError,
    clean_interactions,
)
from export.data.interactions import dataset_from_frames, load_interactions_file
from features.catalog import Item

NOW_S = 1_700_000_000  # 2023-11-14: a fixed "now" so the future-timestamp rule is deterministic


def frame(rows: list[tuple], columns=("user_id", "item_id", "timestamp", "event_type", "value")):
    return pd.DataFrame(rows, columns=list(columns), dtype=object)


def test_clean_drops_exact_duplicates_and_sorts_stably():
    raw = pd.DataFrame({
        "user_id": ["u", "u", "u", "v"], "item_id": ["b", "a", "b", "c"], "timestamp": [2, 1, 2, 5],
    })
    out, report = clean_interactions(raw, now_s=NOW_S)
    assert out[["user_id", "item_id", "ts_ms"]].values.tolist() == [
        ["u", "a", 1000], ["u", "b", 2000], ["v", "c", 5000]]
    assert report.duplicates == 1 and report.rows_in == 4 and report.rows_kept == 3
    assert report.rejected == {}


def test_clean_output_columns_defaults_and_dtypes():
    raw = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": ["100"]})
    out, _ = clean_interactions(raw, now_s=NOW_S)
    assert list(out.columns) == ["user_id", "item_id", "ts_ms", "event_id", "event_type", "value"]
    assert out.dtypes["ts_ms"] == np.int64 and out.dtypes["value"] == np.float64
    # no event_type column: the step type "unknown"; no event_id column: ids in file order
    assert out.loc[0, "event_type"] == "unknown" and np.isnan(out.loc[0, "value"])
    assert out.loc[0, "event_id"] == "row~000000000000"
    assert isinstance(out.loc[0, "user_id"], str)


def test_ties_in_timestamp_keep_file_order():
    raw = frame([("u", "c", 5, "view", None), ("v", "x", 1, "view", None), ("u", "a", 5, "click", None),
                 ("u", "b", 5, "view", None), ("u", "z", 1, "view", None)])
    out, _ = clean_interactions(raw, now_s=NOW_S)
    assert out["item_id"].tolist() == ["z", "c", "a", "b", "x"]


def test_each_reject_reason_is_counted_with_examples():
    good = [("u1", f"i{k}", 100 + k, "view", "") for k in range(10)]
    bad = [
        ("", "i1", 1, "view", ""),                     # missing user
        ("u2", "i1", "", "view", ""),                  # missing timestamp
        ("u 2", "i1", 1, "view", ""),                  # space is not allowed in ids
        ("u2", "i/1", 1, "view", ""),                  # neither is "/"
        ("u2", "i1", "yesterday", "view", ""),         # unparseable timestamp
        ("u2", "i1", NOW_S + 30 * 86_400, "view", ""),  # a month ahead of now
        ("u2", "i1", 1, "wishlist", ""),               # not an event type
        ("u2", "i1", 1, "purchase", "12,50"),          # not a number
    ]
    out, report = clean_interactions(frame(good + bad), now_s=NOW_S)
    assert report.rejected == {MISSING_VALUE: 2, BAD_ID: 2, BAD_TIMESTAMP: 1, FUTURE_TIMESTAMP: 1,
                               UNKNOWN_EVENT_TYPE: 1, BAD_VALUE: 1}
    assert report.rows_in == 18 and report.rows_kept == 10 and report.rows_rejected == 8
    assert len(out) == 10 and set(out["user_id"]) == {"u1"}
    example = report.examples[BAD_TIMESTAMP][0]
    assert example["row"] == 14 and example["timestamp"] == "yesterday"
    assert "bad_value=1" in report.summary()


def test_a_row_is_counted_under_its_first_failing_rule_and_examples_are_capped():
    rows = [("u1", "i1", k + 1, "view", "") for k in range(10)]
    rows += [("bad id", "i1", "never", "wishlist", "x")] * 1 + [("", "i1", k, "view", "") for k in range(5)]
    _, report = clean_interactions(frame(rows), now_s=NOW_S)
    assert report.rejected == {MISSING_VALUE: 5, BAD_ID: 1}
    assert len(report.examples[MISSING_VALUE]) == EXAMPLES_PER_REASON


def test_timestamps_accept_epoch_seconds_and_iso_8601():
    raw = frame([
        ("u", "a", "1704067200", "view", ""),
        ("u", "b", "2024-01-01T02:00:00+02:00", "view", ""),  # same instant as the row above
        ("u", "c", "2024-01-01T00:00:10", "view", ""),        # no offset means UTC
        ("u", "d", "2024-01-01T00:00:20Z", "view", ""),
        ("u", "e", 1704067230.9, "view", ""),                 # milliseconds are kept
        ("u", "f", "2024-01-01T00:00:40.123Z", "view", ""),
        ("u", "g", "1704067250.001", "view", ""),             # rounded, not floored, to the ms
    ])
    out, report = clean_interactions(raw, now_s=1_800_000_000)
    assert report.rejected == {}
    assert out["ts_ms"].tolist() == [1704067200000, 1704067200000, 1704067210000, 1704067220000,
                                     1704067230900, 1704067240123, 1704067250001]


@pytest.mark.parametrize("unit, per_second", [("ms", 1_000), ("us", 1_000_000)])
def test_epoch_milliseconds_and_microseconds_are_recognised_by_the_column(tmp_path, unit, per_second):
    # a log exported in ms (or us): read as seconds every row would be in the far future
    path = tmp_path / "log.csv"
    times = [1704067200123, 1704067201000, 1704067260500]  # ms
    rows = [f"u1,i{k},{t * per_second // 1000}" for k, t in enumerate(times)]
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    dataset = load_interactions_file(path)
    assert dataset.interactions["ts_ms"].tolist() == times
    assert dataset.cleaning.timestamp_unit == unit and dataset.cleaning.rejected == {}
    assert f"epoch timestamps read as {unit}" in dataset.cleaning.summary()
    # numbers in ms next to ISO text in one column: the ISO cells are not divided
    raw = frame([("u", "a", "1704067200000", "view", ""), ("u", "b", "2024-01-01T00:00:05Z", "view", ""),
                 ("u", "c", 1704067210000, "view", "")])
    out, report = clean_interactions(raw, now_s=1_800_000_000)
    assert out["ts_ms"].tolist() == [1704067200000, 1704067205000, 1704067210000]
    assert report.timestamp_unit == "ms"


def test_one_millisecond_row_in_a_log_in_seconds_is_a_future_timestamp():
    raw = frame([("u", "a", 1704067200, "view", ""), ("u", "b", 1704067201, "view", ""),
                 ("u", "c", 1704067202000, "view", "")])
    out, report = clean_interactions(raw, now_s=1_800_000_000)
    assert report.timestamp_unit == "s" and report.rejected == {FUTURE_TIMESTAMP: 1}
    assert out["item_id"].tolist() == ["a", "b"]


def test_duplicates_are_judged_after_parsing():
    raw = frame([("u", "a", "1704067200", "VIEW", ""), ("u", "a", "2024-01-01T00:00:00Z", "view", ""),
                 ("u", "a", "2024-01-01T00:00:00Z", "purchase", "9.5")])
    out, report = clean_interactions(raw, now_s=1_800_000_000)
    assert report.duplicates == 1
    assert out["event_type"].tolist() == ["view", "purchase"]
    assert np.isnan(out["value"].iloc[0]) and out["value"].iloc[1] == 9.5


def test_mostly_malformed_input_is_an_error_not_an_empty_model(tmp_path):
    path = tmp_path / "log.csv"
    rows = ["user_id,item_id,timestamp"] + ["u1,i1,100"] * 4 + ["u1,i1,not-a-time"] * 5
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"5 of 9 rows are malformed.*bad_timestamp"):
        load_interactions_file(path)


def test_exactly_half_malformed_is_still_accepted():
    rows = [("u1", "i1", 1, "view", "")] + [("u1", "i1", "?", "view", "")]
    out, report = clean_interactions(frame(rows), now_s=NOW_S)
    assert len(out) == 1 and report.rows_rejected == 1


def test_missing_required_columns_are_named(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item_id,time\nu1,i1,1\n")
    with pytest.raises(DatasetError, match="missing required column.*user_id, timestamp"):
        load_interactions_file(path)
    with pytest.raises(DatasetError, match="item_id"):
        dataset_from_frames("x", frame([("u", "a", 1, "view", "")]), pd.DataFrame({"title": ["A"]}))


def test_unreadable_sources_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_interactions_file(tmp_path / "nope.csv")
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(DatasetError, match="unknown file type"):
        load_interactions_file(tmp_path / "log.json")
    (tmp_path / "empty.csv").write_text("user_id,item_id,timestamp\n")
    with pytest.raises(DatasetError, match="no interactions"):
        load_interactions_file(tmp_path / "empty.csv")


def test_csv_file_with_items_file_builds_the_catalog(tmp_path):
    (tmp_path / "log.csv").write_text(
        "user_id,item_id,timestamp,event_type,value,extra\n"
        "u1,sku1,2024-01-01T00:00:00Z,view,,ignored\n"
        "u1,sku1,2024-01-01T00:01:00Z,purchase,19.99,\n"
        "u2,sku9,1704067200,Click,,\n"
    )
    (tmp_path / "items.csv").write_text(
        "item_id,title,categories,year,price,stock\n"
        "sku1,Blue mug,home|kitchen,,19.99,3\n"
        "sku2,Red mug,home| kitchen|,2020,oops,0\n"  # nobody interacted with it: a cold item
        "sku1,Duplicate row,x,,,\n"
    )
    dataset = load_interactions_file(tmp_path / "log.csv", tmp_path / "items.csv")
    assert dataset.name == "log" and dataset.cleaning.rows_kept == 3
    assert dataset.interactions["event_type"].tolist() == ["view", "purchase", "click"]
    assert dataset.catalog.items == [
        Item("sku1", "Blue mug", ("home", "kitchen"), None, 19.99),
        Item("sku2", "Red mug", ("home", "kitchen"), 2020, None),
        Item("sku9", "sku9"),  # interacted but not listed: default attributes
    ]
    assert dataset.catalog.categories == ["home", "kitchen"]


def test_parquet_with_typed_columns(tmp_path):
    log = pd.DataFrame({
        "user_id": np.array([7, 7, 8, 8, 7], dtype=np.int64),
        "item_id": np.array([42.0, np.nan, 43.0, 44.0, 45.0]),  # an int column with a gap is float
        "timestamp": pd.to_datetime(["2024-01-01 00:00:05", "2024-01-01 00:00:00", "2024-01-02 00:00:00",
                                     "2024-01-01 00:00:00", "2024-01-01 00:00:00"]),
        "value": [1.0, 2.0, np.inf, np.nan, 3.0],
    })
    log.to_parquet(tmp_path / "log.parquet")
    dataset = load_interactions_file(tmp_path / "log.parquet", name="typed")
    assert dataset.name == "typed"
    assert dataset.interactions.drop(columns=["value", "event_id"]).values.tolist() == [
        ["7", "45", 1704067200000, "unknown"], ["7", "42", 1704067205000, "unknown"],
        ["8", "44", 1704067200000, "unknown"]]
    assert dataset.interactions["value"].tolist()[:2] == [3.0, 1.0]
    assert dataset.cleaning.rejected == {MISSING_VALUE: 1, BAD_VALUE: 1}


def test_given_event_ids_dedupe_like_the_stores_and_break_ties_in_time():
    raw = frame([("u", "b", 5, "view", "", "e2"), ("u", "a", 5, "view", "", "e10"),
                 ("u", "c", 5, "cart", "", "e2"),  # the same event delivered again: first kept
                 ("u", "d", 4, "view", "", ""),    # no id: one is generated
                 ("u", "e", 6, "view", "", "bad id!"),
                 ("v", "x", 5, "view", "", "e2")],  # another user's "e2": not a duplicate
                columns=("user_id", "item_id", "timestamp", "event_type", "value", "event_id"))
    out, report = clean_interactions(raw, now_s=NOW_S)
    assert out["item_id"].tolist() == ["d", "a", "b", "x"]  # ts, then event id: "e10" < "e2"
    assert report.duplicates == 1 and report.rejected == {BAD_ID: 1}


def test_context_column_must_hold_json_objects_and_names_the_bad_row(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text('user_id,item_id,timestamp,context\nu,a,1,"{""device"": ""ios""}"\nu,b,2,\n')
    assert load_interactions_file(good).interactions["item_id"].tolist() == ["a", "b"]
    bad = tmp_path / "bad.csv"
    bad.write_text('user_id,item_id,timestamp,context\nu,a,1,{}\nu,b,2,device=ios\n')
    with pytest.raises(DatasetError, match="context of data row 1 is not JSON"):
        load_interactions_file(bad)
    not_object = tmp_path / "list.csv"
    not_object.write_text('user_id,item_id,timestamp,context\nu,a,1,"[1, 2]"\n')
    with pytest.raises(DatasetError, match="row 0 must be a JSON object of strings"):
        load_interactions_file(not_object)


def test_user_steps_carry_event_types_and_keep_repeats():
    raw = frame([("u", "a", 1, "view", ""), ("u", "a", 2, "cart", ""), ("u", "b", 3, "", ""),
                 ("u", "a", 4, "purchase", "9.5")])
    dataset = dataset_from_frames("d", raw, now_s=NOW_S)
    steps = dataset.user_steps()["u"]
    assert steps == ["a", "a", "b", "a"]
    assert [s.event_type for s in steps] == ["view", "cart", "unknown", "purchase"]
    assert dataset.snapshot_rows()["u"][1] == ["row~000000000001", "a", "cart", 2000]
