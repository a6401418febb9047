"""perf/triton_report.py: the summary, the problems that fail the suite, and the written files."""

import csv
import json

from features import contract as sig
from perf.triton_report import RESULT_COLUMNS, batching_problems, summarize, write_outputs


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


def test_outputs_are_the_documented_files(tmp_path):
    steps = {sig.USER_TOWER: {"inference_count": 40, "execution_count": 10, "mean_batch": 4.0,
                              "max_batch": 8, "batches": {4: 10}}}
    row = {**_row(1, 400, 2.0, 2.8, steps), "model": sig.RECOMMEND, "requests": 800,
           "p90_us": 2500, "p95_us": 2600, "server_queue_us": 10.4, "server_compute_infer_us": 900.6}
    report = {"config": {"concurrency": [1]}, "sweep": {sig.RECOMMEND: {1: row}},
              "summary": summarize({sig.RECOMMEND: {1: row}}, None, None), "tuning": [],
              "problems": [], "ok": True}
    write_outputs(tmp_path, report)
    assert {p.name for p in tmp_path.iterdir()} == {
        "triton_recommend.csv", "triton_perf.json", "triton_summary.json", "triton_perf.png"}
    with open(tmp_path / "triton_recommend.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == RESULT_COLUMNS
    assert rows[0]["p99_ms"] == "2.8" and rows[0]["executions_per_inference"] == "user_tower=10/40"
    summary = json.loads((tmp_path / "triton_summary.json").read_text())
    assert summary["ensemble_c1"]["target_met"] is True and "tuning" not in summary
    everything = json.loads((tmp_path / "triton_perf.json").read_text())
    assert everything["sweep"]["recommend"]["1"]["requests"] == 800
