"""What every benchmark script shares around its measurement: the machine it ran on, a freshly
exported model to run against, and the ending (CSV/JSON/PNG written, a summary, the exit code).

Kept free of heavy imports (matplotlib is imported when a figure is drawn, training runs in a
subprocess) so that load generators importing it stay light.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# export.pipeline.SNAPSHOT_FILE, spelled out: importing export.pipeline loads torch.
SNAPSHOT_FILE = "user_histories.json"
PLOT_DPI = 120


# --- environment -------------------------------------------------------------------------------


def git_commit(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit the benchmark ran from and whether the work tree had uncommitted changes to
    tracked files (then the commit alone does not say which code was measured)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment(**extra: Any) -> dict[str, Any]:
    """Where a result was measured: interpreter, OS, CPU and the code's commit, plus the
    benchmark's own ``extra`` facts (client versions, service start-up times)."""
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
            **git_commit(), **extra}


# --- a model to measure ------------------------------------------------------------------------


def repo_pythonpath_env() -> dict[str, str]:
    """This process's environment with the repository on PYTHONPATH (for ``python -m ...``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def export_fresh(work: Path, epochs: int, log_path: Path) -> tuple[Path, Path]:
    """Train briefly on ML-100K and export a repository into ``work``; returns (repository,
    artifacts folder with the user-history snapshot).

    Runs ``python -m export`` in a subprocess: torch (and its threads) stays out of the calling
    process, which may be a load generator. Its output goes to ``log_path``.
    """
    repository, artifacts = work / "model_repository", work / "artifacts"
    argv = [sys.executable, "-m", "export", "--dataset", "ml-100k", "--repository", str(repository),
            "--artifacts", str(artifacts), "--epochs", str(epochs), "--seeds", "0", "--no-baselines"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"training {epochs} epoch(s) and exporting into {work} (log {log_path}) ...", flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=repo_pythonpath_env(), stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"export failed (exit {proc.returncode}), see {log_path}")
    print(f"  exported in {time.perf_counter() - started:.0f} s", flush=True)
    return repository, artifacts


# --- results -----------------------------------------------------------------------------------


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """One row per mapping, only ``columns`` (in that order); a missing or None value is empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: Path, data: Any) -> None:
    """Indented JSON; values JSON does not know (paths, numpy scalars) are written as text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_rounds(out: Path, name: str, columns: Sequence[str], rows: list[dict], summary: list[dict],
                 env: dict[str, Any], plot: Callable[[Path, list[dict]], None]) -> str:
    """A side-by-side benchmark's results under ``out``: ``<name>.json`` (every round, the summary,
    the environment), ``<name>.csv`` (one row per round) and ``plot``'s ``<name>.png``; returns
    what was written, for ``finish``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", {"rounds": rows, "summary": summary, "environment": env})
    write_csv(out / f"{name}.csv", columns, rows)
    plot(out / f"{name}.png", summary)
    return f"{out}/{name}.{{json,csv,png}}"


@contextlib.contextmanager
def figure(path: Path, ncols: int, figsize: tuple[float, float], **subplots: Any) -> Iterator[tuple]:
    """``(fig, axes)`` to draw on; saved to ``path`` as PNG and closed when the block ends.

    Agg is selected here, not at import: scripts that never plot need no matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=PLOT_DPI)
    finally:
        plt.close(fig)


def finish(written: str, problems: Sequence[str], seconds: float | None = None) -> int:
    """The last lines of every benchmark: what it wrote, then its failures on stderr; the exit
    code (1 if anything failed, so ``make perf`` and CI notice)."""
    took = f" ({seconds:.0f} s)" if seconds is not None else ""
    print(f"wrote {written}{took}")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


# --- side by side: a base git revision vs the working tree ---------------------------------


@contextlib.contextmanager
def worktree(revision: str, path: Path) -> Iterator[Path]:
    """``revision`` checked out (detached) at ``path``; removed again however the block ends."""
    subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=REPO_ROOT,
                   check=True, capture_output=True, text=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO_ROOT,
                       capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO_ROOT, capture_output=True)


def side_env(root: Path, base_env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose PYTHONPATH is ``root`` alone: the side's code, never the other's."""
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONPATH"] = str(root)
    return env


def spread(values: Sequence[float]) -> dict:
    """Median, min and max of one metric over rounds (None when nothing was measured)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values),
            "n": len(values)}


def ratio(new: float | None, base: float | None) -> float | None:
    return round(new / base, 3) if new is not None and base else None
