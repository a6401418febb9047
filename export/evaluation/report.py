"""Evaluation report: ``report.json``, a bar chart and a printable table.

A report is a dict ``{"dataset": str, "protocol": str, "models": {name: metrics}, ...}``; extra
top-level keys (``users``, ``items``, training details) are kept as they are. A model's metrics may
be a mean over seeds, made by :func:`aggregate_seeds`: ``{"recall@10": mean, "recall@10_std":
std, ..., "seeds": n}``.

``report["protocols"]`` (optional) holds one entry per evaluation protocol, each
``{"description", "users", "models": {name: metrics}, "seeds": [{"seed", "test", ...}], ...}``:
``"leave_last_out"`` (the same ``models`` as the top level, which stays the headline) and
``"temporal"`` (with ``cutoff``/``cutoff_utc``, ``left_out`` and, when no model was trained for it,
``model_skipped``). :func:`format_table` prints a second table for every protocol but leave-last-out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPORT_JSON = "report.json"
METRICS_PNG = "metrics.png"
PLOTTED = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
LABELS = {"recall@10": "Recall@10", "ndcg@10": "NDCG@10", "recall@20": "Recall@20", "ndcg@20": "NDCG@20"}
TABLE_COLUMNS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr", "coverage@10", "coverage@20")
STD_SUFFIX = "_std"


def aggregate_seeds(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single run) of each metric over runs.

    Only the metrics every run reports are kept; ``seeds`` is the number of runs.
    """
    if not runs:
        raise ValueError("no runs to aggregate")
    keys = [k for k in runs[0] if all(k in run for run in runs)]
    out: dict[str, float] = {}
    for key in keys:
        values = np.array([run[key] for run in runs], dtype=np.float64)
        out[key] = float(values.mean())
        out[key + STD_SUFFIX] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out["seeds"] = len(runs)
    return out


def _check(report: dict) -> None:
    missing = [k for k in ("dataset", "protocol", "models") if k not in report]
    if missing:
        raise ValueError(f"report lacks {missing}")


def _json_default(value: object) -> object:
    # numpy scalars and arrays from metric code are not JSON serialisable as they are
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _title(report: dict) -> str:
    counts = ", ".join(f"{report[k]:,} {k}" for k in ("users", "items") if k in report)
    return f"{report['dataset']} — {counts}" if counts else str(report["dataset"])


def _table(title: str, models: dict[str, dict]) -> list[str]:
    columns = [c for c in TABLE_COLUMNS if any(c in m for m in models.values())]
    # A std over one seed is always 0: show it only when there was more than one run.
    with_std = any(m.get("seeds", 1) > 1 for m in models.values())
    width = max((len(c) for c in columns), default=9) + (9 if with_std else 2)
    name_width = max([12, *(len(name) + 2 for name in models)])

    def cell(metrics: dict, column: str) -> str:
        if column not in metrics:
            return f"{'-':>{width}}"
        text = f"{metrics[column]:.4f}"
        if with_std and column + STD_SUFFIX in metrics:
            text += f" ± {metrics[column + STD_SUFFIX]:.4f}"
        return f"{text:>{width}}"

    lines = [title, f"{'model':<{name_width}}" + "".join(f"{c:>{width}}" for c in columns)]
    for name, metrics in models.items():
        seeds = f"  ({metrics['seeds']} seeds)" if metrics.get("seeds", 1) > 1 else ""
        lines.append(f"{name:<{name_width}}" + "".join(cell(metrics, c) for c in columns) + seeds)
    return lines


def _protocol_title(report: dict, name: str, protocol: dict) -> str:
    where = f" at {protocol['cutoff_utc']}" if "cutoff_utc" in protocol else ""
    users = f", {protocol['users']:,} users" if "users" in protocol else ""
    return f"{report['dataset']} — {name.replace('_', ' ')} protocol{where}{users} (full ranking)"


def format_table(report: dict) -> str:
    """The report's models as a fixed-width text table, ``mean ± std`` where a std is present.

    The headline table (``report["models"]``) comes first; every other protocol in
    ``report["protocols"]`` with models follows as its own table.
    """
    _check(report)
    lines = _table(f"{_title(report)} (full ranking)", report["models"])
    pilot = report.get("train", {}).get("whole_history", {}).get("pilot")
    if pilot:
        valid = pilot["best_valid_recall@10"]
        lines.append(f"(two-tower: whole-history examples {'on' if pilot['chosen'] else 'off'}, "
                     f"chosen on validation: Recall@10 {valid['without']:.4f} without, "
                     f"{valid['with']:.4f} with)")
    item_item = report.get("train", {}).get("item_item", {})
    if "chosen" in item_item:
        towers = item_item.get("towers_only_test", {})
        alone = (f"; towers alone: Recall@10 {towers['recall@10']:.4f}, NDCG@10 "
                 f"{towers['ndcg@10']:.4f}" if item_item["used"] and "recall@10" in towers else "")
        how = "chosen on validation" if item_item["chosen_on"] == "validation" else "set"
        lines.append(f"(two-tower: item-item term, rank {item_item['rank']}, relative weight "
                     f"{item_item['chosen']} {how}{alone})")
    for name, protocol in report.get("protocols", {}).items():
        if name == "leave_last_out" or not protocol.get("models"):
            continue
        lines += ["", _protocol_title(report, name, protocol), *_table("", protocol["models"])[1:]]
        if "model_skipped" in protocol:
            lines.append(f"(two-tower: {protocol['model_skipped']})")
    return "\n".join(lines)


def plot_metrics(report: dict, path: Path) -> Path:
    """Grouped bars: one group per model, one bar per metric in ``PLOTTED``, values on the bars."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    _check(report)
    models: dict[str, dict] = report["models"]
    names = list(models)
    x = np.arange(len(names))
    width = 0.8 / len(PLOTTED)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.9 * len(names) + 2.0), 4.8))
    for j, metric in enumerate(PLOTTED):
        xs = x + (j - (len(PLOTTED) - 1) / 2) * width
        values = np.array([models[n].get(metric, np.nan) for n in names], dtype=np.float64)
        # NaN std: no error bar for a model evaluated once (a deterministic baseline)
        stds = np.array([models[n].get(metric + STD_SUFFIX, np.nan) for n in names], dtype=np.float64)
        ax.bar(xs, values, width, label=LABELS[metric])
        if not np.isnan(stds).all():
            ax.errorbar(xs, values, yerr=stds, fmt="none", ecolor="black", elinewidth=1, capsize=3)
        for xb, v, top in zip(xs, values, values + np.nan_to_num(stds), strict=True):
            if not np.isnan(v):
                ax.annotate(f"{v:.3f}".lstrip("0"), (xb, top), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylabel("score (mean over test users)")
    seeds = {models[n]["seeds"] for n in names if "seeds" in models[n]}
    subtitle = "full ranking over each user's unseen items"
    if seeds:
        subtitle += f"; error bars: std over {'/'.join(str(s) for s in sorted(seeds))} seeds"
    ax.set_title(f"{_title(report)}\n{subtitle}", fontsize=11)
    top = np.nanmax([models[n].get(m, np.nan) + models[n].get(m + STD_SUFFIX, 0.0)
                     for n in names for m in PLOTTED] + [0.01])
    ax.set_ylim(0, top * 1.12)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write ``report.json`` and ``metrics.png`` into ``out_dir``; returns {"json": .., "png": ..}."""
    _check(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=2, default=_json_default))
    return {"json": json_path, "png": plot_metrics(report, out_dir / METRICS_PNG)}
