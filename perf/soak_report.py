"""The soak test's ending: wait for the consumer, read the store, the dead-letter topic and Redis,
turn everything into checks (perf/soak_checks.py), write soak.json / soak_samples.csv /
soak_windows.csv / soak.png and print the summary."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from perf.harness import figure, write_csv, write_json
from perf.soak_checks import (
    MIB,
    check,
    compare_dead_letters,
    compare_trending,
    compare_users,
    memory_check,
    memory_per_user,
    rss_slope_mib_per_h,
    server_errors,
    split_ambiguous,
    windows,
)

PROCESSES = ("gateway", "features", "triton", "kafka", "redis")


def documented_budget() -> tuple[float | None, str]:
    """The documented Redis memory budget per active user (docs/features.md, "Memory")."""
    from feature_service.store_base import USER_MEMORY_BUDGET_BYTES

    return float(USER_MEMORY_BUDGET_BYTES), "feature_service.store_base.USER_MEMORY_BUDGET_BYTES"


def user_view(features) -> dict | None:
    if features is None:
        return None
    return {"recent": [(e.event_id, e.item_id, e.event_type, e.ts_ms) for e in features.recent],
            "seen": set(features.seen_items), "bought": set(features.bought_items),
            "affinity": dict(features.category_affinity)}


def read_users(store, users: list[str], now_ms: int) -> dict[str, dict | None]:
    return {u: user_view(store.get(u, now_ms)) for u in users}


def stored_ids(views: dict[str, dict | None]) -> set[str]:
    return {e[0] for v in views.values() if v for e in v["recent"]}


def wait_for_store(store, traffic, users: list[str], timeout_s: float) -> dict:
    """Until every accepted event is in the store (the consumer caught up), at most ``timeout_s``."""
    started = time.monotonic()
    while True:
        views = read_users(store, users, int(time.time() * 1000))
        have = stored_ids(views)
        missing = len(set(traffic.accepted) - have)
        if not missing or time.monotonic() - started > timeout_s:
            seconds = round(time.monotonic() - started, 1)
            print(f"  {'caught up' if not missing else f'{missing} accepted events still missing'} "
                  f"after {seconds} s", flush=True)
            return {"caught_up": not missing, "seconds": seconds, "missing": missing}
        time.sleep(1)


def read_dead_letter_keys(bootstrap: str, topic: str, timeout_s: float = 30) -> list[bytes]:
    """Keys of every record of ``topic``, from the beginning of each partition to its end."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not (partitions := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no partitions")
            time.sleep(0.2)
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        keys: list[bytes] = []
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(keys)} records of {topic} in {timeout_s} s")
            for batch in consumer.poll(timeout_ms=200).values():
                keys.extend(r.key for r in batch)
        return keys
    finally:
        consumer.close()


def redis_key_families(port: int, prefix: str, sample: int = 200) -> dict:
    """Keys per family (user features, de-duplication marks, ...) and their memory, estimated from
    MEMORY USAGE of up to ``sample`` keys of each."""
    import redis

    client = redis.Redis(port=port, socket_timeout=5)
    try:
        families: dict[str, list[bytes]] = {}
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            parts = key.decode(errors="replace").split(":")
            family = ":".join(parts[:2] + ([parts[-1]] if parts[1] == "u" else []))
            families.setdefault(family, []).append(key)
        out = {}
        for family, keys in sorted(families.items()):
            sizes = [client.memory_usage(k) or 0 for k in keys[:sample]]
            mean = sum(sizes) / len(sizes) if sizes else 0
            out[family] = {"keys": len(keys), "mean_bytes": round(mean),
                           "est_total_mib": round(mean * len(keys) / MIB, 3)}
        return out
    finally:
        client.close()


def rss_results(samples: list[dict], restarts: list[dict], args: argparse.Namespace) -> list[dict]:
    rows = []
    times = [s["t_s"] for s in samples]
    for name in PROCESSES:
        values = [s.get(f"rss_{name}_mib") for s in samples]
        restart_at = [(r["stop_at_s"], r["ready_at_s"]) for r in restarts if r["service"] == name]
        slope = rss_slope_mib_per_h(times, values, restart_at, warmup_s=args.warmup_s,
                                    settle_s=args.settle_s)
        measured = [v for t, v in zip(times, values, strict=True) if v is not None and t >= args.warmup_s]
        rows.append(check(f"rss_flat_{name}",
                          None if slope is None else slope <= args.max_rss_slope_mib_h,
                          slope_mib_per_h=None if slope is None else round(slope, 1),
                          limit_mib_per_h=args.max_rss_slope_mib_h,
                          rss_min_mib=min(measured, default=None), rss_max_mib=max(measured, default=None),
                          rss_last_mib=measured[-1] if measured else None))
    return rows


def around_restarts(responses, restarts: list[dict], margin_s: float = 10) -> list[dict]:
    """Per restart: the 5xx and unanswered requests from its stop to ``margin_s`` after it was back."""
    out = []
    for r in restarts:
        lo, hi = r["stop_at_s"], r["ready_at_s"] + margin_s
        bad = [x for x in responses if lo <= x.t_s <= hi and (x.status >= 500 or x.status == 0)]
        out.append({**r, "window_s": [lo, hi], "failed": len(bad),
                    "by": dict(Counter(f"{x.endpoint} {x.status}" for x in bad)),
                    "latency_ms_max": round(max((x.latency_ms for x in bad), default=0), 1)})
    return out


def readiness(samples: list[dict]) -> dict:
    down = [s for s in samples if s["readyz_status"] != 200]
    return {"samples": len(samples), "not_ready": len(down),
            "not_ready_at_s": [s["t_s"] for s in down],
            "reasons": dict(Counter(s["readyz_reasons"] or str(s["readyz_status"]) for s in down))}


def end_checks(args: argparse.Namespace, run: dict, store, rules, categories, users: list[str],
               bootstrap: str, topic: str, *, caught_up: dict, alive: dict, baseline_bytes: int,
               used_bytes: int | None, budget: tuple[float | None, str]) -> dict:
    from feature_service.store import create_store

    traffic, garbage = run["traffic"], run["garbage"]
    now_ms = int(time.time() * 1000)
    got = read_users(store, users, now_ms)
    expected_ids, applied_anyway = split_ambiguous(traffic.accepted, traffic.never_accepted,
                                                   stored_ids(got))
    events = {**traffic.never_accepted, **traffic.accepted}
    oracle = create_store("memory", rules, item_categories=categories)
    oracle.apply_many(sorted((events[e] for e in expected_ids), key=lambda e: (e.ts_ms, e.event_id)))
    users_cmp = compare_users(read_users(oracle, users, now_ms), got)
    trending = compare_trending(dict(oracle.trending(10**6, now_ms)), dict(store.trending(10**6, now_ms)))
    dead = compare_dead_letters(garbage.acked, read_dead_letter_keys(bootstrap, f"{topic}.dlq"))
    errors = server_errors(traffic.responses)
    unanswered = [r for r in traffic.responses if r.status == 0]
    bad_gateway = [(why, s) for why, s in traffic.malformed_gateway if not 400 <= s < 500]
    active = len({events[e].user_id for e in expected_ids})
    per_user = memory_per_user(used_bytes or 0, baseline_bytes, active) if used_bytes else None
    checks = [
        check("zero_5xx", errors["count"] == 0, count=errors["count"], by_endpoint=errors["by_endpoint"]),
        check("every_request_answered", not unanswered, unanswered=len(unanswered),
              first=[(round(r.t_s, 1), r.endpoint, r.detail[:120]) for r in unanswered[:10]]),
        check("malformed_requests_get_4xx", not bad_gateway, sent=len(traffic.malformed_gateway),
              not_4xx=bad_gateway[:20]),
        check("valid_events_accepted", not traffic.never_accepted and not traffic.rejected_valid,
              accepted=len(traffic.accepted), never_accepted=len(traffic.never_accepted),
              rejected_4xx=len(traffic.rejected_valid),
              rejected_first=list(traffic.rejected_valid.items())[:10], resends=traffic.retries),
        check("consumer_caught_up", caught_up["caught_up"], **caught_up),
        check("every_valid_event_applied_exactly_once",
              not users_cmp["users_mismatched"] and not trending["items_off"],
              events_checked=len(expected_ids), never_acked_but_applied=len(applied_anyway),
              **{k: v for k, v in users_cmp.items() if k != "mismatched"},
              trending_items=trending["items"], trending_items_off=trending["items_off"]),
        check("dead_letters_exactly_the_injected_garbage",
              not dead["n_missing"] and not dead["n_unexpected"] and not garbage.unacked,
              never_acked_by_kafka=len(garbage.unacked), resends=garbage.resends, **dead),
        *rss_results(run["samples"], run["restarts"], args),
        check("processes_alive_at_end", all(alive.values()), **alive),
        memory_check(per_user, *budget),
    ]
    statuses = Counter(f"{r.endpoint} {r.status}" for r in traffic.responses)
    return {
        "checks": checks,
        "ok": all(c["status"] != "fail" for c in checks),
        "restarts": around_restarts(traffic.responses, run["restarts"]),
        "server_errors": errors,
        "responses": dict(sorted(statuses.items())),
        "degraded_note": "GET answers from the fallback are 200s (degraded), not errors",
        "store_mismatches": users_cmp["mismatched"],
        "trending_first_off": trending["first_off"],
        "readiness": readiness(run["samples"]),
        "redis_memory": {"baseline_bytes": baseline_bytes, "used_bytes": used_bytes,
                         "active_users": active, "per_user_bytes": per_user},
        "gateway_kafka_timeout_ms": args.gateway_kafka_timeout_ms or _gateway_kafka_timeout_ms(),
    }


def _gateway_kafka_timeout_ms() -> int:
    from gateway.config import GatewaySettings

    return GatewaySettings().kafka_timeout_ms


def write_outputs(out: Path, report: dict, run: dict) -> None:
    samples, restarts = run["samples"], run["restarts"]
    rows = windows(run["traffic"].responses)
    write_json(out / "soak.json", report)
    columns = list(samples[0]) if samples else ["t_s"]
    write_csv(out / "soak_samples.csv", columns, samples)
    write_csv(out / "soak_windows.csv", list(rows[0]) if rows else ["t_s"], rows)
    if samples:
        plot(out / "soak.png", samples, rows, restarts)


def plot(path: Path, samples: list[dict], rows: list[dict], restarts: list[dict]) -> None:
    t = [s["t_s"] for s in samples]
    with figure(path, 4, (22, 4.8)) as (fig, axes):
        for name in PROCESSES:
            axes[0].plot(t, [s.get(f"rss_{name}_mib") for s in samples], label=name)
        axes[0].set(title="RSS per process (MiB)", xlabel="s", yscale="log")
        axes[1].plot(t, [s.get("redis_used_memory_mib") for s in samples], color="tab:red")
        axes[1].set(title="Redis used_memory (MiB)", xlabel="s")
        wt = [r["t_s"] for r in rows]
        axes[2].plot(wt, [r["get_p50_ms"] for r in rows], label="p50")
        axes[2].plot(wt, [r["get_p99_ms"] for r in rows], label="p99")
        axes[2].set(title="GET recommendations latency per 10 s (ms)", xlabel="s", yscale="log")
        for cls, color in (("2xx", "tab:green"), ("4xx", "tab:orange"), ("5xx", "tab:red"),
                           ("none", "black")):
            axes[3].plot(wt, [r[f"n_{cls}"] / 10 for r in rows], label=cls, color=color)
        axes[3].set(title="responses per s by class", xlabel="s", yscale="symlog")
        for ax in axes:
            for r in restarts:
                ax.axvspan(r["stop_at_s"], r["ready_at_s"], color="grey", alpha=0.25)
                ax.annotate(f"{r['service']} restart", (r["stop_at_s"], 0.97),
                            xycoords=("data", "axes fraction"), fontsize=8, va="top")
            ax.legend(fontsize=8) if ax.get_legend_handles_labels()[0] else None
        fig.suptitle("soak: grey = service down (stop to ready)")


def print_summary(report: dict, out: Path) -> int:
    print("\nsoak checks:")
    for c in report["checks"]:
        numbers = {k: v for k, v in c.items()
                   if k not in ("name", "status") and not isinstance(v, list | dict)}
        print(f"  {c['status'].upper():4}  {c['name']}: "
              + ", ".join(f"{k}={v}" for k, v in numbers.items()))
    for r in report["restarts"]:
        print(f"  {r['service']} restart at {r['stop_at_s']} s: unavailable {r['unavailable_s']} s; "
              f"{r['failed']} failed requests around it {r['by']}")
    errors = report["server_errors"]
    if errors["count"]:
        print(f"  5xx by endpoint: {errors['by_status']}; first {errors['listed'][:3]}")
    print(f"wrote {out}/soak.json, soak_samples.csv, soak_windows.csv, soak.png")
    failed = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    if failed:
        print("FAILED: " + ", ".join(failed), file=__import__("sys").stderr)
    return 1 if failed else 0
