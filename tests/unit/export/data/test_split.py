import numpy as np
import pandas as pd
import pytest

from export.data.interactions import dataset_from_frames, load_movielens_100k
from export.data.split import (
    INACTIVE_AFTER,
    NO_HISTORY,
    ONLY_REPEATS_AFTER,
    cutoff_timestamp,
    leave_last_out,
    temporal_split,
)


def test_movielens_split_follows_the_protocol_and_leaks_nothing():
    dataset = load_movielens_100k()
    assert len(dataset.interactions) == 100_000 and dataset.catalog.num_items == 1682
    assert dataset.interactions["user_id"].nunique() == 943
    assert set(dataset.interactions["event_type"]) == {"rating"}
    assert dataset.interactions["value"].between(1, 5).all()
    assert dataset.cleaning.rows_in == 100_000 and dataset.cleaning.rejected == {}
    split = leave_last_out(dataset)
    assert len(split.test) == 943
    steps, test_histories = dataset.user_steps(), split.history_for("test")
    for user, seq in steps.items():
        assert split.test[user] == seq[-1] and split.valid[user] == seq[-2]
        assert split.train[user] == seq[:-2] and test_histories[user] == seq[:-1]
        assert {s.event_type for s in seq} == {"rating"}
        # ML-100K has one rating per (user, item): the target is never in the visible history
        assert split.test[user] not in test_histories[user]
        assert split.valid[user] not in split.train[user]
    times = dataset.interactions.groupby("user_id")["ts_ms"]
    assert (times.diff().dropna() >= 0).all()


def test_leave_last_out_targets_new_items_and_keeps_repeats_in_the_history():
    frame = pd.DataFrame(
        [("u", "a", 1, "view"), ("u", "a", 2, "cart"), ("u", "b", 3, "view"), ("u", "a", 4, "purchase"),
         ("u", "c", 5, "view"), ("u", "b", 6, "view"),  # after the last new item: unused
         ("v", "a", 1, "view"), ("v", "a", 2, "view"), ("v", "b", 3, "view")],  # two items: left out
        columns=["user_id", "item_id", "timestamp", "event_type"])
    split = leave_last_out(dataset_from_frames("d", frame, now_s=1_700_000_000))
    assert split.test == {"u": "c"} and split.valid == {"u": "b"}
    assert split.train["u"] == ["a", "a"]
    assert split.history_for("test")["u"] == ["a", "a", "b", "a"]
    assert [s.event_type for s in split.history_for("test")["u"]] == ["view", "cart", "view", "purchase"]


# --- global temporal split --------------------------------------------------------------------

TINY = [  # (user, item, timestamp)
    ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "f", 6), ("u1", "d", 8), ("u1", "e", 9),
    ("u2", "a", 2), ("u2", "b", 4), ("u2", "b", 5), ("u2", "a", 8), ("u2", "c", 9),
    ("u3", "c", 1),  # nothing after the cut
    ("u4", "x", 9),  # nothing before the cut
    ("u5", "a", 3), ("u5", "g", 7), ("u5", "a", 9),  # after the cut only an item seen before it
]


def tiny_dataset():
    # times in the table are in seconds; the split works in milliseconds
    frame = pd.DataFrame(TINY, columns=["user_id", "item_id", "timestamp"])
    return dataset_from_frames("tiny", frame, now_s=1_700_000_000)


def test_cutoff_is_the_timestamp_at_the_quantile_position_and_ties_fall_after_it():
    assert cutoff_timestamp(np.arange(1, 11), 0.9) == 10  # position 9 of 10: one interaction after
    assert cutoff_timestamp(np.arange(1, 11), 0.8) == 9
    assert cutoff_timestamp(np.array([5, 1, 2, 2, 3]), 0.5) == 2  # sorted [1,2,2,2,3], position 2
    with pytest.raises(ValueError):
        cutoff_timestamp(np.arange(5), 1.0)
    with pytest.raises(ValueError):
        cutoff_timestamp(np.array([], dtype=np.int64), 0.5)


def test_temporal_split_targets_histories_and_users_left_out():
    # 16 timestamps; floor(0.65 * 16) = 10 -> the first 8; floor(0.5 * 16) = 8 -> the 6
    split = temporal_split(tiny_dataset(), test_quantile=0.65, valid_quantile=0.5)
    assert (split.test_cutoff, split.valid_cutoff) == (8000, 6000)
    # histories keep every step before the cut, repeats included (u2's "b" twice)
    assert split.before_cut == {"u1": ["a", "b", "c", "f"], "u2": ["a", "b", "b"], "u3": ["c"],
                                "u5": ["a", "g"]}
    # the first *new* item after the cut: u2's repeat of "a" at t=8 is skipped
    assert split.test == {"u1": "d", "u2": "c"}
    assert split.left_out == {NO_HISTORY: 1, INACTIVE_AFTER: 1, ONLY_REPEATS_AFTER: 1}
    assert split.history_for("test") is split.before_cut
    # validation: before t=6 is training, the first new item in [6, 8) the target
    assert split.train == {"u1": ["a", "b", "c"], "u2": ["a", "b", "b"], "u3": ["c"], "u5": ["a"]}
    assert split.valid == {"u1": "f", "u5": "g"}
    assert split.history_for("valid") is split.train
    with pytest.raises(ValueError):
        split.history_for("train")
    with pytest.raises(ValueError):
        temporal_split(tiny_dataset(), test_quantile=0.5, valid_quantile=0.5)


def test_temporal_split_leaks_nothing_after_the_cut_into_histories():
    split = temporal_split(tiny_dataset(), test_quantile=0.65, valid_quantile=0.5)
    times = {(u, i): t * 1000 for u, i, t in reversed(TINY)}  # first time (ms) each user met each item
    for user, history in split.before_cut.items():
        assert all(times[user, item] < split.test_cutoff for item in history)
    for user, history in split.train.items():
        assert all(times[user, item] < split.valid_cutoff for item in history)
    for user, item in split.test.items():
        assert times[user, item] >= split.test_cutoff and item not in split.before_cut[user]
    for user, item in split.valid.items():
        assert split.valid_cutoff <= times[user, item] < split.test_cutoff


def test_movielens_temporal_split_counts_every_user_once():
    dataset = load_movielens_100k()
    split = temporal_split(dataset)
    ts = dataset.interactions["ts_ms"].to_numpy()
    assert (ts < split.test_cutoff).sum() == 90_000 and (ts < split.valid_cutoff).sum() == 79_999
    assert len(split.test) + sum(split.left_out.values()) == 943
    assert len(split.test) == 90 and len(split.valid) == 81
    first_time = dataset.interactions.groupby(["user_id", "item_id"])["ts_ms"].min()
    for user, item in split.test.items():
        assert first_time[user, item] >= split.test_cutoff
        assert all(first_time[user, seen] < split.test_cutoff for seen in split.before_cut[user])
