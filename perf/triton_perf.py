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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.triton.repository import read_config, write_config  # noqa: E402
from features import contract as sig  # noqa: E402
from perf import triton_report  # noqa: E402
from perf.analyzer import PerfError, Target, Window, run_perf_analyzer  # noqa: E402
from perf.harness import SNAPSHOT_FILE, environment, export_fresh, finish  # noqa: E402
from perf.input_data import DEFAULT_K, EXCLUDE_WIDTH, snapshot_steps, write_input_files  # noqa: E402
from perf.triton_report import BATCHING_CONCURRENCY, point  # noqa: E402

MODELS = (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND, sig.RECOMMEND_FUSED)
PYTHON_MODELS = (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED)  # the ones with a scheduler
DEFAULT_TUNE = ("0:1", "200:1", "1000:1", "200:2")  # max_queue_delay_us:instances


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


# --- orchestration -----------------------------------------------------------------------------


@contextlib.contextmanager
def env_vars(**values: str | None) -> Iterator[None]:
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


def load_histories(path: Path | None) -> dict[str, list[str]]:
    """Users' steps from a snapshot file (either row form), else from ML-100K."""
    if path is not None:
        return snapshot_steps(json.loads(path.read_text()))
    from export.data.interactions import load_movielens_100k

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
            repository, artifacts = export_fresh(work, args.epochs, raw_dir / "export.log")
            histories_path = artifacts / SNAPSHOT_FILE
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

        with env_vars(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads):
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

    problems = suite.problems + triton_report.batching_problems(batching_on, batching_off)
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
        "environment": environment(load_average=os.getloadavg()),
        "sweep": sweep,
        "batching_off": batching_off,
        "tuning": tuning,
        "summary": triton_report.summarize(sweep, batching_off, batching_on),
        "problems": problems,
        "ok": not problems,
    }
    triton_report.write_outputs(out, report)
    triton_report.print_summary(report)
    return finish(f"{out}/triton_summary.json, triton_perf.json, triton_perf.png, triton_<model>.csv",
                  problems, report["config"]["seconds"])


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
                entry[f"c{c}"] = {**point(row), "steps": row["steps"]}
        results.append(entry)
    return results


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
