"""The gateway benchmark's verdicts and outputs: target checks, warnings about points that measure
the machine rather than the service, the CSV columns, the plot and the console lines."""

from __future__ import annotations

import math
from pathlib import Path

from perf.harness import figure

TARGET_RATE = 200.0  # req/s at which the p99 target applies
TARGET_P99_MS = 15.0
TARGET_P50_RATIO = 2.0  # gateway p50 / Triton-direct p50
TARGET_SIMILAR_P99_RATIO = 1.2  # similar items p99 / the feed's p99, at the same rate
MAX_ERROR_RATE = 0.01  # a point with more errors is overloaded: its percentiles are survivors'
QUIET_OTHER_CORES = 0.25  # CPU of processes outside the benchmark above this: a noisy machine
MAX_SEND_LAG_P99_MS = 5.0  # the generator's own delay above this: it could not keep the schedule

CSV_COLUMNS = [
    "target", "rate", "arrivals", "duration_s", "requests", "ok", "errors", "error_rate",
    "timeouts", "degraded", "achieved_rps", "sent_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms",
    "mean_ms", "p50_from_send_ms", "p99_from_send_ms", "send_lag_p99_ms", "send_lag_max_ms",
    "triton_server_ms", "gateway_app_ms", "gateway_triton_call_ms", "cpu_generator", "cpu_gateway",
    "cpu_triton", "cpu_kafka", "cpu_other", "load_avg_1m",
]


def target_checks(rows: list[dict]) -> dict:
    """The issue's targets from the measured rows."""
    by = {(r["target"], r["rate"]): r for r in rows}
    checks: dict = {}
    g = by.get(("gateway", TARGET_RATE))
    if g:
        met = (g["p99_ms"] is not None and g["p99_ms"] <= TARGET_P99_MS
               and (g["error_rate"] or 0) <= MAX_ERROR_RATE)
        checks["gateway_p99_at_200"] = {"p99_ms": g["p99_ms"], "error_rate": g["error_rate"],
                                        "target_p99_ms": TARGET_P99_MS, "target_met": met}
    ratios = {}
    for (target, rate), row in sorted(by.items()):
        direct = by.get(("triton", rate))
        if target == "gateway" and direct and row["p50_ms"] and direct["p50_ms"]:
            ratio = row["p50_ms"] / direct["p50_ms"]
            ratios[f"{rate:g}"] = {"gateway_p50_ms": row["p50_ms"], "triton_p50_ms": direct["p50_ms"],
                                   "ratio": round(ratio, 2), "target_ratio": TARGET_P50_RATIO,
                                   "target_met": ratio <= TARGET_P50_RATIO}
    if ratios:
        checks["gateway_vs_triton_p50"] = ratios
    similar = similar_vs_feed(by)
    if similar:
        checks["similar_vs_feed_p99"] = similar
    return checks


def similar_vs_feed(by: dict) -> dict:
    """Per rate with both runs: similar items' p99 over the feed's. Not met when either run had
    more than MAX_ERROR_RATE errors (its p99 is the survivors'), whatever the ratio. ``quiet``:
    neither run saw other work or a starved generator (a p99 is a handful of requests, which
    another process's burst on a small machine decides more than either path does)."""
    out = {}
    for (target, rate), row in sorted(by.items()):
        feed = by.get(("gateway", rate))
        if target != "similar" or not feed or not row["p99_ms"] or not feed["p99_ms"]:
            continue
        ratio = row["p99_ms"] / feed["p99_ms"]
        clean = max(row["error_rate"] or 0, feed["error_rate"] or 0) <= MAX_ERROR_RATE
        quiet = all((r.get("cpu_other") or 0) <= QUIET_OTHER_CORES
                    and (r.get("send_lag_p99_ms") or 0) <= MAX_SEND_LAG_P99_MS for r in (row, feed))
        out[f"{rate:g}"] = {"similar_p99_ms": row["p99_ms"], "feed_p99_ms": feed["p99_ms"],
                            "similar_p50_ms": row["p50_ms"], "feed_p50_ms": feed["p50_ms"],
                            "similar_error_rate": row["error_rate"], "feed_error_rate": feed["error_rate"],
                            "similar_degraded": row.get("degraded", 0),
                            "ratio": round(ratio, 2), "target_ratio": TARGET_SIMILAR_P99_RATIO,
                            "target_met": clean and ratio <= TARGET_SIMILAR_P99_RATIO, "quiet": quiet}
    return out


def run_warnings(row: dict, services_known: bool) -> list[str]:
    """Why a point may not mean what it seems (reported, not failures). ``services_known``: the
    script started the services, so ``cpu_other`` is CPU outside the benchmark."""
    where = f"{row['target']} at {row['rate']:g} req/s"
    out = []
    if (row["error_rate"] or 0) > MAX_ERROR_RATE:
        out.append(f"{where}: error rate {row['error_rate']:.1%} ({row['error_kinds']}): "
                   "overloaded, percentiles are over the requests that succeeded")
    if row["degraded"]:
        out.append(f"{where}: {row['degraded']} degraded responses (the gateway's Triton call "
                   "failed and it served popular items: a faster path than the one under test)")
    if services_known and (row.get("cpu_other") or 0) > QUIET_OTHER_CORES:
        out.append(f"{where}: {row['cpu_other']:.2f} cores busy outside the benchmark: the "
                   "machine was not quiet")
    if (row["send_lag_p99_ms"] or 0) > MAX_SEND_LAG_P99_MS:
        out.append(f"{where}: generator send lag p99 {row['send_lag_p99_ms']} ms: it could not "
                   "keep its schedule (CPU-starved); latencies include that delay")
    return out


def plot(path: Path, rows: list[dict], title: str) -> None:
    with figure(path, 3, (16, 4.8)) as (fig, (ax_lat, ax_ratio, ax_rate)):
        styles = {"gateway": ("tab:blue", "-", "feed via gateway (HTTP)"),
                  "triton": ("tab:orange", "--", "Triton direct (gRPC)"),
                  "similar": ("tab:purple", "-.", "similar items via gateway (HTTP)")}
        bar_shift = {"gateway": -0.03, "triton": 0.0, "similar": 0.03}  # side by side per rate
        markers = {"p50": "o", "p95": "s", "p99": "^"}
        for target, (color, ls, label) in styles.items():
            mine = sorted((r for r in rows if r["target"] == target), key=lambda r: r["rate"])
            if not mine:
                continue
            rates = [r["rate"] for r in mine]
            for q, marker in markers.items():
                values = [r[f"{q}_ms"] if r[f"{q}_ms"] is not None else math.nan for r in mine]
                ax_lat.plot(rates, values, ls=ls, marker=marker, color=color, label=f"{label} {q}")
                over = [(x, v) for x, v, r in zip(rates, values, mine, strict=True)
                        if (r["error_rate"] or 0) > MAX_ERROR_RATE]
                if over:  # overloaded: percentiles of the survivors only
                    ax_lat.scatter(*zip(*over, strict=True), s=140, facecolors="none", edgecolors="red")
            ax_rate.plot(rates, [r["achieved_rps"] or 0 for r in mine], ls=ls, marker="o", color=color,
                         label=f"{label} achieved")
            ax_rate.bar([x + bar_shift[target] * max(rates) for x in rates],
                        [100 * (r["error_rate"] or 0) for r in mine], width=0.03 * max(rates),
                        color=color, alpha=0.3, label=f"{label} errors (%)")
        ax_lat.axhline(TARGET_P99_MS, color="grey", lw=0.8, ls=":")
        ax_lat.annotate(f"p99 target {TARGET_P99_MS:g} ms @ {TARGET_RATE:g} req/s",
                        (0.02, TARGET_P99_MS), xycoords=("axes fraction", "data"), fontsize=8,
                        va="bottom", color="grey")
        ax_lat.set(xlabel="offered load (req/s)", ylabel="latency from scheduled send (ms)",
                   yscale="log",
                   title=f"latency percentiles vs rate (red ring: > {MAX_ERROR_RATE:.0%} errors)")
        ax_lat.legend(fontsize=7, ncol=2, loc="upper left")
        all_checks = target_checks(rows)
        for key, color, label, limit in (
                ("gateway_vs_triton_p50", "tab:green", "feed p50 / Triton-direct p50", TARGET_P50_RATIO),
                ("similar_vs_feed_p99", "tab:purple", "similar p99 / feed p99", TARGET_SIMILAR_P99_RATIO)):
            checks = all_checks.get(key, {})
            if not checks:
                continue
            rates = [float(r) for r in checks]
            ax_ratio.plot(rates, [c["ratio"] for c in checks.values()], marker="o", color=color,
                          label=f"{label} (target <= {limit:g})")
            ax_ratio.axhline(limit, color=color, lw=0.8, ls=":")
            for rate, c in zip(rates, checks.values(), strict=True):
                ax_ratio.annotate(f"{c['ratio']:g}x", (rate, c["ratio"]), textcoords="offset points",
                                  xytext=(0, 6), ha="center", fontsize=8, color=color)
        if ax_ratio.lines:
            ax_ratio.legend(fontsize=7)
        ax_ratio.set(xlabel="offered load (req/s)", ylabel="ratio", yscale="log",
                     title="latency ratios (dotted: targets)")
        all_rates = sorted({r["rate"] for r in rows})
        ax_rate.plot(all_rates, all_rates, color="grey", lw=0.8, ls=":", label="offered")
        ax_rate.set(xlabel="offered load (req/s)", ylabel="req/s  |  errors (%)",
                    title="achieved rate and error rate")
        ax_rate.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)


def print_row(row: dict) -> None:
    extra = f", degraded {row['degraded']}" if row["degraded"] else ""
    means = {"Triton": row.get("triton_server_ms"), "gateway app": row.get("gateway_app_ms"),
             "gateway's Triton call": row.get("gateway_triton_call_ms")}
    server = ", ".join(f"{k} {v}" for k, v in means.items() if v is not None)
    server = f"  [means ms/req: {server};" if server else "  ["
    cpu = " ".join(f"{k[4:]} {row[k]:.2f}" for k in ("cpu_generator", "cpu_gateway", "cpu_triton",
                                                      "cpu_kafka", "cpu_other") if row.get(k) is not None)
    print(f"  {row['target']:>7} {row['rate']:>6g} req/s: achieved {row['achieved_rps']}, "
          f"p50 {row['p50_ms']} p95 {row['p95_ms']} p99 {row['p99_ms']} max {row['max_ms']} ms, "
          f"errors {row['errors']}/{row['requests']}{extra}; send lag p99 {row['send_lag_p99_ms']} ms"
          f"{server} cores busy: {cpu}]", flush=True)


def print_checks(checks: dict) -> None:
    print("\ntargets")
    c = checks.get("gateway_p99_at_200")
    if c:
        print(f"  gateway p99 at {TARGET_RATE:g} req/s: {c['p99_ms']} ms, errors {c['error_rate']} "
              f"(target <= {c['target_p99_ms']:g} ms: {'met' if c['target_met'] else 'NOT met'})")
    for rate, c in checks.get("gateway_vs_triton_p50", {}).items():
        print(f"  {rate} req/s: gateway p50 {c['gateway_p50_ms']} ms vs Triton direct "
              f"{c['triton_p50_ms']} ms = {c['ratio']}x (target <= {c['target_ratio']:g}x: "
              f"{'met' if c['target_met'] else 'NOT met'})")
    for rate, c in checks.get("similar_vs_feed_p99", {}).items():
        noisy = "" if c["quiet"] else "; the machine was not quiet: see the warnings"
        print(f"  {rate} req/s: similar items p99 {c['similar_p99_ms']} ms vs feed {c['feed_p99_ms']} "
              f"ms = {c['ratio']}x (target <= {c['target_ratio']:g}x: "
              f"{'met' if c['target_met'] else 'NOT met'}{noisy})")

