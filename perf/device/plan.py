"""What the device run measures, in what order, within what time: shared by ``pack.py`` (here),
``run.py`` (on the GPU machine, or here with ``--dry``) and the unit tests.

Standard library only: ``run.py`` imports it on a machine that has torch and numpy and nothing
else of ours installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# --- the device tool's limits (perf/device/README.md) --------------------------------------------

CARRY_LIMIT_BYTES = 64 * 2**20  # tracked tree + carried ignored folders, per call
OUT_MAX_FILES = 8
OUT_MAX_FILE_BYTES = 16 * 2**20
OUT_MAX_DIRS = 2  # $OUT/a/b/file at the deepest
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
COMMAND_LIMIT_S = 600  # one device call
RUN_BUDGET_S = 450  # the whole run.py, set-up included: leaves the call's last 2.5 minutes spare

# --- files ---------------------------------------------------------------------------------------

BUNDLE_DIR = ".device_bundle"  # at the repository root, ignored by git, carried to the device
DRY_DIR = "perf/results/device_dry"  # the dry run's bundle and output (perf/results/ is ignored)
MANIFEST = "manifest.json"
SERVER_TAR = "server.tar.xz"  # tritonserver + python backend + perf_analyzer + their libraries
DATA_TAR = "data.tar.xz"  # model repository, perf_analyzer inputs, training examples

# What run.py leaves under $OUT: flat, few, and named as the tool accepts.
OUT_CSV = "results.csv"  # every perf_analyzer row of every sweep, one CSV
OUT_SUMMARY = "summary.json"  # environment, every step (ok / error / skipped), targets checked
OUT_PLOT = "latency.png"  # only if matplotlib is importable there; report.py draws it here otherwise
OUT_LOGS = "logs.tar.gz"  # tritonserver log, perf_analyzer logs, ldd output (cut to fit)
OUT_RUN_LOG = "run.log"  # run.py's own progress lines
OUTPUT_FILES = (OUT_CSV, OUT_SUMMARY, OUT_PLOT, OUT_LOGS, OUT_RUN_LOG)

CSV_COLUMNS = ("step", "model", "items", "batching", "concurrency", "throughput", "p50_ms", "p90_ms",
               "p95_ms", "p99_ms", "queue_us", "compute_us", "mean_batch", "requests",
               "stability_pct")

# --- models in the carried repository ------------------------------------------------------------

FUSED = "recommend_fused"  # ML-100K, dynamic batching on (the exporter's default config)
FUSED_NOBATCH = "recommend_fused_nobatch"  # the same model.pt, no dynamic_batching block
EXCLUDE_WIDTH = 256  # perf/input_data.py's fixed EXCLUDE width
DIM = 64


def items_label(n: int) -> str:
    """1000000 -> '1m', 50000 -> '50k' (model names must stay short and plain)."""
    for unit, size in (("m", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def retrieve_name(items: int) -> str:
    return f"retrieve_{items_label(items)}"


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """perf_analyzer's measurement windows: ``interval_ms`` each until the last three agree within
    ``stability_pct``, at most ``max_trials``; one retry at twice the tolerance if they never do."""

    interval_ms: int
    stability_pct: int = 25
    max_trials: int = 5

    def argv(self, stability_pct: int | None = None) -> list[str]:
        return ["--measurement-interval", str(self.interval_ms),
                "--stability-percentage", str(stability_pct or self.stability_pct),
                "--max-trials", str(self.max_trials)]

    def worst_s(self) -> float:
        """One perf_analyzer process at one concurrency, at worst (all trials, start, stop)."""
        return self.max_trials * self.interval_ms / 1000 + 3.0


@dataclass(frozen=True)
class Sweep:
    step: str
    model: str
    concurrency: tuple[int, ...]
    items: int | None = None  # the catalog size, for the synthetic retrieval models
    batching: bool = True
    required: tuple[int, ...] = (1,)  # levels measured even if the budget says skip the rest

    def worst_s(self, window: Window) -> float:
        return len(self.concurrency) * window.worst_s()


@dataclass(frozen=True)
class Plan:
    mode: str  # "device" or "dry"
    kind: str  # instance kind written into every config.pbtxt
    synthetic_items: tuple[int, ...]
    window: Window
    sweeps: tuple[Sweep, ...]
    train_batches: tuple[int, ...] = (256, 4096)
    train_seconds: float = 12.0  # timed steps per batch size, after a short warm-up
    train_threads: int = 0  # torch CPU threads in the training benchmark (0: torch's default)
    budget_s: float = RUN_BUDGET_S
    setup_s: dict[str, float] = field(default_factory=dict)  # worst-case guesses per set-up step

    def worst_s(self) -> float:
        """Everything at its worst: set-up, every sweep level retried, every training run."""
        sweeps = sum(s.worst_s(self.window) for s in self.sweeps)
        # a retry (twice the tolerance) happens only after an unstable measurement: allow a
        # quarter of the levels one
        retries = 0.25 * sweeps
        train = len(self.train_batches) * (self.train_seconds + 15.0)  # + warm-up, model build
        return sum(self.setup_s.values()) + sweeps + retries + train

    def model_names(self) -> list[str]:
        return list(dict.fromkeys(s.model for s in self.sweeps))


FUSED_LEVELS = (1, 2, 4, 8, 16, 32, 64, 128)
RETRIEVE_LEVELS = (1, 4, 16)


def make_plan(mode: str) -> Plan:
    if mode not in ("device", "dry"):
        raise ValueError(f"mode must be 'device' or 'dry', not {mode!r}")
    device = mode == "device"
    items = (1_000_000, 10_000_000) if device else (10_000, 50_000)
    # Largest catalog first: its concurrency-1 p99 is the target, the smaller one a
    # reference point.
    sweeps = [
        Sweep("fused_batching", FUSED, FUSED_LEVELS, batching=True, required=(1, 64)),
        Sweep("fused_no_batching", FUSED_NOBATCH, FUSED_LEVELS, batching=False, required=(1, 64)),
        *(Sweep(f"retrieve_{items_label(n)}", retrieve_name(n), RETRIEVE_LEVELS, items=n)
          for n in sorted(items, reverse=True)),
    ]
    return Plan(
        mode=mode,
        kind="KIND_GPU" if device else "KIND_CPU",
        synthetic_items=items,
        window=Window(interval_ms=1000, stability_pct=25, max_trials=4) if device
        else Window(interval_ms=500, stability_pct=50, max_trials=4),
        sweeps=tuple(sweeps),
        train_seconds=12.0 if device else 4.0,
        # a busy 2-core machine: two OpenMP threads made a training step 30x slower than one
        train_threads=0 if device else 1,
        setup_s={"unpack": 20, "synthetic": 60 if device else 10, "server_start": 30,
                 "model_loads": 20 * (2 + len(items))},
    )


# --- $OUT -----------------------------------------------------------------------------------------


def check_out_name(relative: str) -> str:
    """``relative`` if the device tool brings it back (plain name, at most two folders deep)."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or len(path.parts) > OUT_MAX_DIRS + 1:
        raise ValueError(f"{relative!r}: $OUT paths must be relative and at most "
                         f"{OUT_MAX_DIRS} folders deep")
    for part in path.parts:
        if not OUT_NAME.match(part):
            raise ValueError(f"{relative!r}: names must match {OUT_NAME.pattern}")
    return relative


def check_out_files(names: list[str] | tuple[str, ...]) -> None:
    if len(names) > OUT_MAX_FILES:
        raise ValueError(f"{len(names)} files under $OUT: at most {OUT_MAX_FILES} come back")
    for name in names:
        check_out_name(name)
