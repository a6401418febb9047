"""Triton perf_analyzer suite: every model of the repository, the ensemble, batching on vs off.

    PYTHONPATH=. .venv/bin/python perf/triton_perf.py --out perf/results

1. Exports a fresh, briefly trained ML-100K repository into a temporary folder (or uses
   ``--repository``) and builds perf_analyzer input JSON from real users' histories
   (perf/input_data.py).
2. Starts Triton (stack.triton.TritonServer) and runs perf_analyzer over gRPC, one run per model and
   concurrency (1, 2, 4, 8, 16) for ``user_tower``, ``retrieve``, ``recommend`` (the ensemble) and
   ``recommend_fused``, reading Triton's statistics before and after each run.
3. Serves a copy of the repository with dynamic batching removed from every python model in a
   second Triton and measures the ensemble at concurrency 16 again.
4. With ``--tune``, reloads the batching copy with other ``max_queue_delay_us`` / instance counts
   and measures the ensemble at concurrency 1 and 16 for each.

perf_analyzer measures in time windows until three agree; its default 10% tolerance is rarely met
on a shared 2-core machine (it then exits with an error and no numbers), so the tolerance is wider
(``--stability``, default 50%) and an unstable run is retried once with twice that. Its
``--request-count`` mode is no way out: its throughput is requests / whole seconds.

Writes under ``--out``: ``triton_<model>.csv`` (one row per concurrency), ``triton_perf.json``
(everything), ``triton_summary.json`` (the numbers the issue asks for), ``triton_perf.png``
(p99 latency vs throughput per model; batching on/off) and the raw perf_analyzer CSVs and logs in
``triton_raw/``. Exits 1 if a perf_analyzer run failed, its CSV lacks the expected row, it did not
read every input row, or the batching-off server batched anyway. Triton is always stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import signature as sig  # noqa: E402
from export.repository import read_config, write_config  # noqa: E402
from perf.input_data import DEFAULT_K, EXCLUDE_WIDTH, write_input_files  # noqa: E402

MODELS = (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND, sig.RECOMMEND_FUSED)
PYTHON_MODELS = (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED)  # the ones with a scheduler
# The steps Triton runs for each model; their statistics show whether batching happened.
STEPS = {sig.USER_TOWER: (sig.USER_TOWER,), sig.RETRIEVE: (sig.RETRIEVE,),
         sig.RECOMMEND: (sig.USER_TOWER, sig.RETRIEVE), sig.RECOMMEND_FUSED: (sig.RECOMMEND_FUSED,)}
TARGET_ENSEMBLE_P99_MS = 3.0  # at concurrency 1
TARGET_BATCHING_RATIO = 3.0  # batching-on / batching-off throughput at concurrency 16
BATCHING_CONCURRENCY = 16
DEFAULT_TUNE = ("0:1", "200:1", "1000:1", "200:2")  # max_queue_delay_us:instances

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
RESULT_COLUMNS = ["model", "concurrency", "requests", "throughput_infer_per_s", "p50_ms", "p90_ms",
                  "p95_ms", "p99_ms", "server_queue_us", "server_compute_infer_us",
                  "executions_per_inference"]


class PerfError(RuntimeError):
    """A perf_analyzer run that produced no usable measurement."""


# --- perf_analyzer -----------------------------------------------------------------------------


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
                      concurrency: int, window: Window, raw_dir: Path, tag: str) -> dict:
    """One perf_analyzer run at one concurrency; returns the parsed CSV row plus Triton's
    execution / inference counts of the model's steps during the run.

    An unstable measurement is retried once with twice the tolerance: on a shared machine a
    neighbour's burst can keep three windows from agreeing, and perf_analyzer then reports nothing.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    csv_path = raw_dir / f"{tag}_{model}_c{concurrency}.csv"
    log_path = csv_path.with_suffix(".log")
    csv_path.unlink(missing_ok=True)
    argv = [str(perf_analyzer_binary()), "-m", model, "-u", target.grpc_url, "-i", "grpc",
            "--input-data", str(input_json), "--concurrency-range", str(concurrency),
            "-f", str(csv_path)]
    if model != sig.USER_TOWER:
        # EXCLUDE is [-1] in the config: perf_analyzer wants a default shape even though every
        # JSON row carries its own.
        argv += ["--shape", f"{sig.EXCLUDE}:{EXCLUDE_WIDTH}"]
    before = {m: model_stats(target.http_url, m) for m in STEPS[model]}
    for attempt in (window, Window(window.interval_ms, 2 * window.stability_pct, window.max_trials)):
        proc = subprocess.run(argv + attempt.argv(), capture_output=True, text=True,
                              env=perf_analyzer_env(), timeout=300)
        if "Failed to obtain stable measurement" not in proc.stdout + proc.stderr:
            break
    after = {m: model_stats(target.http_url, m) for m in STEPS[model]}
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


# --- repository variants -----------------------------------------------------------------------


def rewrite_python_models(repository: Path, *, dynamic_batching: bool, max_queue_delay_us: int = 0,
                          instances: int | None = None) -> None:
    """Switch dynamic batching (and its delay, the instance count) of every python model in place.

    The ensemble has no scheduler of its own: its steps' configs decide whether it batches.
    """
    for name in PYTHON_MODELS:
        path = repository / name / "config.pbtxt"
        config = read_config(path)
        config.ClearField("dynamic_batching")
        if dynamic_batching:
            config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
        if instances is not None:
            for group in config.instance_group:
                group.count = instances
        write_config(config, path.parent)


def copy_repository(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# --- summary -----------------------------------------------------------------------------------


def _point(row: dict) -> dict:
    return {"throughput_infer_per_s": round(row["throughput"], 1),
            "p50_ms": round(row["p50_us"] / 1000, 3), "p99_ms": round(row["p99_us"] / 1000, 3)}


def _counts(row: dict) -> dict:
    """Per-step execution counts without the batch-size histogram (that is in triton_perf.json)."""
    return {m: {k: v for k, v in d.items() if k != "batches"} for m, d in row.get("steps", {}).items()}


def compare(a_name: str, a: dict, b_name: str, b: dict) -> dict:
    """Side-by-side numbers of two models at one concurrency. In a closed loop (fixed concurrency)
    throughput is concurrency / mean latency, so the one with more throughput serves better."""
    better = a_name if a["throughput"] >= b["throughput"] else b_name
    return {a_name: _point(a), b_name: _point(b), "better": better,
            "throughput_ratio": round(max(a["throughput"], b["throughput"])
                                      / min(a["throughput"], b["throughput"]), 2)}


def summarize(sweep: dict[str, dict[int, dict]], batching_off: dict | None,
              batching_on: dict | None) -> dict:
    """The issue's numbers from measured rows (``sweep[model][concurrency]`` and the concurrency-16
    ensemble rows with and without dynamic batching)."""
    summary: dict = {}
    ensemble = sweep.get(sig.RECOMMEND, {})
    if 1 in ensemble:
        p99 = round(ensemble[1]["p99_us"] / 1000, 3)
        summary["ensemble_c1"] = {**_point(ensemble[1]), "target_p99_ms": TARGET_ENSEMBLE_P99_MS,
                                  "target_met": p99 <= TARGET_ENSEMBLE_P99_MS}
    if batching_on and batching_off:
        ratio = batching_on["throughput"] / batching_off["throughput"]
        summary["batching_c16"] = {
            "on": {**_point(batching_on), "steps": _counts(batching_on)},
            "off": {**_point(batching_off), "steps": _counts(batching_off)},
            "throughput_ratio": round(ratio, 2),
            "p99_ratio_off_to_on": round(batching_off["p99_us"] / batching_on["p99_us"], 2),
            "target_ratio": TARGET_BATCHING_RATIO,
            "target_met": ratio >= TARGET_BATCHING_RATIO,
        }
    fused = sweep.get(sig.RECOMMEND_FUSED, {})
    pairs = {str(c): compare(sig.RECOMMEND, ensemble[c], sig.RECOMMEND_FUSED, fused[c])
             for c in (1, BATCHING_CONCURRENCY) if c in ensemble and c in fused}
    if pairs:
        summary["ensemble_vs_fused"] = pairs
    return summary


def batching_problems(on: dict | None, off: dict | None) -> list[str]:
    """Batching-off must execute every request alone; batching-on that never batched is worth a
    warning, not a failure (on an idle machine requests may simply not overlap)."""
    problems = []
    for step, delta in (off or {}).get("steps", {}).items():
        if delta["execution_count"] != delta["inference_count"]:
            problems.append(f"batching off: {step} ran {delta['inference_count']} inferences in "
                            f"{delta['execution_count']} executions: it batched")
    return problems


# --- outputs -----------------------------------------------------------------------------------


def result_row(row: dict) -> dict:
    steps = row.get("steps", {})
    return {
        "model": row["model"], "concurrency": row["concurrency"], "requests": row["requests"],
        "throughput_infer_per_s": round(row["throughput"], 1),
        **{f"p{p}_ms": round(row[f"p{p}_us"] / 1000, 3) for p in (50, 90, 95, 99)},
        "server_queue_us": round(row["server_queue_us"]),
        "server_compute_infer_us": round(row["server_compute_infer_us"]),
        "executions_per_inference": " ".join(
            f"{m}={d['execution_count']}/{d['inference_count']}" for m, d in steps.items()),
    }


def write_outputs(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for model, rows in report["sweep"].items():
        with (out / f"triton_{model}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
            w.writeheader()
            for c in sorted(rows, key=int):
                w.writerow(result_row(rows[c]))
    (out / "triton_perf.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "triton_summary.json").write_text(json.dumps(
        {"config": report["config"], **report["summary"],
         **({"tuning": report["tuning"]} if report["tuning"] else {}),
         "ok": report["ok"], "problems": report["problems"]}, indent=2))
    plot(out / "triton_perf.png", report)


def plot(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    for model, rows in report["sweep"].items():
        points = [rows[c] for c in sorted(rows, key=int)]
        x = [p["throughput"] for p in points]
        y = [p["p99_us"] / 1000 for p in points]
        left.plot(x, y, marker="o", label=model)
        for p, xi, yi in zip(points, x, y, strict=True):
            left.annotate(str(p["concurrency"]), (xi, yi), textcoords="offset points",
                          xytext=(3, 3), fontsize=7)
    left.axhline(TARGET_ENSEMBLE_P99_MS, color="grey", ls=":", lw=1,
                 label=f"target: ensemble p99 at c=1 <= {TARGET_ENSEMBLE_P99_MS:g} ms")
    left.set_xlabel("throughput (inferences / s)")
    left.set_ylabel("p99 latency (ms)")
    left.set_ylim(bottom=0)
    left.set_title("p99 latency vs throughput (labels: concurrency)")
    left.legend(fontsize=8)
    batching = report["summary"].get("batching_c16")
    if batching:
        values = [batching["off"]["throughput_infer_per_s"], batching["on"]["throughput_infer_per_s"]]
        bars = right.bar(["batching off", "batching on"], values, color=["#888888", "#76b900"])
        right.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
        right.set_ylim(0, max(values) * 1.15)
        right.set_ylabel("inferences / s")
        right.set_title(f"recommend, c={BATCHING_CONCURRENCY}\n"
                        f"dynamic batching: {batching['throughput_ratio']}x")
    else:
        right.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- orchestration -----------------------------------------------------------------------------


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (or, with None, leave) environment variables for the servers started inside."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def export_fresh_repository(work: Path, epochs: int) -> tuple[Path, Path]:
    """A briefly trained ML-100K repository and the user-history snapshot exported with it."""
    from export.pipeline import SNAPSHOT_FILE, run
    from export.train import TrainConfig

    repository, artifacts = work / "model_repository", work / "artifacts"
    print(f"exporting a {epochs}-epoch ML-100K repository into {repository} ...", flush=True)
    t0 = time.perf_counter()
    run("ml-100k", repository, artifacts, TrainConfig(epochs=epochs), seeds=(0,), baselines=False)
    print(f"exported in {time.perf_counter() - t0:.0f} s", flush=True)
    return repository, artifacts / SNAPSHOT_FILE


def load_histories(path: Path | None) -> dict[str, list[str]]:
    if path is not None:
        return json.loads(path.read_text())
    from export.data import load_movielens_100k

    return load_movielens_100k().user_sequences()


class Suite:
    """Runs measurements, remembering every row and every failure."""

    def __init__(self, inputs: dict[str, Path], rows: int, window: Window, raw_dir: Path) -> None:
        self.inputs, self.rows, self.window, self.raw_dir = inputs, rows, window, raw_dir
        self.problems: list[str] = []

    def measure(self, target: Target, model: str, concurrency: int, tag: str) -> dict | None:
        try:
            row = run_perf_analyzer(target, model, self.inputs[model], self.rows, concurrency,
                                    self.window, self.raw_dir, tag)
        except (PerfError, OSError, subprocess.SubprocessError) as exc:
            self.problems.append(f"{tag}: {exc}")
            print(f"  FAILED {tag} {model} c={concurrency}: {exc}", flush=True)
            return None
        batching = " ".join(f"{m} {d['inference_count']}/{d['execution_count']}"
                            for m, d in row["steps"].items())
        print(f"  {tag:>8} {model:>16} c={concurrency:<3} {row['throughput']:>8.1f} infer/s  "
              f"p50 {row['p50_us'] / 1000:7.2f} ms  p99 {row['p99_us'] / 1000:7.2f} ms  "
              f"inferences/executions: {batching}", flush=True)
        return row


def serve(repository: Path, log_path: Path):
    from stack.triton import TritonServer

    return TritonServer(repository, log_path=log_path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out
    raw_dir = out / "triton_raw"
    shutil.rmtree(raw_dir, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="triton-perf-") as tmp:
        work = Path(tmp)
        histories_path = args.histories
        if args.repository is None:
            repository, histories_path = export_fresh_repository(work, args.epochs)
        else:
            repository = args.repository.resolve()
        inputs = write_input_files(repository, load_histories(histories_path), work / "inputs",
                                   users=args.users, k=args.k, seed=args.seed)
        rows = len(json.loads(inputs[sig.RECOMMEND].read_text())["data"])
        window = Window(args.measurement_interval, args.stability, args.max_trials)
        suite = Suite(inputs, rows, window, raw_dir)
        sweep: dict[str, dict[int, dict]] = {m: {} for m in args.models}
        tuning: list[dict] = []
        threads = str(args.torch_threads) if args.torch_threads else None

        with environment(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads):
            on_copy = copy_repository(repository, work / "batching_on")
            print(f"Triton (dynamic batching as exported) on {repository} ...", flush=True)
            with serve(on_copy, raw_dir / "tritonserver_on.log") as triton:
                target = Target(triton.grpc_url, triton.http_url)
                for model in args.models:
                    for c in args.concurrency:
                        row = suite.measure(target, model, c, "sweep")
                        if row:
                            sweep[model][c] = row
                if args.tune:
                    tuning = tune(triton, target, on_copy, args.tune, suite)
            batching_on = sweep.get(sig.RECOMMEND, {}).get(BATCHING_CONCURRENCY)

            off_copy = copy_repository(repository, work / "batching_off")
            rewrite_python_models(off_copy, dynamic_batching=False)
            print("Triton with dynamic batching off ...", flush=True)
            with serve(off_copy, raw_dir / "tritonserver_off.log") as triton:
                batching_off = suite.measure(Target(triton.grpc_url, triton.http_url),
                                             sig.RECOMMEND, BATCHING_CONCURRENCY, "batch_off")

    problems = suite.problems + batching_problems(batching_on, batching_off)
    missing = [f"{m} c={c}" for m in args.models for c in args.concurrency if c not in sweep[m]]
    if missing:
        problems.append(f"missing measurements: {', '.join(missing)}")
    report = {
        "config": {"concurrency": args.concurrency, "measurement": vars(window),
                   "input_rows": rows, "users": args.users, "k": args.k,
                   "exclude_width": EXCLUDE_WIDTH, "protocol": "grpc",
                   "torch_threads_per_instance": args.torch_threads or "torch default",
                   "repository": str(args.repository or f"fresh export, {args.epochs} epoch(s)"),
                   "seconds": round(time.perf_counter() - started)},
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
        "sweep": sweep,
        "batching_off": batching_off,
        "tuning": tuning,
        "summary": summarize(sweep, batching_off, batching_on),
        "problems": problems,
        "ok": not problems,
    }
    write_outputs(out, report)
    print_summary(report)
    print(f"wrote {out}/triton_summary.json, triton_perf.json, triton_perf.png, "
          f"triton_<model>.csv ({report['config']['seconds']} s)")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


def tune(triton, target: Target, repository: Path, variants: Sequence[str], suite: Suite) -> list[dict]:
    """Reload the python models with each ``delay_us:instances`` variant and measure the ensemble
    at concurrency 1 and 16. Reloading in place avoids a server start per variant."""
    results = []
    for variant in variants:
        delay, instances = (int(v) for v in variant.split(":"))
        rewrite_python_models(repository, dynamic_batching=True, max_queue_delay_us=delay,
                              instances=instances)
        for name in PYTHON_MODELS:
            triton.load_model(name)
        entry = {"max_queue_delay_us": delay, "instances": instances}
        for c in (1, BATCHING_CONCURRENCY):
            row = suite.measure(target, sig.RECOMMEND, c, f"tune_{delay}us_x{instances}")
            if row:
                entry[f"c{c}"] = {**_point(row), "steps": row["steps"]}
        results.append(entry)
    return results


def print_summary(report: dict) -> None:
    s = report["summary"]
    print("\nsummary")
    if "ensemble_c1" in s:
        e = s["ensemble_c1"]
        print(f"  ensemble, concurrency 1: p50 {e['p50_ms']} ms, p99 {e['p99_ms']} ms "
              f"(target <= {e['target_p99_ms']} ms: {'met' if e['target_met'] else 'NOT met'}), "
              f"{e['throughput_infer_per_s']} infer/s")
    if "batching_c16" in s:
        b = s["batching_c16"]
        print(f"  dynamic batching, concurrency 16: on {b['on']['throughput_infer_per_s']} infer/s "
              f"(p99 {b['on']['p99_ms']} ms), off {b['off']['throughput_infer_per_s']} infer/s "
              f"(p99 {b['off']['p99_ms']} ms): {b['throughput_ratio']}x "
              f"(target >= {b['target_ratio']}x: {'met' if b['target_met'] else 'NOT met'})")
        for step, d in b["on"]["steps"].items():
            print(f"    batching on, {step}: {d['inference_count']} inferences in "
                  f"{d['execution_count']} executions (mean batch {d['mean_batch']}, max {d['max_batch']})")
    for c, pair in s.get("ensemble_vs_fused", {}).items():
        e, f = pair[sig.RECOMMEND], pair[sig.RECOMMEND_FUSED]
        print(f"  concurrency {c}: ensemble {e['throughput_infer_per_s']} infer/s p50 {e['p50_ms']} "
              f"p99 {e['p99_ms']} ms | fused {f['throughput_infer_per_s']} infer/s p50 {f['p50_ms']} "
              f"p99 {f['p99_ms']} ms -> {pair['better']} serves better ({pair['throughput_ratio']}x)")
    if s.get("ensemble_vs_fused"):
        print("    why: the ensemble hands every request from the user_tower process to the retrieve "
              "process through Triton (two python-backend executions, two shared-memory round "
              "trips); the fused model is one execution in one process")
    for t in report.get("tuning", []):
        cells = "  ".join(f"c{c}: {t[f'c{c}']['throughput_infer_per_s']} infer/s p99 "
                          f"{t[f'c{c}']['p99_ms']} ms" for c in (1, BATCHING_CONCURRENCY)
                          if f"c{c}" in t)
        print(f"  tune delay {t['max_queue_delay_us']} us x{t['instances']} instance(s): {cells}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("perf/results"))
    p.add_argument("--repository", type=Path, default=None,
                   help="an exported repository (default: export a fresh one into a temp dir)")
    p.add_argument("--histories", type=Path, default=None,
                   help="JSON {user: [item ids]} matching the repository's catalog (default: the "
                        "export's snapshot, or ML-100K with --repository)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs of the fresh export")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--measurement-interval", type=int, default=Window.interval_ms,
                   help="perf_analyzer window (ms)")
    p.add_argument("--stability", type=int, default=Window.stability_pct,
                   help="perf_analyzer --stability-percentage (retried once with twice this)")
    p.add_argument("--max-trials", type=int, default=Window.max_trials)
    p.add_argument("--users", type=int, default=500, help="distinct users in the input data")
    p.add_argument("--k", type=int, default=DEFAULT_K)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="OMP/MKL threads per python-backend process (0: torch's default). Each "
                        "model instance is its own process; several of them sharing 2 cores with "
                        "intra-op thread pools spin against each other")
    p.add_argument("--tune", nargs="*", default=None, metavar="DELAY_US:INSTANCES",
                   help="also try these batching settings on the ensemble "
                        f"(no value: {' '.join(DEFAULT_TUNE)})")
    args = p.parse_args(argv)
    if args.tune == []:
        args.tune = list(DEFAULT_TUNE)
    if BATCHING_CONCURRENCY not in args.concurrency or 1 not in args.concurrency:
        p.error(f"--concurrency must include 1 and {BATCHING_CONCURRENCY} (the summary needs them)")
    return args


if __name__ == "__main__":
    sys.exit(main())
