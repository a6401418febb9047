"""The device run's results against the issue's targets, and its plot.

``targets`` (standard library) is called by run.py after every step; ``plot`` needs matplotlib,
which the GPU machine may lack — then draw it here from the returned files:

    .venv/bin/python perf/device/report.py DIR      # DIR holds results.csv and summary.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from perf.device import plan as P  # noqa: E402

FUSED_P99_C1_MS = 1.0
BATCHING_RATIO_C64 = 3.0
BATCHING_THROUGHPUT_C64 = 20_000.0
RETRIEVE_P99_C1_MS = 5.0
RETRIEVE_TARGET_ITEMS = 10_000_000


def _row(rows: list[dict], step: str, concurrency: int) -> dict | None:
    for r in rows:
        if r["step"] == step and int(r["concurrency"]) == concurrency:
            return r
    return None


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "not met")


def targets(rows: list[dict], mode: str) -> dict:
    """The issue's three targets from the measured rows ("not measured" where a row is missing).
    A dry run checks the same rules on its CPU numbers and small catalogs: labelled, not GPU
    results."""
    out: dict = {"label": "GPU run" if mode == "device" else "CPU dry run: not GPU results"}
    c1 = _row(rows, "fused_batching", 1)
    p99 = float(c1["p99_ms"]) if c1 else None
    out["fused_p99_c1"] = {"p99_ms": p99, "target_ms": FUSED_P99_C1_MS,
                           "verdict": _verdict(None if p99 is None else p99 <= FUSED_P99_C1_MS)}
    on, off = _row(rows, "fused_batching", 64), _row(rows, "fused_no_batching", 64)
    entry: dict = {"target_ratio": BATCHING_RATIO_C64, "target_infer_s": BATCHING_THROUGHPUT_C64,
                   "verdict": "not measured"}
    if on and off:
        t_on, t_off = float(on["throughput"]), float(off["throughput"])
        entry.update(on_infer_s=t_on, off_infer_s=t_off, ratio=round(t_on / t_off, 2),
                     mean_batch_on=on.get("mean_batch"), mean_batch_off=off.get("mean_batch"))
        entry["verdict"] = _verdict(t_on >= BATCHING_RATIO_C64 * t_off
                                    and t_on >= BATCHING_THROUGHPUT_C64)
    out["batching_c64"] = entry
    retrieve = [r for r in rows if r.get("items") not in (None, "") and int(r["concurrency"]) == 1]
    if retrieve:
        largest = max(retrieve, key=lambda r: int(r["items"]))
        items = int(largest["items"])
        ok = float(largest["p99_ms"]) <= RETRIEVE_P99_C1_MS
        out["retrieve_p99_c1"] = {
            "items": items, "p99_ms": float(largest["p99_ms"]), "target_ms": RETRIEVE_P99_C1_MS,
            "verdict": _verdict(ok) if items >= RETRIEVE_TARGET_ITEMS
            else f"{_verdict(ok)} at {items} items (the target is at {RETRIEVE_TARGET_ITEMS})"}
    else:
        out["retrieve_p99_c1"] = {"target_ms": RETRIEVE_P99_C1_MS, "verdict": "not measured"}
    return out


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot(rows: list[dict], summary: dict, path: Path) -> Path:
    """Three panels: fused p50/p99 vs concurrency (batching on/off), fused throughput, retrieval
    p99 per catalog; training examples/s in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    styles = {"fused_batching": ("tab:blue", "batching on"),
              "fused_no_batching": ("tab:orange", "batching off")}
    for step, (color, label) in styles.items():
        mine = sorted((r for r in rows if r["step"] == step), key=lambda r: int(r["concurrency"]))
        if not mine:
            continue
        cs = [int(r["concurrency"]) for r in mine]
        axes[0].plot(cs, [float(r["p99_ms"]) for r in mine], "o-", color=color, label=f"{label} p99")
        axes[0].plot(cs, [float(r["p50_ms"]) for r in mine], "o--", color=color, alpha=.6,
                     label=f"{label} p50")
        axes[1].plot(cs, [float(r["throughput"]) for r in mine], "o-", color=color, label=label)
    axes[0].axhline(FUSED_P99_C1_MS, color="grey", lw=.8, ls=":", label="p99 target (c=1)")
    axes[1].axhline(BATCHING_THROUGHPUT_C64, color="grey", lw=.8, ls=":", label="20k infer/s (c=64)")
    for ax, title, ylabel in ((axes[0], "recommend_fused latency", "ms"),
                              (axes[1], "recommend_fused throughput", "infer/s")):
        ax.set(xscale="log", yscale="log", xlabel="concurrency", ylabel=ylabel, title=title)
        ax.legend(fontsize=7)
    catalogs = sorted({int(r["items"]) for r in rows if r.get("items") not in (None, "")})
    for n in catalogs:
        mine = sorted((r for r in rows if r.get("items") not in (None, "") and int(r["items"]) == n),
                      key=lambda r: int(r["concurrency"]))
        axes[2].plot([int(r["concurrency"]) for r in mine], [float(r["p99_ms"]) for r in mine],
                     "o-", label=f"{P.items_label(n)} items p99")
    axes[2].axhline(RETRIEVE_P99_C1_MS, color="grey", lw=.8, ls=":", label="p99 target (10M, c=1)")
    axes[2].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="ms",
                title="exact retrieval (synthetic)")
    axes[2].legend(fontsize=7)
    training = summary.get("training") or {}
    speeds = [f"b{r['batch_size']} {r['examples_per_s']:,.0f}/s on {r['device']}"
              for r in training.get("runs", []) if "examples_per_s" in r]
    label = targets(rows, summary.get("mode", "dry"))["label"]
    fig.suptitle(f"{label} — {summary.get('environment', {}).get('gpu') or 'no GPU'}"
                 + (f" — training: {', '.join(speeds)}" if speeds else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(rows: list[dict], summary: dict) -> str:
    lines = ["| step | concurrency | infer/s | p50 ms | p99 ms | mean batch |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['concurrency']} | {float(r['throughput']):,.0f} | "
                     f"{float(r['p50_ms']):.2f} | {float(r['p99_ms']):.2f} | {r.get('mean_batch') or ''} |")
    for r in (summary.get("training") or {}).get("runs", []):
        lines.append(f"\ntraining batch {r['batch_size']} on {r['device']}: "
                     + (f"{r['examples_per_s']:,.0f} examples/s" if "examples_per_s" in r
                        else f"error {r.get('error')}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="the folder with results.csv and summary.json")
    parser.add_argument("--png", type=Path, default=None, help=f"default DIR/{P.OUT_PLOT}")
    args = parser.parse_args(argv)
    rows = read_rows(args.dir / P.OUT_CSV)
    summary = json.loads((args.dir / P.OUT_SUMMARY).read_text())
    png = args.png or args.dir / P.OUT_PLOT
    plot(rows, summary, png)
    print(markdown(rows, summary))
    print(json.dumps(targets(rows, summary.get("mode", "dry")), indent=2))
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
