"""perf/ helpers without Triton: input data, perf_analyzer output parsing, the summary."""

import json

import numpy as np
import pytest
import torch

from export import signature as sig
from export.repository import ServingConfig, export_repository, model_configs, read_config, write_config
from export.towers import TwoTower
from features.catalog import FIRST_ITEM_INDEX, PAD_INDEX
from perf.input_data import (
    build_rows,
    exclusions,
    model_tensors,
    perf_analyzer_data,
    write_input_files,
)
from perf.triton_perf import (
    PerfError,
    batching_problems,
    parse_perf_csv,
    rewrite_python_models,
    rows_read,
    stats_delta,
    summarize,
)

# Captured from a real run: perf_analyzer 2.51 -f, recommend ensemble, gRPC, 2-core CPU. The two
# rows come in perf_analyzer's order (by throughput), not by concurrency.
PERF_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency\n"
    "16,1074.5,10,6747,2,323,5749,2006,3,13596,22698,25419,31407\n"
    "1,323.861,6,1074,3,49,1645,283,2,2936,3815,4314,6628\n"
)

HISTORIES = {
    "u1": ["a", "b", "c", "a"],
    "u2": ["d", "e", "f", "b", "c", "d"],
    "u3": ["f"],
    "u4": ["nope", "b"],  # an unknown item among known ones
}


# --- input data --------------------------------------------------------------------------------


def test_rows_have_contract_shapes_and_no_all_pad_history(catalog):
    rows = build_rows(HISTORIES, catalog, sequence_length=5, users=10, exclude_width=8, k=3)
    assert len(rows) == 4  # fewer users than asked: all of them
    assert rows.history.shape == (4, 5) and rows.history.dtype == np.int64
    assert rows.exclude.shape == (4, 8) and rows.exclude.dtype == np.int64
    assert rows.k == 3
    assert (rows.history != PAD_INDEX).any(axis=1).all()
    assert (rows.exclude >= FIRST_ITEM_INDEX).any(axis=1).all()


def test_history_is_left_padded_most_recent_last(catalog):
    rows = build_rows({"u1": ["a", "b", "c"]}, catalog, sequence_length=5, users=1)
    a, b, c = (catalog.index_of(i) for i in "abc")
    assert rows.history[0].tolist() == [PAD_INDEX, PAD_INDEX, a, b, c]


def test_exclusions_are_distinct_known_items_most_recent_first_then_pad(catalog):
    a, b, c, d = (catalog.index_of(i) for i in "abcd")
    out = exclusions(["a", "b", "zz", "c", "a"], catalog, width=6)
    assert out.dtype == np.int64
    assert out.tolist() == [a, c, b, PAD_INDEX, PAD_INDEX, PAD_INDEX]  # OOV "zz" dropped
    # Longer than the width: the most recent distinct items are kept.
    assert exclusions(["a", "b", "c", "d", "c"], catalog, width=2).tolist() == [c, d]


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
    embeddings = np.random.default_rng(0).normal(size=(len(rows), 4)).astype(np.float32)
    tensors = model_tensors(rows, embeddings)
    assert set(tensors) == {sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND, sig.RECOMMEND_FUSED}
    assert set(tensors[sig.USER_TOWER]) == {sig.HISTORY}
    assert set(tensors[sig.RETRIEVE]) == {sig.USER_EMBEDDING, sig.EXCLUDE, sig.K}

    data = json.loads(json.dumps(perf_analyzer_data(tensors[sig.RECOMMEND])))["data"]
    assert len(data) == len(rows)
    for i, entry in enumerate(data):
        assert entry[sig.HISTORY] == {"content": rows.history[i].tolist(), "shape": [5]}
        assert entry[sig.EXCLUDE]["shape"] == [8] and len(entry[sig.EXCLUDE]["content"]) == 8
        assert entry[sig.K] == {"content": [3], "shape": [1]}
        assert all(isinstance(v, int) for v in entry[sig.EXCLUDE]["content"])
    retrieve = perf_analyzer_data(tensors[sig.RETRIEVE])["data"][0][sig.USER_EMBEDDING]
    assert retrieve["shape"] == [4] and all(isinstance(v, float) for v in retrieve["content"])


def test_unequal_row_counts_are_refused():
    with pytest.raises(ValueError, match="row counts"):
        perf_analyzer_data({"A": np.zeros((2, 3)), "B": np.zeros((3, 3))})


def test_input_files_come_from_an_exported_repository(catalog, tmp_path):
    torch.manual_seed(0)
    model = TwoTower(catalog, dim=8)
    repository = export_repository(model, catalog, tmp_path / "repo", sequence_length=4,
                                   serving=ServingConfig(warmup=False))
    paths = write_input_files(repository, HISTORIES, tmp_path / "inputs", users=3,
                              exclude_width=8, k=2)
    assert set(paths) == {sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND, sig.RECOMMEND_FUSED}
    retrieve = json.loads(paths[sig.RETRIEVE].read_text())["data"]
    recommend = json.loads(paths[sig.RECOMMEND].read_text())["data"]
    assert len(retrieve) == len(recommend) == 3
    # USER_EMBEDDING rows are the exported tower's output for the same histories.
    history = torch.tensor([r[sig.HISTORY]["content"] for r in recommend])
    with torch.no_grad():
        expected = model.eval().user_tower(history).numpy()
    got = np.array([r[sig.USER_EMBEDDING]["content"] for r in retrieve], dtype=np.float32)
    assert got.shape == (3, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [r[sig.EXCLUDE] for r in retrieve] == [r[sig.EXCLUDE] for r in recommend]


# --- perf_analyzer output ----------------------------------------------------------------------


def test_parse_captured_perf_analyzer_csv():
    rows = {r["concurrency"]: r for r in parse_perf_csv(PERF_CSV)}
    assert set(rows) == {1, 16}
    one = rows[1]
    assert isinstance(one["concurrency"], int)
    assert one["throughput"] == pytest.approx(323.861)
    assert (one["p50_us"], one["p90_us"], one["p95_us"], one["p99_us"]) == (2936, 3815, 4314, 6628)
    assert one["server_compute_infer_us"] == 1645
    assert rows[16]["p99_us"] == 31407


def test_csv_without_latency_columns_is_an_error():
    with pytest.raises(PerfError, match="p99 latency"):
        parse_perf_csv("Concurrency,Inferences/Second\n1,10\n")


def test_rows_read_from_perf_analyzer_stdout():
    out = " Successfully read data for 1 stream/streams with 500 step/steps.\n*** Measurement"
    assert rows_read(out) == 500
    assert rows_read("error: no data") is None


# --- statistics, summary -----------------------------------------------------------------------


def _stats(inferences, executions, batches):
    return {"inference_count": inferences, "execution_count": executions, "batches": batches}


def test_stats_delta_counts_only_the_run():
    before = _stats(100, 100, {1: 100})
    after = _stats(1100, 400, {1: 150, 4: 200, 8: 50})
    delta = stats_delta(before, after)
    assert delta["inference_count"] == 1000 and delta["execution_count"] == 300
    assert delta["mean_batch"] == pytest.approx(3.33)
    assert delta["max_batch"] == 8 and delta["batches"] == {1: 50, 4: 200, 8: 50}


def _row(concurrency, throughput, p50_ms, p99_ms, steps=None):
    return {"concurrency": concurrency, "throughput": throughput, "p50_us": p50_ms * 1000,
            "p99_us": p99_ms * 1000, "steps": steps or {}}


def test_summary_targets_ratio_and_winner():
    sweep = {
        sig.RECOMMEND: {1: _row(1, 400, 2.0, 2.8), 16: _row(16, 1200, 12.0, 30.0)},
        sig.RECOMMEND_FUSED: {1: _row(1, 500, 1.8, 2.5), 16: _row(16, 1000, 14.0, 35.0)},
    }
    off = _row(16, 300, 50.0, 80.0)
    s = summarize(sweep, batching_off=off, batching_on=sweep[sig.RECOMMEND][16])
    assert s["ensemble_c1"]["p99_ms"] == 2.8 and s["ensemble_c1"]["target_met"] is True
    assert s["batching_c16"]["throughput_ratio"] == 4.0 and s["batching_c16"]["target_met"] is True
    assert s["batching_c16"]["off"]["throughput_infer_per_s"] == 300
    assert s["ensemble_vs_fused"]["1"]["better"] == sig.RECOMMEND_FUSED
    assert s["ensemble_vs_fused"]["16"]["better"] == sig.RECOMMEND
    assert s["ensemble_vs_fused"]["16"]["throughput_ratio"] == 1.2


def test_summary_reports_missed_targets():
    sweep = {sig.RECOMMEND: {1: _row(1, 200, 4.0, 6.5), 16: _row(16, 500, 30.0, 60.0)}}
    s = summarize(sweep, batching_off=_row(16, 400, 40.0, 70.0), batching_on=sweep[sig.RECOMMEND][16])
    assert s["ensemble_c1"]["target_met"] is False
    assert s["batching_c16"]["throughput_ratio"] == 1.25 and s["batching_c16"]["target_met"] is False
    assert "ensemble_vs_fused" not in s


def test_batching_off_that_batched_is_a_problem():
    ok = _row(16, 1, 1, 1, {sig.USER_TOWER: {"inference_count": 50, "execution_count": 50}})
    bad = _row(16, 1, 1, 1, {sig.USER_TOWER: {"inference_count": 50, "execution_count": 20}})
    assert batching_problems(None, ok) == []
    assert "it batched" in batching_problems(None, bad)[0]


def test_rewrite_python_models_switches_batching_but_leaves_the_ensemble(tmp_path):
    for name, config in model_configs(5, 8, ServingConfig()).items():
        write_config(config, tmp_path / name)
    ensemble = (tmp_path / sig.RECOMMEND / "config.pbtxt").read_text()

    rewrite_python_models(tmp_path, dynamic_batching=False)
    for name in (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED):
        config = read_config(tmp_path / name / "config.pbtxt")
        assert not config.HasField("dynamic_batching") and config.max_batch_size == 64

    rewrite_python_models(tmp_path, dynamic_batching=True, max_queue_delay_us=0, instances=2)
    for name in (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED):
        config = read_config(tmp_path / name / "config.pbtxt")
        assert config.HasField("dynamic_batching")
        assert config.dynamic_batching.max_queue_delay_microseconds == 0
        assert config.instance_group[0].count == 2
    assert (tmp_path / sig.RECOMMEND / "config.pbtxt").read_text() == ensemble
