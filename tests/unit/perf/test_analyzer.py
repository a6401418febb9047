"""perf/analyzer.py: perf_analyzer's output and Triton's statistics, read without either running."""

import pytest

from perf.analyzer import PerfError, parse_perf_csv, rows_read, stats_delta

# Captured from a real run: perf_analyzer 2.51 -f, recommend ensemble, gRPC, 2-core CPU. The two
# rows come in perf_analyzer's order (by throughput), not by concurrency.
PERF_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency\n"
    "16,1074.5,10,6747,2,323,5749,2006,3,13596,22698,25419,31407\n"
    "1,323.861,6,1074,3,49,1645,283,2,2936,3815,4314,6628\n"
)

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


def _stats(inferences, executions, batches):
    return {"inference_count": inferences, "execution_count": executions, "batches": batches}


def test_stats_delta_counts_only_the_run():
    before = _stats(100, 100, {1: 100})
    after = _stats(1100, 400, {1: 150, 4: 200, 8: 50})
    delta = stats_delta(before, after)
    assert delta["inference_count"] == 1000 and delta["execution_count"] == 300
    assert delta["mean_batch"] == pytest.approx(3.33)
    assert delta["max_batch"] == 8 and delta["batches"] == {1: 50, 4: 200, 8: 50}
