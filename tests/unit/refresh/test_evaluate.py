"""The time split of the new events and the decision on the holdout."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from export.train import TrainConfig, new_model
from refresh.evaluate import decide, ranking_metrics, time_split


def rows(spec) -> pd.DataFrame:
    out = pd.DataFrame(spec, columns=["user_id", "item_id", "ts_ms", "event_id", "event_type"])
    out["value"] = np.nan
    return out.sort_values(["user_id", "ts_ms", "event_id"]).reset_index(drop=True)


def test_holdout_targets_come_only_from_the_newest_new_events():
    old = [("u1", "a", 1, "o1", "view"), ("u1", "b", 100, "o2", "view")]  # old row after the cut
    new = [("u1", "c", 10, "n1", "view"), ("u1", "d", 20, "n2", "view"), ("u1", "e", 30, "n3", "view"),
           ("u1", "f", 40, "n4", "view"), ("u2", "a", 15, "n5", "view"), ("u2", "c", 45, "n6", "view")]
    data, fresh = rows(old + new), rows(new)
    split = time_split(data, fresh, holdout_fraction=0.2, valid_fraction=0.2)
    assert split.test_cut_ms == 40 and split.valid_cut_ms == 30
    assert split.test == {"u1": "f", "u2": "c"}  # never "b": the live version trained on it
    assert split.valid == {"u1": "e"}
    assert [str(s) for s in split.train["u1"]] == ["a", "c", "d"]  # nothing from the cut on
    assert "b" not in split.before_test["u1"]  # after the cut: not history either


def test_a_target_the_catalog_lacks_is_a_miss(catalog):
    torch.manual_seed(0)
    model = new_model(catalog, TrainConfig(dim=8, sequence_length=4))
    histories = {"u1": ["a"], "u2": ["b"]}
    full = ranking_metrics(model, catalog, histories, {"u1": "c", "u2": "d"}, 4)
    assert full["recall@10"] == 1.0 and full["users"] == 2  # 6 items: everything is in the top 10
    half = ranking_metrics(model, catalog, histories, {"u1": "c", "u2": "brand-new"}, 4)
    assert half["recall@10"] == 0.5 and half["users"] == 2


def test_the_candidate_must_beat_live_by_the_margin():
    live = {"recall@10": 0.20, "users": 100}
    assert decide(live, {"recall@10": 0.23, "users": 100}, margin=0.10).promote
    no = decide(live, {"recall@10": 0.21, "users": 100}, margin=0.10)
    assert not no.promote and "below the margin" in no.reason and math.isclose(no.gain, 0.05)
    assert not decide(live, {"recall@10": 0.20, "users": 100}, margin=0.0).promote  # a tie
    assert decide({"recall@10": 0.0, "users": 9}, {"recall@10": 0.1, "users": 9}, 0.5).promote
    empty = decide(live, {"users": 0}, margin=0.0)
    assert not empty.promote and "no holdout users" in empty.reason
