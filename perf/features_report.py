"""The feature benchmark's verdicts and outputs: target checks, the CSVs, ``features.json``, the
plot and the markdown tables printed at the end."""

from __future__ import annotations

from pathlib import Path

from perf.harness import figure, write_csv, write_json

FRESHNESS_TARGET_MS = 100.0  # the issue: p99 <= 100 ms ...
FRESHNESS_TARGET_RATE = 1000  # ... at 1,000 events/s
THROUGHPUT_TARGET = 20_000  # events/s per consumer process

FRESHNESS_COLUMNS = ["store", "target_rate", "achieved_rate", "events", "applied", "measured", "p50_ms",
                     "p95_ms", "p99_ms", "max_ms", "ack_p50_ms", "ack_p99_ms", "send_lag_p99_ms",
                     "consumer_cpu_util", "falling_behind", "ok"]
THROUGHPUT_COLUMNS = ["what", "client", "store", "stage", "events", "applied", "seconds", "events_per_s",
                      "cpu_util", "cpu_us_per_event", "ok"]


def write_outputs(out: Path, report: dict) -> None:
    write_json(out / "features.json", report)
    write_csv(out / "features_freshness.csv", FRESHNESS_COLUMNS, report["freshness"])
    write_csv(out / "features_throughput.csv", THROUGHPUT_COLUMNS, report["throughput"])
    plot(out / "features.png", report)


def plot(path: Path, report: dict) -> None:
    """Freshness percentiles vs rate per store (left), events/s per consumer and loop (right)."""
    with figure(path, 2, (12, 4.5), gridspec_kw={"width_ratios": [1.1, 1]}) as (_, (left, right)):
        colours = {"memory": "#4477aa", "redis": "#cc3311"}
        for store in report["config"]["stores"]:
            rows = [r for r in report["freshness"] if r["store"] == store and "p99_ms" in r]
            for key, style in (("p50_ms", ":"), ("p95_ms", "--"), ("p99_ms", "-")):
                left.plot([r["achieved_rate"] for r in rows], [r[key] for r in rows], style, marker="o",
                          color=colours[store], label=f"{store} {key[:-3]}")
        left.axhline(FRESHNESS_TARGET_MS, color="#888888", lw=1, ls="-.",
                     label=f"{FRESHNESS_TARGET_MS:g} ms target")
        left.axvline(FRESHNESS_TARGET_RATE, color="#888888", lw=0.8, ls=":")
        left.set(xscale="log", yscale="log", xlabel="produce rate (events/s, achieved)",
                 ylabel="send → visible in store (ms)",
                 title=f"freshness, {report['environment']['cpu_count']} CPU cores, 1 consumer process")
        left.grid(True, which="both", alpha=0.3)
        left.legend(fontsize=7, ncol=2)

        rows = [r for r in report["throughput"] if r.get("events_per_s")][::-1]  # first on top
        if not rows:  # throughput runs and raw loops skipped
            right.set_axis_off()
            return
        labels = [f"FeatureConsumer, {r['store']} store" if r["what"] == "FeatureConsumer" else
                  f"{r['client']} raw loop: {r['stage']}" for r in rows]
        colours_by = [colours[r["store"]] if r["what"] == "FeatureConsumer" else
                      ("#76b900" if r["client"] == "confluent-kafka" else "#999999") for r in rows]
        bars = right.barh(range(len(rows)), [r["events_per_s"] for r in rows], color=colours_by)
        right.bar_label(bars, labels=[f" {r['events_per_s']:,}" for r in rows], fontsize=7)
        right.axvline(THROUGHPUT_TARGET, color="#888888", lw=1, ls="-.",
                      label=f"{THROUGHPUT_TARGET:,} ev/s target")
        right.set_yticks(range(len(rows)), labels, fontsize=7.5)
        right.set(xscale="log", xlabel="events/s, one process",
                  title=f"throughput over {report['config']['throughput_events']:,} pre-filled events")
        right.set_xlim(right=max(r["events_per_s"] for r in rows) * 4)
        right.legend(fontsize=7, loc="lower right")
        right.grid(True, axis="x", which="both", alpha=0.3)


def tables(report: dict) -> str:
    """The results as markdown tables, for the README / issue."""
    lines = ["| store | rate ev/s (achieved) | p50 ms | p95 ms | p99 ms | max ms | ack p50 / p99 ms | "
             "consumer CPU |", "|---|---|---|---|---|---|---|---|"]
    for r in report["freshness"]:
        if "p99_ms" not in r:
            lines.append(f"| {r['store']} | {r['target_rate']:,} | failed: {'; '.join(r['problems'])} ||||||")
            continue
        lines.append(f"| {r['store']} | {r['target_rate']:,} ({r['achieved_rate']:,.0f}) | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['ack_p50_ms']:.1f} / {r['ack_p99_ms']:.1f} | {r['consumer_cpu_util']:.0%} |")
    lines += ["", "| what | client | store / stage | events/s | CPU | CPU µs/event | Redis server |",
              "|---|---|---|---|---|---|---|"]
    for r in report["throughput"]:
        eps = f"{r['events_per_s']:,}" if r.get("events_per_s") else f"failed: {'; '.join(r['problems'])}"
        cpu = f"{r['cpu_util']:.0%}" if r.get("cpu_util") is not None else ""
        what = r["store"] if r["stage"] == "full" else r["stage"]
        server = r.get("redis_server")
        server = (f"{server['usec_per_evalsha']} µs/event, {server['server_cpu_s']} CPU s" if server else "")
        per_event = r.get("cpu_us_per_event") or ""
        lines.append(f"| {r['what']} | {r['client']} | {what} | {eps} | {cpu} | {per_event} | {server} |")
    return "\n".join(lines)


def targets(report: dict) -> dict:
    at_rate = {r["store"]: r.get("p99_ms") for r in report["freshness"]
               if r["target_rate"] == FRESHNESS_TARGET_RATE}
    per_process = {r["store"]: r.get("events_per_s") for r in report["throughput"]
                   if r["what"] == "FeatureConsumer"}
    return {
        f"freshness_p99_ms_at_{FRESHNESS_TARGET_RATE}": at_rate,
        "freshness_met": {s: v is not None and v <= FRESHNESS_TARGET_MS for s, v in at_rate.items()},
        "throughput_events_per_s": per_process,
        "throughput_met": {s: v is not None and v >= THROUGHPUT_TARGET for s, v in per_process.items()},
    }

