"""perf/bench_retrieval_scale.py: the result check, the files ``write_outputs`` writes, a tiny run."""

import csv
import json

import numpy as np

from features.catalog import FIRST_ITEM_INDEX
from perf import bench_retrieval_scale as bench


def test_check_flags_malformed_rows():
    first = FIRST_ITEM_INDEX
    ids = np.array([[first, first + 1, first + 2]], dtype=np.int64)
    scores = np.array([[0.9, 0.5, 0.1]], dtype=np.float32)
    assert bench.check(ids, scores, 3, first + 10, None) == []
    excluded = [np.array([first + 1])]
    assert bench.check(ids, scores, 3, first + 10, excluded) == ["query 0: excluded id returned"]
    dup = np.array([[first, first, 0]], dtype=np.int64)
    assert set(bench.check(dup, scores[:, ::-1].copy(), 3, first + 10, None)) == {
        "query 0: reserved, missing or out-of-range id", "query 0: duplicate ids",
        "query 0: scores not sorted"}


def _row(kind, excluded, p99, recall):
    return {"num_items": 1000, "kind": kind, "excluded_per_query": excluded, "params": {f"{kind}_m": 8},
            "build_s": 0.1, "memory_bytes": 2_500_000, "p50_ms": 0.1, "p95_ms": 0.2, "p99_ms": p99,
            "qps_batch8": 5000, "recall_at_k": recall, "meets_p99_budget": p99 <= 20,
            "chosen": kind == "exact", "ok": True, "problems": []}


def _report():
    return {"config": {"batch": 8, "kinds": ["exact", "hnsw"], "exclude": 5, "k": 5, "dim": 16},
            "environment": {"cpu_count": 2},
            "results": [_row("exact", 0, 0.3, 1.0), _row("exact", 5, 0.4, 1.0),
                        _row("hnsw", 0, 0.05, 0.97), _row("hnsw", 5, 25.0, 0.95)]}


def test_outputs_are_the_documented_files(tmp_path):
    report = _report()
    write_to = tmp_path / "results"
    bench.write_outputs(write_to, report)
    assert {p.name for p in write_to.iterdir()} == {
        "retrieval_scale.json", "retrieval_scale.csv", "retrieval_scale.png"}
    with open(write_to / "retrieval_scale.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bench.csv_columns(8) and "qps_batch8" in rows[0] and "memory_bytes" not in rows[0]
    assert [(r["kind"], r["excluded_per_query"]) for r in rows] == [
        ("exact", "0"), ("exact", "5"), ("hnsw", "0"), ("hnsw", "5")]
    assert rows[3]["memory_mb"] == "2.5" and rows[3]["meets_p99_budget"] == "False"
    assert json.loads(rows[2]["params"]) == {"hnsw_m": 8} and rows[0]["chosen"] == "True"
    assert json.loads((write_to / "retrieval_scale.json").read_text()) == report
    assert (write_to / "retrieval_scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tiny_run_writes_a_well_formed_report(tmp_path, capsys):
    code = bench.main(["--sizes", "300", "--dim", "8", "--queries", "25", "--k", "3", "--batch", "8",
                       "--exclude", "3", "--kinds", "exact", "hnsw", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "retrieval_scale.json").read_text())
    assert report["ok"] and len(report["results"]) == 4  # 2 kinds x (no exclusions, 3 excluded)
    env = report["environment"]
    assert {"faiss", "faiss_omp_threads", "load_average_1m_at_start", "load_average_1m_at_end",
            "git_commit"} <= set(env)
    assert f"wrote {tmp_path / 'retrieval_scale.json'}, .csv, .png" in capsys.readouterr().out
