from export.data.interactions import load_movielens_100k
from export.data.split import leave_last_out


def test_movielens_split_follows_the_protocol_and_leaks_nothing():
    dataset = load_movielens_100k()
    assert len(dataset.interactions) == 100_000 and dataset.catalog.num_items == 1682
    assert dataset.interactions["user_id"].nunique() == 943
    assert set(dataset.interactions["event_type"]) == {"rating"}
    assert dataset.interactions["value"].between(1, 5).all()
    assert dataset.cleaning.rows_in == 100_000 and dataset.cleaning.rejected == {}
    split = leave_last_out(dataset)
    assert len(split.test) == 943
    sequences, test_histories = dataset.user_sequences(), split.history_for("test")
    for user, seq in sequences.items():
        assert split.test[user] == seq[-1] and split.valid[user] == seq[-2]
        assert split.train[user] == seq[:-2]
        # ML-100K has one rating per (user, item): the target is never in the visible history
        assert split.test[user] not in test_histories[user]
        assert split.valid[user] not in split.train[user]
    times = dataset.interactions.groupby("user_id")["timestamp"]
    assert (times.diff().dropna() >= 0).all()
