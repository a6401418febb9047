import pandas as pd

from export.data import clean_interactions, leave_last_out, load_movielens_100k


def test_clean_drops_exact_duplicates_and_sorts_stably():
    frame = pd.DataFrame({
        "user_id": ["u", "u", "u", "v"], "item_id": ["b", "a", "b", "c"], "timestamp": [2, 1, 2, 5],
    })
    out = clean_interactions(frame)
    assert out[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["u", "a", 1], ["u", "b", 2], ["v", "c", 5]]


def test_movielens_split_follows_the_protocol_and_leaks_nothing():
    dataset = load_movielens_100k()
    assert len(dataset.interactions) == 100_000 and dataset.catalog.num_items == 1682
    split = leave_last_out(dataset)
    assert len(split.test) == 943
    sequences = dataset.user_sequences()
    for user, seq in sequences.items():
        assert split.test[user] == seq[-1] and split.valid[user] == seq[-2]
        assert split.train[user] == seq[:-2]
        # ML-100K has one rating per (user, item): the target is never in the visible history
        assert split.test[user] not in split.history_for("test")[user]
        assert split.valid[user] not in split.train[user]
    times = dataset.interactions.groupby("user_id")["timestamp"]
    assert (times.diff().dropna() >= 0).all()
