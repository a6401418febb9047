"""The device run: one command on the GPU machine (``perf/device/run.sh``), or here with ``--dry``.

Unpacks the bundle, writes the synthetic catalogs, starts tritonserver (explicit model control),
loads the models and runs perf_analyzer over gRPC — the fused ML-100K model with dynamic batching
on and off at concurrency 1..128, exact retrieval over the synthetic catalogs — and the towers'
training throughput. Every step has a time estimate; a step that would not fit in what is left of
the budget is skipped, a step that fails is recorded, and the run goes on. Results go to $OUT
(``plan.OUTPUT_FILES``), rewritten after every step so that a run cut short still reports.

Standard library only: the machine has torch and numpy and nothing else of ours; the parts that
need torch run as subprocesses (synth.py, train_bench.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from perf.device import measure, report, server  # noqa: E402
from perf.device import plan as P  # noqa: E402

LOG_CAP_BYTES = 3 * 2**20  # per file in logs.tar.gz (its tail)
TEARDOWN_S = 20.0


class Run:
    def __init__(self, plan: P.Plan, bundle: Path, out: Path, work: Path) -> None:
        self.plan, self.bundle, self.out, self.work = plan, bundle, out, work
        self.logs = work / "logs"
        self.started = time.perf_counter()
        self.rows: list[dict] = []
        self.loaded: dict[str, str | None] = {}  # model -> None if loaded, else why not
        self.summary: dict = {"mode": plan.mode, "kind": plan.kind, "budget_s": plan.budget_s,
                              "plan_worst_s": round(plan.worst_s(), 1),
                              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "steps": [], "training": None}
        self.triton: server.Triton | None = None
        self.env: dict[str, str] = dict(os.environ)
        out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.run_log = open(out / P.check_out_name(P.OUT_RUN_LOG), "a")

    # --- bookkeeping -----------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.plan.budget_s - self.elapsed()

    def log(self, message: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {message}"
        print(line, flush=True)
        self.run_log.write(line + "\n")
        self.run_log.flush()

    def step(self, name: str, fn, estimate_s: float, reserve_s: float = TEARDOWN_S):
        """Run ``fn`` if ``estimate_s`` fits before the budget's end minus ``reserve_s``; record
        ok / error / skipped with the seconds it took. Returns fn's result or None."""
        entry: dict = {"step": name, "estimate_s": round(estimate_s, 1)}
        self.summary["steps"].append(entry)
        if self.left() - reserve_s < estimate_s:
            entry.update(status="skipped", reason=f"budget: {self.left():.0f} s left, needs "
                                                  f"{estimate_s:.0f} + {reserve_s:.0f} s")
            self.log(f"SKIP {name}: {entry['reason']}")
            self.write()
            return None
        t0 = time.perf_counter()
        try:
            result = fn()
            entry["status"] = "ok"
            return result
        except Exception as exc:  # every failure is a result; the run goes on
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
            self.log(f"FAIL {name}: {entry['error'][:400]}")
            return None
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            if entry.get("status") == "ok":
                self.log(f"ok   {name} ({entry['seconds']:.1f} s)")
            self.write()

    def write(self) -> None:
        """results.csv and summary.json as they stand (rewritten after every step)."""
        order = {s.step: i for i, s in enumerate(self.plan.sweeps)}
        rows = sorted(self.rows, key=lambda r: (order.get(r["step"], 99), r["concurrency"]))
        with open(self.out / P.check_out_name(P.OUT_CSV), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=P.CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.summary["elapsed_s"] = round(self.elapsed(), 1)
        self.summary["targets"] = report.targets(rows, self.plan.mode)
        (self.out / P.check_out_name(P.OUT_SUMMARY)).write_text(
            json.dumps(self.summary, indent=2, default=str) + "\n")

    # --- steps -----------------------------------------------------------------------------

    def environment(self) -> None:
        probe = ("import json, sys, numpy, torch; print(json.dumps({'python': sys.version.split()[0], "
                 "'numpy': numpy.__version__, 'torch': torch.__version__, "
                 "'cuda': torch.version.cuda, 'cuda_available': torch.cuda.is_available(), "
                 "'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))")
        env = {"executable": sys.executable, "machine": platform.machine(),
               "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        env.update(json.loads(proc.stdout) if proc.returncode == 0 else {"probe_error": proc.stderr[-500:]})
        self.summary["environment"] = env
        for module in ("matplotlib", "tqdm", "tritonclient"):
            found = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                                   timeout=60).returncode == 0
            env[f"has_{module}"] = found
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
            env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        self.summary["environment"] = env

    def unpack(self) -> None:
        manifest = server.unpack(self.bundle, self.work)
        self.summary["bundle"] = {k: manifest.get(k) for k in
                                  ("mode", "kind", "stub_python", "git_commit", "tree_dirty", "bundle_bytes",
                                   "carry_bytes", "train", "synthetic_items")}
        if manifest.get("kind") != self.plan.kind:
            raise RuntimeError(f"bundle built for {manifest.get('kind')}, this run is {self.plan.kind}")
        self.summary["bundle"]["model_code_differs_from_tree"] = self.stale_model_code()

    def stale_model_code(self) -> list[str]:
        """The bundle's model.py files that differ from the carried tree's python-backend code:
        the bundle then serves older code than the tree (re-pack). Recorded, not fatal."""
        code = REPO_ROOT / "export" / "triton" / "models" / "retrieve.py"
        stale = []
        for path in sorted((self.work / "repository").glob("*/1/model.py")):
            if code.is_file() and path.read_bytes() != code.read_bytes():
                stale.append(path.parent.parent.name)
        if stale:
            self.log(f"WARNING the bundle's model.py differs from {code} for {stale}: re-pack")
        return stale

    @property
    def triton_dir(self) -> Path:
        return self.work / "triton"

    @property
    def server_dir(self) -> Path:
        return self.triton_dir / "pytriton" / "tritonserver"

    @property
    def perf_analyzer(self) -> Path:
        return self.triton_dir / "bin" / "perf_analyzer"

    def libraries(self) -> None:
        env = server.library_env(self.triton_dir)
        binaries = [self.perf_analyzer, self.server_dir / "bin" / "tritonserver",
                    self.server_dir / "backends" / "python" / "triton_python_backend_stub"]
        self.env, missing = server.with_fallback(env, self.triton_dir, binaries)
        self.summary["libraries"] = {"LD_LIBRARY_PATH": self.env["LD_LIBRARY_PATH"],
                                     "python_libdir": server.python_libdir(), "missing": missing}
        for b in binaries:
            if shutil.which("ldd"):
                proc = subprocess.run(["ldd", str(b)], capture_output=True, text=True, env=self.env)
                (self.logs / f"ldd_{b.name}.txt").write_text(proc.stdout + proc.stderr)
        if any(missing.values()):
            raise RuntimeError(f"unresolved libraries: {missing}")

    def synthetic(self) -> None:
        result = self.work / "synthetic.json"
        cmd = [sys.executable, str(REPO_ROOT / "perf/device/synth.py"),
               "--repository", str(self.work / "repository"), "--inputs", str(self.work / "inputs"),
               "--items", *map(str, self.plan.synthetic_items), "--result", str(result)]
        self._subprocess(cmd, "synth", timeout=max(60.0, self.left() - 120))
        self.summary["synthetic"] = json.loads(result.read_text())

    def _subprocess(self, cmd: list[str], name: str, timeout: float) -> None:
        with open(self.logs / f"{name}.log", "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  cwd=REPO_ROOT, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            tail = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-4:]
            raise RuntimeError(f"{name} exited {proc.returncode}: {' | '.join(tail)}")

    def start_server(self) -> None:
        self.triton = server.Triton(self.server_dir, self.work / "repository", self.env,
                                    self.logs / "tritonserver.log", cwd=REPO_ROOT)
        self.summary["server_start_s"] = round(self.triton.start(timeout_s=90), 2)

    def load(self, model: str) -> None:
        self.loaded[model] = "loading"
        try:
            seconds = self.triton.load(model, timeout_s=max(30.0, min(120.0, self.left() - 60)))
        except Exception as exc:
            self.loaded[model] = f"{type(exc).__name__}: {exc}"[:600]
            raise
        self.loaded[model] = None
        self.summary.setdefault("load_s", {})[model] = round(seconds, 2)

    def input_for(self, sweep: P.Sweep) -> tuple[Path, int]:
        path = self.work / "inputs" / f"{sweep.model}.json"
        if sweep.model == P.FUSED_NOBATCH:
            path = self.work / "inputs" / f"{P.FUSED}.json"
        rows = len(json.loads(path.read_text())["data"])
        return path, rows

    def sweep_level(self, sweep: P.Sweep, concurrency: int, reserve_s: float) -> None:
        if self.loaded.get(sweep.model) is not None:
            raise RuntimeError(f"{sweep.model} is not loaded: {self.loaded.get(sweep.model)}")
        window = self.plan.window
        path, rows = self.input_for(sweep)
        before = self.triton.stats(sweep.model)
        row = measure.run(self.perf_analyzer, self.env, sweep.model, self.triton.grpc_url, path,
                          rows, concurrency, window, self.logs / "perf_analyzer", sweep.step,
                          retry=self.left() - reserve_s > 2 * window.worst_s())
        after = self.triton.stats(sweep.model)
        executions = after.get("execution_count", 0) - before.get("execution_count", 0)
        inferences = after.get("inference_count", 0) - before.get("inference_count", 0)
        self.rows.append({**row, "step": sweep.step, "model": sweep.model, "items": sweep.items,
                          "batching": sweep.batching,
                          "mean_batch": round(inferences / executions, 2) if executions else None})
        self.log(f"     {sweep.model} c={concurrency}: {row['throughput']:.0f} infer/s, "
                 f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms")

    def training(self) -> None:
        result = self.work / "training.json"
        cmd = [sys.executable, str(REPO_ROOT / "perf/device/train_bench.py"),
               "--data", str(self.work / "train"), "--result", str(result),
               "--seconds", str(self.plan.train_seconds), "--threads", str(self.plan.train_threads),
               "--batch-sizes", *map(str, self.plan.train_batches)]
        try:
            self._subprocess(cmd, "training", timeout=self.train_estimate() + 60)
        finally:
            if result.is_file():
                self.summary["training"] = json.loads(result.read_text())

    def train_estimate(self) -> float:
        return len(self.plan.train_batches) * (self.plan.train_seconds + 15.0)

    # --- the whole run ---------------------------------------------------------------------

    def main(self) -> int:
        self.log(f"device run, mode {self.plan.mode}: budget {self.plan.budget_s:.0f} s "
                 f"(plan at worst {self.plan.worst_s():.0f} s), bundle {self.bundle}")
        s = self.plan.setup_s
        self.step("environment", self.environment, 15)
        ready = self.step("unpack", lambda: self.unpack() or True, s["unpack"])
        ready = ready and self.step("libraries", lambda: self.libraries() or True, 10)
        if ready:
            self.step("synthetic", self.synthetic, s["synthetic"])
        ready = ready and self.step("server_start", lambda: self.start_server() or True,
                                    s["server_start"])
        try:
            if ready:
                self.measure_all()
            else:
                self.step("training", self.training, self.train_estimate())
        finally:
            self.teardown()
        return 0

    def measure_all(self) -> None:
        per_load = self.plan.setup_s["model_loads"] / max(1, len(self.plan.model_names()))
        for model in self.plan.model_names():
            self.step(f"load {model}", lambda m=model: self.load(m), per_load)
        required = [(sw, c) for sw in self.plan.sweeps for c in sw.concurrency if c in sw.required]
        rest = [(sw, c) for sw in self.plan.sweeps for c in sw.concurrency if c not in sw.required]
        worst = self.plan.window.worst_s()
        for sw, c in required:
            reserve = TEARDOWN_S + self.train_estimate()
            self.step(f"{sw.step} c={c}", lambda sw=sw, c=c, r=reserve: self.sweep_level(sw, c, r),
                      worst, reserve)
        self.step("training", self.training, self.train_estimate())
        for sw, c in rest:
            self.step(f"{sw.step} c={c}", lambda sw=sw, c=c: self.sweep_level(sw, c, TEARDOWN_S),
                      worst)

    def teardown(self) -> None:
        if self.triton is not None:
            self.summary["server_stop"] = self.triton.stop()
        self.summary["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        self.write()
        try:
            if self.summary.get("environment", {}).get("has_matplotlib"):
                report.plot(self.rows, self.summary, self.out / P.check_out_name(P.OUT_PLOT))
        except Exception as exc:
            self.summary["plot_error"] = f"{type(exc).__name__}: {exc}"
        self.log(f"done in {self.elapsed():.0f} s; targets: {json.dumps(self.summary['targets'])}")
        self.pack_logs()
        self.write()
        self.run_log.close()

    def pack_logs(self) -> None:
        """The logs' tails into logs.tar.gz (under the tool's per-file limit)."""
        path = self.out / P.check_out_name(P.OUT_LOGS)
        with tarfile.open(path, "w:gz") as tar:
            for f in sorted(self.logs.rglob("*")):
                if not f.is_file():
                    continue
                data = f.read_bytes()[-LOG_CAP_BYTES:]
                info = tarfile.TarInfo(str(f.relative_to(self.logs)))
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
        if path.stat().st_size > P.OUT_MAX_FILE_BYTES:
            path.unlink()
            self.summary["logs_error"] = "logs.tar.gz over the size limit: dropped"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="the CPU dry run here")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="default $OUT (dry: under perf/results)")
    parser.add_argument("--work", type=Path, default=None, help="unpack here (emptied first)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run")
    args = parser.parse_args(argv)
    plan = P.make_plan("dry" if args.dry else "device")
    if args.budget:
        plan = P.Plan(**{**plan.__dict__, "budget_s": args.budget})
    dry_root = REPO_ROOT / P.DRY_DIR
    bundle = args.bundle or (dry_root / "bundle" if args.dry else REPO_ROOT / P.BUNDLE_DIR)
    out = args.out or (dry_root / "out" if args.dry else Path(os.environ.get("OUT", "/tmp/device-out")))
    # outside the repository: the unpacked server holds .py files that linters would pick up
    work = args.work or Path("/tmp/recsys-device-dry" if args.dry else "/tmp/recsys-device")
    if work.exists():
        shutil.rmtree(work)
    for name in P.OUTPUT_FILES:  # a rerun into the same $OUT starts clean
        (out / name).unlink(missing_ok=True)
    return Run(plan, bundle, out, work).main()


if __name__ == "__main__":
    sys.exit(main())
