"""The Triton suite's verdicts and outputs: the summary the issue asks for, the problems that fail
the run, ``triton_<model>.csv``, ``triton_perf.json``, ``triton_summary.json``, the plot and the
console summary."""

from __future__ import annotations

from pathlib import Path

from features import contract as sig
from perf.harness import figure, write_csv, write_json

TARGET_ENSEMBLE_P99_MS = 3.0  # at concurrency 1
TARGET_BATCHING_RATIO = 3.0  # batching-on / batching-off throughput at concurrency 16
BATCHING_CONCURRENCY = 16

RESULT_COLUMNS = ["model", "concurrency", "requests", "throughput_infer_per_s", "p50_ms", "p90_ms",
                  "p95_ms", "p99_ms", "server_queue_us", "server_compute_infer_us",
                  "executions_per_inference"]


def point(row: dict) -> dict:
    return {"throughput_infer_per_s": round(row["throughput"], 1),
            "p50_ms": round(row["p50_us"] / 1000, 3), "p99_ms": round(row["p99_us"] / 1000, 3)}


def _counts(row: dict) -> dict:
    """Per-step execution counts without the batch-size histogram (that is in triton_perf.json)."""
    return {m: {k: v for k, v in d.items() if k != "batches"} for m, d in row.get("steps", {}).items()}


def compare(a_name: str, a: dict, b_name: str, b: dict) -> dict:
    """Side-by-side numbers of two models at one concurrency. In a closed loop (fixed concurrency)
    throughput is concurrency / mean latency, so the one with more throughput serves better."""
    better = a_name if a["throughput"] >= b["throughput"] else b_name
    return {a_name: point(a), b_name: point(b), "better": better,
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
        summary["ensemble_c1"] = {**point(ensemble[1]), "target_p99_ms": TARGET_ENSEMBLE_P99_MS,
                                  "target_met": p99 <= TARGET_ENSEMBLE_P99_MS}
    if batching_on and batching_off:
        ratio = batching_on["throughput"] / batching_off["throughput"]
        summary["batching_c16"] = {
            "on": {**point(batching_on), "steps": _counts(batching_on)},
            "off": {**point(batching_off), "steps": _counts(batching_off)},
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
    for model, rows in report["sweep"].items():
        write_csv(out / f"triton_{model}.csv", RESULT_COLUMNS,
                  [result_row(rows[c]) for c in sorted(rows, key=int)])
    write_json(out / "triton_perf.json", report)
    write_json(out / "triton_summary.json",
               {"config": report["config"], **report["summary"],
                **({"tuning": report["tuning"]} if report["tuning"] else {}),
                "ok": report["ok"], "problems": report["problems"]})
    plot(out / "triton_perf.png", report)


def plot(path: Path, report: dict) -> None:
    with figure(path, 2, (11, 4.5), gridspec_kw={"width_ratios": [3, 1]}) as (_, (left, right)):
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
