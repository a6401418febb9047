"""The real perf_analyzer binary against the session's Triton, as the perf scripts run it."""

from features import contract as sig
from perf.analyzer import Target, Window, run_perf_analyzer
from perf.harness import SNAPSHOT_FILE
from perf.input_data import write_input_files
from perf.triton_perf import load_histories


def test_perf_analyzer_measures_the_served_models(exported, triton, tmp_path):
    users = 16
    inputs = write_input_files(exported.repository, load_histories(exported.artifacts / SNAPSHOT_FILE),
                               tmp_path / "inputs", users=users)
    target = Target(triton.grpc_url, triton.http_url)
    for model in (sig.RECOMMEND_FUSED, sig.RECOMMEND):
        # a short window: this checks the binary runs (its CUDA runtime library included), reads
        # every input row and gets answers, not how fast they come
        row = run_perf_analyzer(target, model, inputs[model], users, concurrency=2,
                                window=Window(interval_ms=500, stability_pct=100, max_trials=4),
                                raw_dir=tmp_path / "raw", tag="it")
        assert row["throughput"] > 0 and 0 < row["p50_us"] <= row["p99_us"], row
        assert row["requests"] and row["requests"] > 0
        # Triton counted the inferences perf_analyzer sent, step by step of the model
        assert all(step["inference_count"] > 0 for step in row["steps"].values()), row["steps"]
