"""perf_analyzer, run and read: one measurement of one model at one concurrency, its CSV and log,
and Triton's execution statistics around it (inferences vs executions = the batches it formed).

perf_analyzer measures in time windows until three agree; its default 10% tolerance is rarely met
on a shared 2-core machine (it then exits with an error and no numbers), so the tolerance is wider
(``Window.stability_pct``) and an unstable run is retried once with twice that. Its
``--request-count`` mode is no way out: its throughput is requests / whole seconds.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from features import contract as sig
from perf.input_data import EXCLUDE_WIDTH

# The steps Triton runs for each model; their statistics show whether batching happened.
STEPS = {sig.USER_TOWER: (sig.USER_TOWER,), sig.RETRIEVE: (sig.RETRIEVE,),
         sig.RECOMMEND: (sig.USER_TOWER, sig.RETRIEVE), sig.RECOMMEND_FUSED: (sig.RECOMMEND_FUSED,)}

# perf_analyzer -f columns (2.51); latencies in microseconds.
CSV_COLUMNS = {
    "concurrency": "Concurrency",
    "throughput": "Inferences/Second",
    "client_send_us": "Client Send",
    "network_server_us": "Network+Server Send/Recv",
    "server_queue_us": "Server Queue",
    "server_compute_input_us": "Server Compute Input",
    "server_compute_infer_us": "Server Compute Infer",
    "server_compute_output_us": "Server Compute Output",
    "client_recv_us": "Client Recv",
    "p50_us": "p50 latency",
    "p90_us": "p90 latency",
    "p95_us": "p95 latency",
    "p99_us": "p99 latency",
}


class PerfError(RuntimeError):
    """A perf_analyzer run that produced no usable measurement."""


def parse_perf_csv(text: str) -> list[dict[str, float]]:
    """perf_analyzer's ``-f`` CSV -> one dict per concurrency, latencies still in microseconds.

    Rows come sorted by throughput, not concurrency; callers key by ``concurrency``.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS.values() if c not in (reader.fieldnames or [])]
    if missing:
        raise PerfError(f"perf_analyzer CSV lacks columns {missing}")
    rows = []
    for raw in reader:
        if not raw.get("Concurrency"):
            continue  # a trailing blank line
        row = {key: float(raw[col]) for key, col in CSV_COLUMNS.items()}
        row["concurrency"] = int(row["concurrency"])
        rows.append(row)
    return rows


def perf_analyzer_binary() -> Path:
    """The perf_analyzer that tritonclient[all]==2.51.0 installs next to this interpreter."""
    here = Path(sys.executable).parent / "perf_analyzer"
    found = here if here.is_file() else shutil.which("perf_analyzer")
    if not found:
        raise PerfError("perf_analyzer not found: run scripts/setup.sh (tritonclient[all]==2.51.0)")
    return Path(found)


def perf_analyzer_env() -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 even on CPU: point it at the pip CUDA runtime."""
    env = dict(os.environ)
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    if spec and spec.submodule_search_locations:
        lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def rows_read(output: str) -> int | None:
    """How many input rows perf_analyzer loaded ("Successfully read data for 1 stream/streams
    with N step/steps.")."""
    m = re.search(r"Successfully read data for \d+ stream/streams with (\d+) step/steps", output)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Target:
    """What perf_analyzer talks to."""

    grpc_url: str
    http_url: str


@dataclass(frozen=True)
class Window:
    """perf_analyzer's measurement: windows of ``interval_ms`` until the last three agree within
    ``stability_pct`` (throughput and latency), at most ``max_trials`` windows."""

    interval_ms: int = 2000
    stability_pct: int = 50
    max_trials: int = 8

    def argv(self) -> list[str]:
        return ["--measurement-interval", str(self.interval_ms),
                "--stability-percentage", str(self.stability_pct),
                "--max-trials", str(self.max_trials)]


def run_perf_analyzer(target: Target, model: str, input_json: Path, expected_rows: int,
                      concurrency: int, window: Window, raw_dir: Path, tag: str,
                      prefix: str = "") -> dict:
    """One perf_analyzer run at one concurrency; returns the parsed CSV row plus Triton's
    execution / inference counts of the model's steps during the run.

    ``prefix``: the server knows ``model`` and its steps as ``prefix + name`` (one Triton serving
    two repositories side by side, perf/compare_versions.py).

    An unstable measurement is retried once with twice the tolerance: on a shared machine a
    neighbour's burst can keep three windows from agreeing, and perf_analyzer then reports nothing.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    csv_path = raw_dir / f"{tag}_{model}_c{concurrency}.csv"
    log_path = csv_path.with_suffix(".log")
    csv_path.unlink(missing_ok=True)
    argv = [str(perf_analyzer_binary()), "-m", prefix + model, "-u", target.grpc_url, "-i", "grpc",
            "--input-data", str(input_json), "--concurrency-range", str(concurrency),
            "-f", str(csv_path)]
    inputs = sig.tensor_names(model_config(target.http_url, prefix + model)).inputs  # INPUT__i under libtorch
    if sig.EXCLUDE in inputs:
        # EXCLUDE is [-1] in the config: perf_analyzer wants a default shape even though every
        # JSON row carries its own.
        argv += ["--shape", f"{inputs[sig.EXCLUDE]}:{EXCLUDE_WIDTH}"]
    before = {m: model_stats(target.http_url, prefix + m) for m in STEPS[model]}
    for attempt in (window, Window(window.interval_ms, 2 * window.stability_pct, window.max_trials)):
        proc = subprocess.run(argv + attempt.argv(), capture_output=True, text=True,
                              env=perf_analyzer_env(), timeout=300)
        if "Failed to obtain stable measurement" not in proc.stdout + proc.stderr:
            break
    after = {m: model_stats(target.http_url, prefix + m) for m in STEPS[model]}
    log_path.write_text(" ".join(argv + attempt.argv()) + "\n\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise PerfError(f"{model} c={concurrency}: perf_analyzer exited {proc.returncode}: "
                        f"{' | '.join(tail)} (log {log_path})")
    read = rows_read(proc.stdout)
    if read != expected_rows:
        raise PerfError(f"{model} c={concurrency}: perf_analyzer read {read} input rows, "
                        f"expected {expected_rows}")
    if not csv_path.is_file():
        raise PerfError(f"{model} c={concurrency}: no CSV written (log {log_path})")
    rows = [r for r in parse_perf_csv(csv_path.read_text()) if r["concurrency"] == concurrency]
    if len(rows) != 1 or rows[0]["throughput"] <= 0 or rows[0]["p99_us"] <= 0:
        raise PerfError(f"{model} c={concurrency}: expected one row with throughput and p99 in "
                        f"{csv_path}, got {rows}")
    requests = re.search(r"Request count: (\d+)", proc.stdout)
    return {**rows[0], "model": model, "requests": int(requests.group(1)) if requests else None,
            "stability_pct": attempt.stability_pct,
            "steps": {m: stats_delta(before[m], after[m]) for m in STEPS[model]}}


# --- Triton statistics -------------------------------------------------------------------------


def model_config(http_url: str, model: str) -> dict:
    """GET /v2/models/<model>/config: the config Triton loaded, in its JSON form."""
    with urllib.request.urlopen(f"{http_url}/v2/models/{model}/config", timeout=10) as resp:
        return json.load(resp)


def model_stats(http_url: str, model: str) -> dict:
    """GET /v2/models/<model>/stats: cumulative counts and the batch-size histogram."""
    with urllib.request.urlopen(f"{http_url}/v2/models/{model}/stats", timeout=10) as resp:
        stats = json.load(resp)["model_stats"][0]
    return {
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
        "batches": {int(b["batch_size"]): int(b["compute_infer"]["count"])
                    for b in stats.get("batch_stats", [])},
    }


def stats_delta(before: dict, after: dict) -> dict:
    """What happened between two ``model_stats`` snapshots; ``mean_batch`` = inferences per
    execution (1.0 means no batching)."""
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    batches = {size: n - before["batches"].get(size, 0) for size, n in after["batches"].items()}
    batches = {size: n for size, n in sorted(batches.items()) if n > 0}
    return {"inference_count": inferences, "execution_count": executions,
            "mean_batch": round(inferences / executions, 2) if executions else None,
            "max_batch": max(batches) if batches else None, "batches": batches}
