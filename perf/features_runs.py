"""The feature benchmark's runs against one Kafka broker and one Redis: pre-fill, throughput per
store, raw consume loops, cProfile, and open-loop freshness at a steady produce rate."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from perf.features_consumers import raw_stages, run_consumer, run_raw
from perf.features_workload import make_events, new_producer


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, bootstrap: str, redis_url: str) -> None:
        self.args = args
        self.tmp = tmp
        self.bootstrap = bootstrap
        self.redis_url = redis_url
        self.rng = np.random.default_rng(args.seed)
        self.producer = new_producer(bootstrap)
        self._runs = 0

    def close(self) -> None:
        self.producer.close(timeout=10)

    def new_topic(self, label: str) -> str:
        from feature_service.topics import ensure_topics

        self._runs += 1
        topic = f"bench-{label}-{self._runs}"
        ensure_topics(self.bootstrap, [topic, f"{topic}.dlq"], self.args.partitions)
        self.producer.partitions_for(topic)  # metadata now, not inside the timed sends
        return topic

    def spec(self, store: str, topic: str, expected: int, tag: str = "", **extra) -> dict:
        tag = f"{topic}-{store}{tag}"
        return {"bootstrap": self.bootstrap, "topic": topic, "group": f"group-{tag}", "store": store,
                "redis_url": self.redis_url, "prefix": f"bench:{tag}", "partitions": self.args.partitions,
                "items": self.args.items, "seed": self.args.seed, "expected": expected,
                "result": str(self.tmp / f"{tag}.json"), **extra}

    def produce_open_loop(self, topic: str, events: list[tuple[bytes, bytes]], rate: float) -> dict:
        """Send i at t0 + i/rate (never waiting for an ack); CreateTime is stamped at send().
        Also times each send's acknowledgement (acks=all: appended, and below the high watermark,
        so fetchable) in the producer's I/O thread."""
        send, n = self.producer.send, len(events)
        lag, sent_at, acked_at = np.empty(n), np.empty(n), np.full(n, np.nan)

        def on_ack(i: int, _metadata) -> None:  # kafka-python passes the bound args first
            acked_at[i] = time.perf_counter()

        wall0 = time.time()
        t0 = time.perf_counter()
        for i, (key, template) in enumerate(events):
            target = t0 + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_at[i] = now = time.perf_counter()
            lag[i] = now - target
            send(topic, key=key, value=template % int(time.time() * 1000)).add_callback(on_ack, i)
        sent_s = time.perf_counter() - t0
        self.producer.flush(timeout=30)
        return {"wall0_ms": wall0 * 1000, "sent_s": sent_s, "send_lag_ms": lag * 1000,
                "ack_ms": (acked_at - sent_at) * 1000, "offsets_s": sent_at - t0}

    def freshness(self, store: str, rate: int) -> dict:
        a = self.args
        n = int(rate * a.duration_s)
        events = make_events(n, a.users, a.items, self.rng)
        topic = self.new_topic(f"fresh-{store}-{rate}")
        spec = self.spec(store, topic, n, save_latencies=True)
        res = run_consumer(spec, wait_ready=True, timeout_s=60,
                           start_hook=lambda: self.produce_open_loop(topic, events, rate))
        sent = res["hook"]
        if sent is None:
            return {"store": store, "target_rate": rate, "events": n, "applied": 0, "achieved_rate": 0,
                    "problems": _problems(res, n), "ok": False}
        acks = sent["ack_ms"][sent["offsets_s"] >= a.warmup_s]
        row = {"store": store, "target_rate": rate, "events": n, "applied": res.get("applied", 0),
               "achieved_rate": round((n - 1) / sent["sent_s"], 1),
               "send_lag_p99_ms": round(float(np.percentile(sent["send_lag_ms"], 99)), 2),
               "ack_p50_ms": round(float(np.nanpercentile(acks, 50)), 2),
               "ack_p99_ms": round(float(np.nanpercentile(acks, 99)), 2)}
        lat = res.get("latencies")
        if lat is not None and lat.shape[1]:
            lat = lat[:, np.argsort(lat[0], kind="stable")]  # in send order
            keep = lat[1][lat[0] >= sent["wall0_ms"] + a.warmup_s * 1000]
            p50, p95, p99 = np.percentile(keep, [50, 95, 99])
            quarter = max(1, len(keep) // 4)
            first_q, last_q = np.median(keep[:quarter]), np.median(keep[-quarter:])
            row.update(measured=len(keep), p50_ms=round(float(p50), 2), p95_ms=round(float(p95), 2),
                       p99_ms=round(float(p99), 2), max_ms=round(float(keep.max()), 2),
                       consumer_cpu_util=_cpu_util(res),
                       # the consumer fell behind: a backlog that grew over the run
                       falling_behind=bool(last_q > 2 * first_q + 50))
        row["problems"] = _problems(res, n)
        row["ok"] = not row["problems"]
        return row

    def prefill(self, n: int) -> tuple[str, dict]:
        """A topic with ``n`` events, produced as fast as the gateway's producer settings allow."""
        events = make_events(n, self.args.users, self.args.items, self.rng)
        topic = self.new_topic("throughput")
        send = self.producer.send
        t0 = time.perf_counter()
        for key, template in tqdm(events, desc=f"pre-fill {n:,} events", unit="ev", mininterval=1):
            send(topic, key=key, value=template % int(time.time() * 1000))
        self.producer.flush(timeout=60)
        seconds = time.perf_counter() - t0
        return topic, {"events": n, "seconds": round(seconds, 2), "events_per_s": round(n / seconds)}

    def redis_stats(self) -> dict:
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            return {"cmd": client.info("commandstats"), "cpu": client.info("cpu")}
        finally:
            client.close()

    def redis_delta(self, before: dict) -> dict:
        """Redis server time per EVALSHA (one event) and its CPU use during a run."""
        after = self.redis_stats()
        cmd0 = before["cmd"].get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        cmd1 = after["cmd"].get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        calls, usec = cmd1["calls"] - cmd0["calls"], cmd1["usec"] - cmd0["usec"]
        cpu = sum(after["cpu"][k] - before["cpu"][k] for k in ("used_cpu_sys", "used_cpu_user"))
        return {"evalsha_calls": calls, "usec_per_evalsha": round(usec / max(calls, 1), 1),
                "server_cpu_s": round(cpu, 2)}

    def throughput(self, store: str, topic: str, n: int) -> dict:
        spec = self.spec(store, topic, n)
        before = self.redis_stats() if store == "redis" else None
        res = run_consumer(spec, wait_ready=False, timeout_s=max(120.0, n / 1000))
        row = {"what": "FeatureConsumer", "client": "kafka-python", "store": store, "stage": "full",
               "events": n, "applied": res.get("applied", 0)}
        if "last_wall" in res:
            wall = res["last_wall"] - res["first_wall"]
            row.update(seconds=round(wall, 2), events_per_s=round((n - 1) / wall), cpu_util=_cpu_util(res),
                       cpu_us_per_event=round((res["last_cpu"] - res["first_cpu"]) / (n - 1) * 1e6, 1))
        if store == "redis":
            row["redis_server"] = self.redis_delta(before)
        row["problems"] = _problems(res, n)
        row["ok"] = not row["problems"]
        return row

    def raw(self, client: str, topic: str, n: int) -> list[dict]:
        spec = {"client": client, "bootstrap": self.bootstrap, "topic": topic, "expected": n,
                "items": self.args.items, "seed": self.args.seed, "stages": self.args.raw_stages,
                "result": str(self.tmp / f"raw-{client}.json")}
        stages = raw_stages(client, self.args.raw_stages)
        res = run_raw(spec, timeout_s=60 + len(stages) * max(60.0, n / 2000))
        rows = []
        for stage in stages:
            r = res.get(stage, {})
            problems = [res["error"]] if "error" in res else []
            rows.append({"what": "raw loop", "client": client, "store": "memory" if stage == "apply" else "-",
                         "stage": stage, "events": n, "applied": r.get("events", 0),
                         "seconds": r.get("seconds"), "events_per_s": r.get("events_per_s"),
                         "cpu_util": r.get("cpu_util"), "cpu_us_per_event": r.get("cpu_us_per_event"),
                         "problems": problems, "ok": not problems})
        return rows

    def profile(self, store: str, topic: str, n: int) -> str:
        """cProfile of a FeatureConsumer over the first ``n`` events of the pre-filled topic."""
        path = self.args.out / f"features_profile_{store}.txt"
        res = run_consumer(self.spec(store, topic, n, profile=str(path), tag="profile"), wait_ready=False,
                           timeout_s=max(120.0, n / 500))
        if res.get("error") or not path.exists():
            return f"profile failed: {res.get('error')}"
        return str(path)


def _cpu_util(res: dict) -> float | None:
    if "last_cpu" not in res:
        return None
    return round((res["last_cpu"] - res["first_cpu"]) / (res["last_wall"] - res["first_wall"]), 2)


def _problems(res: dict, expected: int) -> list[str]:
    problems = []
    if res.get("error"):
        problems.append(f"consumer error: {res['error']}")
    if res.get("applied", 0) != expected:
        problems.append(f"applied {res.get('applied', 0)} of {expected}")
    for key in ("duplicates", "dead_lettered"):
        if res.get(key):
            problems.append(f"{key}: {res[key]}")
    if res.get("timed_out"):
        problems.append("timed out")
    return problems
