"""perf/input_data.py: perf_analyzer input JSON from real histories, built with the one request
builder (features/model_inputs.py) at a fixed EXCLUDE width."""

import json

import numpy as np
import pytest
import torch

from export.model.towers import TwoTower
from export.triton.repository import ServingConfig, export_repository
from features import contract as sig
from features.behaviour import PAD_TYPE, STEP_TYPES, type_code
from features.catalog import FIRST_ITEM_INDEX, PAD_INDEX
from perf.input_data import (
    build_rows,
    fixed_width,
    model_tensors,
    perf_analyzer_data,
    recent_seen,
    snapshot_steps,
    write_input_files,
)
from tests.support.models import with_type_effects

HISTORIES = {
    "u1": ["a", "b", "c", "a"],
    "u2": ["d", "e", "f", "b", "c", "d"],
    "u3": ["f"],
    "u4": ["nope", "b"],  # an unknown item among known ones
}


def test_rows_have_contract_shapes_and_no_all_pad_history(catalog):
    rows = build_rows(HISTORIES, catalog, sequence_length=5, users=10, exclude_width=8, k=3)
    assert rows.batch_size == 4  # fewer users than asked: all of them
    assert rows.history.shape == (4, 5) and rows.history.dtype == np.int64
    assert rows.history_types.shape == (4, 5) and rows.history_types.dtype == np.int64
    assert rows.exclude.shape == (4, 8) and rows.exclude.dtype == np.int64
    assert rows.k.dtype == np.int32 and rows.k.tolist() == [[3]] * 4
    assert (rows.history != PAD_INDEX).any(axis=1).all()
    assert (rows.exclude >= FIRST_ITEM_INDEX).any(axis=1).all()


def test_history_is_left_padded_most_recent_last(catalog):
    rows = build_rows({"u1": ["a", "b", "c"]}, catalog, sequence_length=5, users=1)
    a, b, c = (catalog.index_of(i) for i in "abc")
    assert rows.history[0].tolist() == [PAD_INDEX, PAD_INDEX, a, b, c]


def test_recent_seen_is_distinct_known_items_most_recent_first(catalog):
    assert recent_seen(["a", "b", "zz", "c", "a"], catalog, limit=6) == ["a", "c", "b"]  # OOV dropped
    # Longer than the limit: the most recent distinct items are kept.
    assert recent_seen(["a", "b", "c", "d", "c"], catalog, limit=2) == ["c", "d"]


def test_exclude_rows_hold_the_recent_seen_items_then_pad(catalog):
    # Built by features.model_inputs.build_inputs (unique indices, as the gateway sends them),
    # then PAD-filled or cut to the fixed width every perf_analyzer row shares.
    rows = build_rows({"u1": ["a", "b", "zz", "c", "a"], "u2": ["a", "b", "c", "d", "e", "f"]},
                      catalog, sequence_length=4, users=2, exclude_width=3, k=2)
    first, second = rows.exclude.tolist()
    assert sorted(first) == sorted([catalog.index_of(i) for i in "abc"])
    assert sorted(second) == sorted([catalog.index_of(i) for i in "def"])  # the 3 most recent
    wide = build_rows({"u1": ["a", "b"]}, catalog, sequence_length=4, users=1, exclude_width=40)
    assert wide.exclude.shape == (1, 40)
    assert sorted(wide.exclude[0, :2].tolist()) == [catalog.index_of("a"), catalog.index_of("b")]
    assert (wide.exclude[0, 2:] == PAD_INDEX).all()


def test_fixed_width_cuts_only_padding():
    assert fixed_width(np.array([[5, 6, PAD_INDEX, PAD_INDEX]]), 2).tolist() == [[5, 6]]
    assert fixed_width(np.array([[5]]), 3).tolist() == [[5, PAD_INDEX, PAD_INDEX]]
    with pytest.raises(ValueError, match="more than 1"):
        fixed_width(np.array([[5, 6]]), 1)


def test_histories_from_another_catalog_are_refused(catalog):
    with pytest.raises(ValueError, match="another dataset"):
        build_rows({"u": ["x1", "x2", "x3"]}, catalog, sequence_length=5, users=1)


def test_user_sample_is_seeded(catalog):
    many = {f"u{i}": ["a", "b"] if i % 2 else ["c", "d", "e"] for i in range(20)}
    first = build_rows(many, catalog, 4, users=5, seed=1)
    again = build_rows(many, catalog, 4, users=5, seed=1)
    assert np.array_equal(first.history, again.history)


def test_perf_analyzer_json_has_one_batch1_entry_per_row(catalog):
    rows = build_rows(HISTORIES, catalog, sequence_length=5, users=10, exclude_width=8, k=3)
    embeddings = np.random.default_rng(0).normal(size=(rows.batch_size, 4)).astype(np.float32)
    tensors = model_tensors(rows, embeddings)
    assert set(tensors) == {sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND, sig.RECOMMEND_FUSED}
    assert list(tensors[sig.USER_TOWER]) == [sig.HISTORY, sig.HISTORY_TYPES]
    assert list(tensors[sig.RECOMMEND]) == [sig.HISTORY, sig.HISTORY_TYPES, sig.EXCLUDE, sig.K]
    assert set(tensors[sig.RETRIEVE]) == {sig.USER_EMBEDDING, sig.EXCLUDE, sig.K}

    data = json.loads(json.dumps(perf_analyzer_data(tensors[sig.RECOMMEND])))["data"]
    assert len(data) == rows.batch_size
    for i, entry in enumerate(data):
        assert entry[sig.HISTORY] == {"content": rows.history[i].tolist(), "shape": [5]}
        assert entry[sig.HISTORY_TYPES] == {"content": rows.history_types[i].tolist(), "shape": [5]}
        assert entry[sig.EXCLUDE]["shape"] == [8] and len(entry[sig.EXCLUDE]["content"]) == 8
        assert entry[sig.K] == {"content": [3], "shape": [1]}
        assert all(isinstance(v, int) for v in entry[sig.EXCLUDE]["content"])
    retrieve = perf_analyzer_data(tensors[sig.RETRIEVE])["data"][0][sig.USER_EMBEDDING]
    assert retrieve["shape"] == [4] and all(isinstance(v, float) for v in retrieve["content"])


def test_unequal_row_counts_are_refused():
    with pytest.raises(ValueError, match="row counts"):
        perf_analyzer_data({"A": np.zeros((2, 3)), "B": np.zeros((3, 3))})


def test_snapshot_rows_become_steps_with_their_types(catalog):
    steps = snapshot_steps({"old": ["a", "b"],  # bare item ids: type unknown, file order
                            "new": [["e2", "b", "purchase", 20], ["e1", "a", "view", 10]]})
    assert [(str(s), s.event_type) for s in steps["old"]] == [("a", "unknown"), ("b", "unknown")]
    assert [(str(s), s.event_type) for s in steps["new"]] == [("a", "view"), ("b", "purchase")]
    rows = build_rows({"new": steps["new"]}, catalog, sequence_length=3, users=1)
    assert rows.history_types.tolist() == [[PAD_TYPE, type_code("view"), type_code("purchase")]]


def test_input_files_come_from_an_exported_repository(catalog, tmp_path):
    torch.manual_seed(0)
    model = with_type_effects(TwoTower(catalog, dim=8, sequence_length=4))  # types move embeddings
    repository = export_repository(model, catalog, tmp_path / "repo", sequence_length=4,
                                   serving=ServingConfig(warmup=False))
    histories = snapshot_steps({u: [[f"e{i}", item, STEP_TYPES[i % len(STEP_TYPES)], i]
                                    for i, item in enumerate(items)] for u, items in HISTORIES.items()})
    paths = write_input_files(repository, histories, tmp_path / "inputs", users=3,
                              exclude_width=8, k=2)
    assert set(paths) == {sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND, sig.RECOMMEND_FUSED}
    retrieve = json.loads(paths[sig.RETRIEVE].read_text())["data"]
    recommend = json.loads(paths[sig.RECOMMEND].read_text())["data"]
    assert len(retrieve) == len(recommend) == 3
    # USER_EMBEDDING rows are the exported tower's output for the same histories.
    history = torch.tensor([r[sig.HISTORY]["content"] for r in recommend])
    types = torch.tensor([r[sig.HISTORY_TYPES]["content"] for r in recommend])
    user_tower = json.loads(paths[sig.USER_TOWER].read_text())["data"]
    assert [r[sig.HISTORY_TYPES] for r in user_tower] == [r[sig.HISTORY_TYPES] for r in recommend]
    assert len(set(types.flatten().tolist())) > 2
    with torch.no_grad():
        expected = model.eval().user_tower(history, types).numpy()
    got = np.array([r[sig.USER_EMBEDDING]["content"] for r in retrieve], dtype=np.float32)
    assert got.shape == (3, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [r[sig.EXCLUDE] for r in retrieve] == [r[sig.EXCLUDE] for r in recommend]
