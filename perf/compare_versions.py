"""Served latency before/after a change: a base git revision vs the working tree, side by side.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python perf/compare_versions.py \\
        --out perf/results/compare_versions --rounds 5

1. Checks out ``--base`` (default 8f6fc66, the model before the behaviour-aware user tower) into a
   temporary ``git worktree``. Each side then runs its OWN code, in a subprocess with only its own
   root on PYTHONPATH: ``python -m export`` (ML-100K, the same ``--epochs``, seed 0) into a
   repository of its own, and its own ``perf/input_data.py`` (via its ``perf/triton_perf.py``'s
   ``load_histories``) on that export's user-history snapshot, so each side's perf_analyzer input
   matches its contract (the base has no HISTORY_TYPES).
2. One Triton (stack.triton.TritonServer, one torch thread per python-backend process, as
   perf/triton_perf.py) serves both sides at once: each side's models are copied into one
   repository as ``base_<model>`` and ``new_<model>`` (an ensemble's steps renamed with it), each
   with its own files and python-backend code. ``--rounds`` times, for each of ``--models`` at each
   ``--concurrency``, perf_analyzer (perf/analyzer.py, the same windows for both) measures the two
   sides back to back, base first in odd rounds and new first in even ones. Both sides of a pair
   run seconds apart in the same server process, so a shared machine's weather, which moves a
   fresh server's latency up to 2x from one start to the next, falls on both alike.
3. Writes ``compare_versions.json`` (every round, the summary, the environment),
   ``compare_versions.csv`` (one row per round, side, model, concurrency) and
   ``compare_versions.png`` (p50 and p99 per round per side), and prints per side the median over
   rounds of p50 and p99 with their min-max, and the ratio new/base of the medians.

Triton and the worktree are removed on every exit. Exits 1 if a measurement failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.triton.config_files import read_config, write_config  # noqa: E402
from features import contract as sig  # noqa: E402
from perf.analyzer import STEPS, PerfError, Target, Window, run_perf_analyzer  # noqa: E402
from perf.harness import (  # noqa: E402
    REPO_ROOT,
    SNAPSHOT_FILE,
    environment,
    figure,
    finish,
    ratio,
    side_env,
    spread,
    worktree,
    write_csv,
    write_json,
)

DEFAULT_BASE = "8f6fc66"
SIDES = ("base", "new")
MODELS = (sig.RECOMMEND_FUSED, sig.RECOMMEND)
TARGET_P50_RATIO = 1.5  # the issue: fused p50 at concurrency 1 at most 1.5x the base's
METRICS = ("p50_ms", "p90_ms", "p99_ms", "throughput")
CSV_COLUMNS = ["round", "side", "model", "concurrency", "p50_ms", "p90_ms", "p99_ms", "throughput",
               "requests", "load_1m"]

# Run inside a side's root (cwd and PYTHONPATH): that side's histories loader and input writer.
WRITE_INPUTS = """
import json, sys
from pathlib import Path
import perf.input_data
from perf.input_data import write_input_files
from perf.triton_perf import load_histories
repository, snapshot, out, users, k, seed = sys.argv[1:]
paths = write_input_files(Path(repository), load_histories(Path(snapshot)), Path(out),
                          users=int(users), k=int(k), seed=int(seed))
print(json.dumps({"module": perf.input_data.__file__, "paths": {m: str(p) for m, p in paths.items()}}))
"""


# --- pure logic --------------------------------------------------------------------------------


def measured_row(raw: dict, rnd: int, side: str, load_1m: float | None) -> dict:
    """A perf_analyzer row (analyzer.run_perf_analyzer, microseconds) as one CSV/JSON row (ms)."""
    return {"round": rnd, "side": side, "model": raw["model"], "concurrency": raw["concurrency"],
            **{f"p{p}_ms": round(raw[f"p{p}_us"] / 1000, 3) for p in (50, 90, 99)},
            "throughput": round(raw["throughput"], 1), "requests": raw.get("requests"),
            "load_1m": load_1m, "steps": raw.get("steps", {})}


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Per model and concurrency: each side's spread of every metric over rounds, the ratios new/base
    of the medians, the range of the per-round ratios (same round, so the same machine weather) and,
    for the fused model at concurrency 1, the issue's p50 target."""
    out = []
    order = {m: i for i, m in enumerate(MODELS)}
    for model, c in sorted({(r["model"], r["concurrency"]) for r in rows},
                           key=lambda mc: (mc[1], order.get(mc[0], len(order)), mc[0])):
        mine = [r for r in rows if r["model"] == model and r["concurrency"] == c]
        entry: dict = {"model": model, "concurrency": c}
        for side in SIDES:
            entry[side] = {m: spread([r[m] for r in mine if r["side"] == side]) for m in METRICS}
        entry["ratio_new_to_base"] = {m: ratio(entry["new"][m]["median"], entry["base"][m]["median"])
                                      for m in METRICS}
        by_round = {(r["round"], r["side"]): r for r in mine}
        paired = [ratio(by_round[(n, "new")]["p50_ms"], by_round[(n, "base")]["p50_ms"])
                  for n in sorted({r["round"] for r in mine})
                  if (n, "new") in by_round and (n, "base") in by_round]
        entry["p50_ratio_per_round"] = paired
        if model == sig.RECOMMEND_FUSED and c == 1 and entry["ratio_new_to_base"]["p50_ms"] is not None:
            entry["target_p50_ratio"] = TARGET_P50_RATIO
            entry["target_met"] = entry["ratio_new_to_base"]["p50_ms"] <= TARGET_P50_RATIO
        out.append(entry)
    return out


def format_summary(summary: Sequence[dict]) -> list[str]:
    def cell(s: dict) -> str:
        return "-" if s["median"] is None else f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"

    lines = [f"{'model':<16} {'c':>2} {'side':<4}  {'p50 ms median [min-max]':<24}  "
             f"{'p99 ms median [min-max]':<24}  infer/s median"]
    for e in summary:
        for side in SIDES:
            t = e[side]["throughput"]["median"]
            lines.append(f"{e['model']:<16} {e['concurrency']:>2} {side:<4}  {cell(e[side]['p50_ms']):<24}  "
                         f"{cell(e[side]['p99_ms']):<24}  {'-' if t is None else f'{t:.0f}'}")
        r = e["ratio_new_to_base"]
        per_round = ", ".join(f"{x:.2f}" for x in e["p50_ratio_per_round"] if x is not None)
        verdict = ""
        if "target_met" in e:
            verdict = f"; target p50 <= {e['target_p50_ratio']}x: {'met' if e['target_met'] else 'NOT met'}"
        lines.append(f"{'':<24}new/base: p50 {r['p50_ms']}x, p99 {r['p99_ms']}x, throughput "
                     f"{r['throughput']}x (p50 per round: {per_round}){verdict}")
    return lines


# --- the two sides -----------------------------------------------------------------------------


def prepare(side: str, root: Path, work: Path, args: argparse.Namespace, logs: Path) -> dict:
    """Export and perf_analyzer inputs for one side, both by that side's own code."""
    repository, artifacts = work / "model_repository", work / "artifacts"
    env = side_env(root)
    argv = [sys.executable, "-m", "export", "--dataset", "ml-100k", "--repository", str(repository),
            "--artifacts", str(artifacts), "--epochs", str(args.epochs), "--seeds", "0",
            "--no-baselines"]
    if side == "new":  # e.g. a setting only the new code has, to measure what it serves
        argv += shlex.split(args.new_export_args)
    print(f"{side}: exporting from {root} ({args.epochs} epoch(s)) ...", flush=True)
    started = time.perf_counter()
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"export_{side}.log", "w") as log:
        proc = subprocess.run(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{side}: export failed (exit {proc.returncode}), see {logs}/export_{side}.log")
    snapshot = artifacts / SNAPSHOT_FILE
    proc = subprocess.run([sys.executable, "-c", WRITE_INPUTS, str(repository), str(snapshot),
                           str(work / "inputs"), str(args.users), str(args.k), str(args.seed)],
                          cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{side}: writing inputs failed: {proc.stderr.strip()[-2000:]}")
    written = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(written["module"]).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"{side}: inputs were written by {written['module']}, not by {root}'s code")
    inputs = {m: Path(p) for m, p in written["paths"].items()}
    data = json.loads(inputs[sig.RECOMMEND_FUSED].read_text())["data"]
    print(f"  {side}: ready in {time.perf_counter() - started:.0f} s; inputs {sorted(data[0])}", flush=True)
    return {"repository": repository, "inputs": inputs, "rows": len(data), "input_names": sorted(data[0])}


def merged_repository(repositories: dict[str, Path], dest: Path, models: Sequence[str]) -> list[str]:
    """Each side's copy of ``models`` and their steps in one repository, renamed ``<side>_<name>``
    (an ensemble's steps too), so that one Triton serves both; returns the names to load."""
    needed = sorted({step for model in models for step in (model, *STEPS[model])})
    names = []
    for side, repository in repositories.items():
        for name in needed:
            served = f"{side}_{name}"
            shutil.copytree(repository / name, dest / served, ignore=shutil.ignore_patterns("__pycache__"))
            config = read_config(dest / served / "config.pbtxt")
            config.name = served
            for step in config.ensemble_scheduling.step:
                step.model_name = f"{side}_{step.model_name}"
            write_config(config, dest / served)
            names.append(served)
    return names


def measure(prepared: dict, args: argparse.Namespace, window: Window, work: Path, raw_dir: Path,
            problems: list[str]) -> list[dict]:
    """One Triton serving both sides; every round, each model and concurrency on both sides back
    to back (base first in odd rounds, new first in even ones)."""
    from perf.triton_perf import env_vars
    from stack.triton import TritonServer

    names = merged_repository({side: prepared[side]["repository"] for side in SIDES}, work, args.models)
    rows = []
    with env_vars(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"), \
            TritonServer(work, log_path=raw_dir / "tritonserver.log", load_models=names) as triton:
        target = Target(triton.grpc_url, triton.http_url)
        for rnd in range(1, args.rounds + 1):
            for model in args.models:
                for c in args.concurrency:
                    for side in SIDES if rnd % 2 else SIDES[::-1]:
                        tag = f"r{rnd}_{side}"
                        try:
                            raw = run_perf_analyzer(target, model, prepared[side]["inputs"][model],
                                                    prepared[side]["rows"], c, window, raw_dir, tag,
                                                    prefix=f"{side}_")
                        except (PerfError, OSError, subprocess.SubprocessError) as exc:
                            problems.append(f"{tag} {model} c={c}: {exc}")
                            print(f"  FAILED {tag} {model} c={c}: {exc}", flush=True)
                            continue
                        row = measured_row(raw, rnd, side, round(os.getloadavg()[0], 2))
                        rows.append(row)
                        print(f"  round {rnd} {side:<4} {model:>16} c={c:<2} p50 {row['p50_ms']:6.2f} ms  "
                              f"p99 {row['p99_ms']:6.2f} ms  {row['throughput']:7.1f} infer/s  "
                              f"load {row['load_1m']}", flush=True)
    return rows


def plot(path: Path, rows: Sequence[dict], models: Sequence[str], concurrency: int) -> None:
    colors, shift = {"base": "#888888", "new": "#76b900"}, {"base": -0.08, "new": 0.08}
    with figure(path, len(models), (5.5 * len(models), 4.2), squeeze=False) as (_, axes):
        for ax, model in zip(axes[0], models, strict=True):
            for side in SIDES:
                mine = sorted((r for r in rows if r["model"] == model and r["side"] == side
                               and r["concurrency"] == concurrency), key=lambda r: r["round"])
                x = [r["round"] + shift[side] for r in mine]
                ax.plot(x, [r["p50_ms"] for r in mine], marker="o", color=colors[side], label=f"{side} p50")
                ax.plot(x, [r["p99_ms"] for r in mine], marker="^", ls="--", color=colors[side],
                        label=f"{side} p99")
            ax.set_xticks(sorted({r["round"] for r in rows}))
            ax.set_xlabel("round")
            ax.set_ylabel("latency (ms)")
            ax.set_ylim(bottom=0)
            ax.set_title(f"{model}, concurrency {concurrency}")
            ax.legend(fontsize=8)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks on a kill
    started = time.perf_counter()
    out: Path = args.out
    raw_dir = out / "raw"
    window = Window(args.measurement_interval, args.stability, args.max_trials)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="compare-versions-") as tmp, \
            worktree(args.base, Path(tmp) / "base_tree") as base_root:
        base_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=base_root, capture_output=True,
                                     text=True, check=True).stdout.strip()
        roots = {"base": base_root, "new": REPO_ROOT}
        prepared = {side: prepare(side, roots[side], Path(tmp) / side, args, raw_dir) for side in SIDES}
        rows = measure(prepared, args, window, Path(tmp) / "both", raw_dir, problems)
    expected = args.rounds * len(SIDES) * len(args.models) * len(args.concurrency)
    if len(rows) != expected:
        problems.append(f"{len(rows)} of {expected} measurements")
    summary = summarize(rows)
    report = {
        "config": {"base": args.base, "base_commit": base_commit, "new": "working tree",
                   "rounds": args.rounds,
                   "order": "one Triton serving both sides; per model and concurrency the two "
                            "sides back to back, base first in odd rounds, new first in even ones",
                   "models": args.models, "concurrency": args.concurrency, "epochs": args.epochs,
                   "new_export_args": args.new_export_args,
                   "dataset": "ml-100k", "users": args.users, "k": args.k, "measurement": vars(window),
                   "torch_threads_per_instance": 1, "seconds": round(time.perf_counter() - started),
                   "input_names": {s: prepared[s]["input_names"] for s in SIDES}},
        "environment": environment(load_average=os.getloadavg()),
        "summary": summary, "rounds": rows, "problems": problems, "ok": not problems,
    }
    write_json(out / "compare_versions.json", report)
    write_csv(out / "compare_versions.csv", CSV_COLUMNS, rows)
    if rows:
        plot(out / "compare_versions.png", rows, args.models, args.concurrency[0])
    print(f"\nbase {args.base} ({base_commit[:10]}) vs working tree, {args.rounds} rounds:")
    print("\n".join(format_summary(summary)))
    return finish(f"{out}/compare_versions.json, compare_versions.csv, compare_versions.png",
                  problems, report["config"]["seconds"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("perf/results/compare_versions"))
    p.add_argument("--base", default=DEFAULT_BASE, help="git revision to compare the working tree with")
    p.add_argument("--rounds", type=int, default=5, help="rounds, each measuring both sides")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1])
    p.add_argument("--epochs", type=int, default=1, help="training epochs of both exports")
    p.add_argument("--new-export-args", default="",
                   help="more `python -m export` arguments for the new side only, after an "
                        "equals sign: --new-export-args='--item-item 0.1' serves the item-item "
                        "term whatever validation says")
    p.add_argument("--users", type=int, default=500, help="distinct users in the input data")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--measurement-interval", type=int, default=Window.interval_ms)
    p.add_argument("--stability", type=int, default=Window.stability_pct)
    p.add_argument("--max-trials", type=int, default=Window.max_trials)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


if __name__ == "__main__":
    sys.exit(main())
