"""Gateway under load: open-loop HTTP load at fixed rates, gateway vs Triton direct.

    PYTHONPATH=. .venv/bin/python perf/bench_gateway.py --model-repository model_repository \\
        --artifacts build --out perf/results
    PYTHONPATH=. .venv/bin/python perf/bench_gateway.py --quick      # ~1-2 min smoke run

1. Uses the exported repository and user snapshot given by ``--model-repository`` /
   ``--artifacts`` (``make train`` or ``make demo`` writes ``model_repository/`` and ``build/``),
   or trains briefly and exports into a temporary folder (``python -m export`` in a subprocess, so
   torch stays out of the load generator's process).
2. Starts Triton, Kafka and the gateway (in-process feature store seeded from the snapshot,
   embedded consumer) unless ``--gateway-url`` / ``--triton-grpc-url`` name running ones.
3. For each rate in ``--rates``: one gateway run (``GET /v1/users/{user}/recommendations?k=10``)
   and one Triton-direct run (the gateway's model, ``recommend_fused`` by default, over
   ``tritonclient.grpc.aio``, with the inputs the gateway would build for the same user), at the
   same rate with the same sequence of random snapshot users.

Open loop: request i is due at ``t0 + i / rate`` (or Poisson arrivals) and is sent then whether or
not earlier ones have answered, so a slow server cannot slow the generator down (no coordinated
omission). Latency is measured from the *scheduled* time to the response; the latency from the
actual send and the send lag (actual - scheduled: the generator's own delay) are reported too. The
first ``--warmup-s`` seconds of each run are discarded. Errors: non-200 responses, timeouts
(``--timeout-s``), connection errors, bodies that are not a recommendation list; latency
percentiles are over the successful (200) responses. Responses flagged ``degraded`` (Triton failed,
popular items were served) are counted separately: they are fast and not the path under test.

Per run the script also records CPU time (cores busy) of the generator, the gateway, Triton (with
its python-backend stubs), Kafka and the rest of the machine (from /proc; services it started
only), Triton's own per-request time (inference statistics) and, best effort, the gateway's
in-app time from its ``/metrics`` histogram.

Writes under ``--out``: ``gateway_load.csv`` (one row per target and rate), ``gateway_load.json``
(config, environment, runs, target checks), ``gateway_load.png`` (latency percentiles vs rate,
gateway vs Triton direct) and the service logs in ``gateway_load_logs/``. Exits 1 if a run got no
successful response or the gateway's sanity request failed; missed latency targets are reported,
not failures. Every service it started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import signature as sig  # noqa: E402
from features.sequence import encode_history, exclusion_indices, pad_exclusions  # noqa: E402
from gateway.served_model import load_served_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT_FILE = "user_histories.json"  # export.pipeline.SNAPSHOT_FILE (importing it loads torch)
EVENTS_TOPIC = "user-events"
TARGETS = ("gateway", "triton")
TARGET_RATE = 200.0  # req/s at which the p99 target applies
TARGET_P99_MS = 15.0
TARGET_P50_RATIO = 2.0  # gateway p50 / Triton-direct p50
MAX_ERROR_RATE = 0.01  # a point with more errors is overloaded: its percentiles are survivors'
QUIET_OTHER_CORES = 0.25  # CPU of processes outside the benchmark above this: a noisy machine
MAX_SEND_LAG_P99_MS = 5.0  # the generator's own delay above this: it could not keep the schedule
HISTORY_ITEMS = 100  # the feature store's recent events per user (FeatureRules.history_items)
RECOMMENDATIONS_ROUTE = "/v1/users/{user_id}/recommendations"

# Outcome codes besides HTTP statuses (Triton-direct successes are 200).
TIMEOUT, CONNECTION_ERROR, BAD_BODY = -1, -2, -3
CODE_NAMES = {TIMEOUT: "timeout", CONNECTION_ERROR: "exception", BAD_BODY: "bad_body"}

CSV_COLUMNS = [
    "target", "rate", "arrivals", "duration_s", "requests", "ok", "errors", "error_rate",
    "timeouts", "degraded", "achieved_rps", "sent_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms",
    "mean_ms", "p50_from_send_ms", "p99_from_send_ms", "send_lag_p99_ms", "send_lag_max_ms",
    "triton_server_ms", "gateway_app_ms", "gateway_triton_call_ms", "cpu_generator", "cpu_gateway",
    "cpu_triton", "cpu_kafka", "cpu_other", "load_avg_1m",
]


# --- request inputs ----------------------------------------------------------------------------


def triton_inputs(items: Sequence[str], catalog, sequence_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(HISTORY [1, L], EXCLUDE [1, pow2]) the gateway builds for a user whose store was seeded
    with ``items``: the store keeps the last HISTORY_ITEMS events, and every item as seen."""
    history = encode_history(list(items[-HISTORY_ITEMS:]), catalog, sequence_length)
    exclude = exclusion_indices(set(items), catalog)
    return history.reshape(1, -1).astype(np.int64), pad_exclusions(exclude).reshape(1, -1)


def make_schedule(rate: float, duration_s: float, warmup_s: float, users: Sequence[str],
                  seed: int, arrivals: str) -> tuple[np.ndarray, list[str]]:
    """Send offsets (seconds after t0) covering warm-up + duration, and a random user for each."""
    rng = np.random.default_rng(seed)
    total = warmup_s + duration_s
    if arrivals == "poisson":
        gaps = rng.exponential(1 / rate, size=int(total * rate * 1.5) + 100)
        offsets = np.cumsum(gaps) - gaps[0]
        offsets = offsets[offsets < total]
    else:
        offsets = np.arange(int(round(total * rate))) / rate
    picks = rng.integers(0, len(users), size=len(offsets))
    return offsets, [users[i] for i in picks]


# --- CPU accounting from /proc -----------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime + stime in seconds) of a live process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # comm may contain spaces and parentheses
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (Triton's python-backend stubs are its children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat:
                children.setdefault(stat[0], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle (user + nice + system + irq + softirq + steal)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    guest = sum(values[8:10]) if len(values) > 9 else 0  # already counted in user/nice
    return (sum(values) - idle - guest) / CLK_TCK


@dataclass
class CpuProbe:
    """CPU seconds of named process trees (pids resolved before a run: reading a dozen
    /proc/<pid>/stat files costs ~0.1 ms, scanning /proc several ms)."""

    trees: dict[str, list[int]]

    @classmethod
    def of(cls, roots: dict[str, int | None]) -> CpuProbe:
        return cls({name: process_tree(pid) for name, pid in roots.items() if pid})

    def read(self) -> dict[str, float]:
        out = {name: sum(s[1] for p in pids if (s := _proc_stat(p))) for name, pids in self.trees.items()}
        out["generator"] = time.process_time()
        out["machine"] = machine_busy_s()
        out["wall"] = time.perf_counter()
        return out

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Cores busy per process tree over the interval; ``other`` = the rest of the machine."""
        wall = after["wall"] - before["wall"]
        busy = {k: (after[k] - before[k]) / wall for k in before if k not in ("wall",)}
        known = sum(v for k, v in busy.items() if k != "machine")
        busy["other"] = max(0.0, busy.pop("machine") - known)
        return {k: round(v, 3) for k, v in busy.items()}


# --- targets -----------------------------------------------------------------------------------


class GatewayTarget:
    """``GET /v1/users/{user}/recommendations?k=K`` over HTTP/1.1 keep-alive."""

    name = "gateway"

    def __init__(self, url: str, k: int, timeout_s: float, max_connections: int, client: str) -> None:
        self.url, self.k, self.timeout_s = url.rstrip("/"), k, timeout_s
        self.max_connections, self.client = max_connections, client
        self._urls: dict[str, object] = {}
        self._session = None

    async def open(self) -> None:
        if self.client == "aiohttp":
            import aiohttp
            import yarl

            self._yarl = yarl
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, force_close=False),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
            self._timeouts: tuple[type[BaseException], ...] = (asyncio.TimeoutError,)
            self._conn_errors: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError)
        else:
            import httpx

            limits = httpx.Limits(max_connections=self.max_connections,
                                  max_keepalive_connections=self.max_connections)
            self._session = httpx.AsyncClient(limits=limits, timeout=self.timeout_s)
            self._timeouts = (httpx.TimeoutException, asyncio.TimeoutError)
            self._conn_errors = (httpx.HTTPError, OSError)

    def _url(self, user: str):
        url = self._urls.get(user)
        if url is None:
            text = f"{self.url}/v1/users/{user}/recommendations?k={self.k}"
            url = self._urls[user] = self._yarl.URL(text, encoded=True) if self.client == "aiohttp" else text
        return url

    async def send(self, user: str) -> tuple[int, bool]:
        """(HTTP status or an error code, degraded flag)."""
        try:
            if self.client == "aiohttp":
                async with self._session.get(self._url(user)) as response:
                    status, body = response.status, await response.read()
            else:
                response = await self._session.get(self._url(user))
                status, body = response.status_code, response.content
        except self._timeouts:
            return TIMEOUT, False
        except self._conn_errors:
            return CONNECTION_ERROR, False
        if status != 200:
            return status, False
        try:
            payload = json.loads(body)
            if not isinstance(payload.get("items"), list):
                return BAD_BODY, False
            return 200, bool(payload.get("degraded"))
        except (ValueError, AttributeError):
            return BAD_BODY, False

    async def close(self) -> None:
        if self._session is not None:
            await (self._session.close() if self.client == "aiohttp" else self._session.aclose())


class TritonTarget:
    """The gateway's Triton call for the same user, pre-encoded: one ``infer`` over gRPC aio."""

    name = "triton"

    def __init__(self, url: str, model: str, inputs: dict[str, tuple[np.ndarray, np.ndarray]],
                 k: int, timeout_s: float) -> None:
        self.url, self.model, self.inputs, self.k, self.timeout_s = url, model, inputs, k, timeout_s
        self._client = None

    async def open(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(self.url)
        self._k = np.array([[self.k]], dtype=np.int32)

    async def send(self, user: str) -> tuple[int, bool]:
        from tritonclient.utils import InferenceServerException

        g = self._grpc
        history, exclude = self.inputs[user]
        inputs = [g.InferInput(sig.HISTORY, list(history.shape), "INT64"),
                  g.InferInput(sig.EXCLUDE, list(exclude.shape), "INT64"),
                  g.InferInput(sig.K, [1, 1], "INT32")]
        inputs[0].set_data_from_numpy(history)
        inputs[1].set_data_from_numpy(exclude)
        inputs[2].set_data_from_numpy(self._k)
        outputs = [g.InferRequestedOutput(sig.ITEM_INDEX), g.InferRequestedOutput(sig.SCORE)]
        try:
            result = await self._client.infer(self.model, inputs, outputs=outputs,
                                              client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            text = f"{exc.status()} {exc.message()}".lower()
            return (TIMEOUT if "deadline" in text else CONNECTION_ERROR), False
        indices = result.as_numpy(sig.ITEM_INDEX)
        return (200 if indices is not None and indices.shape[0] == 1 else BAD_BODY), False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


# --- server-side numbers (best effort) ---------------------------------------------------------


async def triton_stats(url: str, model: str) -> dict | None:
    """Triton's cumulative success count and time for ``model`` (None if unavailable)."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = (await client.get_inference_statistics(model, as_json=True))["model_stats"]
        s = stats[0]["inference_stats"]
        return {"count": int(s["success"].get("count", 0)), "ns": int(s["success"].get("ns", 0)),
                "queue_ns": int(s["queue"].get("ns", 0)),
                "compute_ns": int(s["compute_infer"].get("ns", 0))}
    except Exception:  # noqa: BLE001 - statistics are a nice-to-have
        return None
    finally:
        await client.close()


def per_request_ms(before: dict | None, after: dict | None, key: str = "ns") -> float | None:
    if not before or not after or after["count"] <= before["count"]:
        return None
    return round((after[key] - before[key]) / (after["count"] - before["count"]) / 1e6, 3)


# Histogram sums and counts; the route label itself contains braces ("/v1/users/{user_id}/..."),
# so labels are matched up to the last "} ".
_METRIC = re.compile(r'^(gateway_\w+?)_(sum|count)(?:\{(.*)\})? (\S+)$', re.M)
GATEWAY_HISTOGRAMS = {
    # the app behind uvicorn (the metrics middleware), recommendations answered with 200
    "app": ("gateway_request_seconds", (f'route="{RECOMMENDATIONS_ROUTE}"', 'status="200"')),
    # the gateway's Triton call as the gateway sees it (absent in older gateways)
    "triton_call": ("gateway_triton_seconds", ()),
}


def gateway_histograms(url: str) -> dict[str, dict] | None:
    """Cumulative ``{"count", "ns"}`` of the gateway's own latency histograms (GATEWAY_HISTOGRAMS)
    from ``/metrics``; None if unavailable. Best effort: metric names are the gateway's business."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    out = {key: {"count": 0.0, "ns": 0.0} for key in GATEWAY_HISTOGRAMS}
    for name, kind, labels, value in _METRIC.findall(text):
        for key, (metric, required) in GATEWAY_HISTOGRAMS.items():
            if name == metric and all(r in (labels or "") for r in required):
                out[key]["count" if kind == "count" else "ns"] += float(value) * (
                    1 if kind == "count" else 1e9)
    return out


# --- one open-loop run -------------------------------------------------------------------------


@dataclass
class RunSpec:
    target: str
    rate: float
    duration_s: float
    warmup_s: float
    arrivals: str
    offsets: np.ndarray
    users: list[str]


async def open_loop(target, spec: RunSpec, probe: CpuProbe, progress: bool) -> dict:
    """Send ``spec.users[i]`` at ``t0 + spec.offsets[i]``; return per-request arrays and the CPU
    readings at the start and end of the measured window."""
    n = len(spec.offsets)
    sent, done = np.full(n, np.nan), np.full(n, np.nan)
    codes, degraded = np.zeros(n, np.int16), np.zeros(n, bool)

    async def one(i: int, user: str) -> None:
        sent[i] = time.perf_counter()
        try:
            code, flag = await target.send(user)
        except Exception:  # noqa: BLE001 - anything unexpected is an error, not a crash
            code, flag = CONNECTION_ERROR, False
        done[i] = time.perf_counter()
        codes[i], degraded[i] = code, flag

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"{spec.target:>7} {spec.rate:g} req/s", unit="req",
                   mininterval=1.0, leave=False)
    first_measured = int(np.searchsorted(spec.offsets, spec.warmup_s))
    cpu_start = None
    tasks = []
    t0 = time.perf_counter() + 0.05
    behind = 0
    for i, (offset, user) in enumerate(zip(spec.offsets.tolist(), spec.users, strict=True)):
        if i == first_measured:
            cpu_start = probe.read()
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            behind = 0
            await asyncio.sleep(delay)
        else:
            behind += 1
            if behind % 64 == 0:
                await asyncio.sleep(0)  # let responses in while catching up
        tasks.append(asyncio.create_task(one(i, user)))
        if bar is not None and i % 50 == 49:
            bar.update(50)
    # The window ends when the last request is due (the generator is open-loop: what is still in
    # flight belongs to the load of the window).
    await asyncio.sleep(max(0.0, t0 + spec.warmup_s + spec.duration_s - time.perf_counter()))
    cpu_end = probe.read()
    await asyncio.gather(*tasks)
    if bar is not None:
        bar.close()
    scheduled = t0 + spec.offsets
    return {"scheduled": scheduled, "sent": sent, "done": done, "codes": codes,
            "degraded": degraded, "window_start": t0 + spec.warmup_s,
            "cpu": CpuProbe.cores(cpu_start or cpu_end, cpu_end)}


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def summarize_run(spec: RunSpec, raw: dict) -> dict:
    """The row of one run: counts, rates and latency percentiles of the measured window."""
    measured = raw["scheduled"] >= raw["window_start"]
    codes = raw["codes"][measured]
    ok = codes == 200
    scheduled, sent, done = (raw[k][measured] for k in ("scheduled", "sent", "done"))
    latency = (done - scheduled)[ok] * 1000
    from_send = (done - sent)[ok] * 1000
    lag = (sent - scheduled) * 1000
    window = (float(done[ok].max()) - raw["window_start"]) if ok.any() else float("nan")
    span = float(sent.max() - sent.min()) if len(sent) > 1 else float("nan")
    errors = Counter(CODE_NAMES.get(int(c), f"http_{int(c)}") for c in codes[~ok])
    requests = int(measured.sum())
    return {
        "target": spec.target, "rate": spec.rate, "arrivals": spec.arrivals,
        "duration_s": spec.duration_s, "requests": requests, "ok": int(ok.sum()),
        "errors": int((~ok).sum()),
        "error_rate": round(float((~ok).sum()) / requests, 5) if requests else None,
        "timeouts": errors.get("timeout", 0), "error_kinds": dict(errors),
        "degraded": int((raw["degraded"][measured] & ok).sum()),
        "achieved_rps": round(ok.sum() / window, 1) if window > 0 else None,
        "sent_rps": round((len(sent) - 1) / span, 1) if span > 0 else None,
        "p50_ms": _pct(latency, 50), "p95_ms": _pct(latency, 95), "p99_ms": _pct(latency, 99),
        "max_ms": round(float(latency.max()), 3) if len(latency) else None,
        "mean_ms": round(float(latency.mean()), 3) if len(latency) else None,
        "p50_from_send_ms": _pct(from_send, 50), "p99_from_send_ms": _pct(from_send, 99),
        "send_lag_p99_ms": _pct(lag, 99),
        "send_lag_max_ms": round(float(lag.max()), 3) if len(lag) else None,
        **{f"cpu_{k}": raw["cpu"].get(k) for k in ("generator", "gateway", "triton", "kafka", "other")},
    }


async def measure(target, spec: RunSpec, probe: CpuProbe, triton_url: str | None,
                  triton_model: str, gateway_url: str | None, progress: bool) -> dict:
    """One run plus the server-side numbers around it."""
    t_before = await triton_stats(triton_url, triton_model) if triton_url else None
    g_before = await asyncio.to_thread(gateway_histograms, gateway_url) if gateway_url else None
    await target.open()
    try:
        raw = await open_loop(target, spec, probe, progress)
    finally:
        await target.close()
    t_after = await triton_stats(triton_url, triton_model) if triton_url else None
    g_after = await asyncio.to_thread(gateway_histograms, gateway_url) if gateway_url else None
    row = summarize_run(spec, raw)
    # Whole run (warm-up included): these are means per request, not percentiles.
    row["triton_server_ms"] = per_request_ms(t_before, t_after)
    row["triton_queue_ms"] = per_request_ms(t_before, t_after, "queue_ns")
    row["triton_compute_ms"] = per_request_ms(t_before, t_after, "compute_ns")
    for key in GATEWAY_HISTOGRAMS:
        row[f"gateway_{key}_ms"] = (per_request_ms(g_before[key], g_after[key])
                                    if g_before and g_after else None)
    row["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return row


# --- services ----------------------------------------------------------------------------------


@dataclass
class Stack:
    gateway_url: str | None
    triton_grpc_url: str | None
    pids: dict[str, int | None]
    started: dict[str, float]  # service -> seconds to ready (the ones this script started)


def export_fresh(work: Path, epochs: int, log_dir: Path) -> tuple[Path, Path]:
    """Train + export ML-100K into ``work`` in a subprocess (torch stays out of this process)."""
    repository, artifacts = work / "model_repository", work / "artifacts"
    log_path = log_dir / "export.log"
    argv = [sys.executable, "-m", "export", "--dataset", "ml-100k", "--repository", str(repository),
            "--artifacts", str(artifacts), "--epochs", str(epochs), "--no-baselines"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    print(f"training {epochs} epoch(s) and exporting into {work} (log {log_path}) ...", flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"export failed (exit {proc.returncode}), see {log_path}")
    print(f"  exported in {time.perf_counter() - started:.0f} s", flush=True)
    return repository, artifacts


def _pid(service) -> int | None:
    # The stack helpers keep their ManagedProcess private; the pid is only for CPU accounting.
    process = getattr(service, "_process", None)
    return getattr(process, "pid", None)


def start_stack(args: argparse.Namespace, repository: Path, histories: Path,
                stack: contextlib.ExitStack, work: Path, log_dir: Path) -> Stack:
    from stack.gateway import GatewayProcess
    from stack.kafka import KafkaBroker
    from stack.triton import TritonServer

    pids: dict[str, int | None] = {}
    started: dict[str, float] = {}
    triton_url = args.triton_grpc_url
    start_gateway = args.gateway_url is None and "gateway" in args.targets
    if triton_url is None and (start_gateway or "triton" in args.targets):
        print("starting Triton ...", flush=True)
        triton = stack.enter_context(TritonServer(repository, log_path=log_dir / "tritonserver.log"))
        triton_url, pids["triton"], started["triton"] = triton.grpc_url, _pid(triton), triton.ready_after_s
    gateway_url = args.gateway_url
    if start_gateway:
        print("starting Kafka ...", flush=True)
        kafka = stack.enter_context(KafkaBroker(work / "kafka"))
        kafka.create_topics([EVENTS_TOPIC, f"{EVENTS_TOPIC}.dlq"], partitions=3)
        pids["kafka"], started["kafka"] = _pid(kafka), kafka.ready_after_s
        settings = {
            "triton_grpc_url": triton_url,
            "triton_model": args.triton_model,
            "kafka_bootstrap_servers": kafka.bootstrap_servers,
            "events_topic": EVENTS_TOPIC,
            "model_repository": str(repository),
            "snapshot_path": str(histories),
            "store": "memory",
            "embedded_consumer": "true",
        }
        print("starting the gateway ...", flush=True)
        gateway = stack.enter_context(GatewayProcess(settings, log_path=log_dir / "gateway.log"))
        gateway_url, pids["gateway"], started["gateway"] = gateway.url, _pid(gateway), gateway.ready_after_s
    return Stack(gateway_url, triton_url, pids, {k: round(v, 1) for k, v in started.items() if v})


def sanity_check(gateway_url: str, user: str, k: int) -> str | None:
    """One request for a known user must be a model answer with k items."""
    try:
        with urllib.request.urlopen(f"{gateway_url}/v1/users/{user}/recommendations?k={k}",
                                    timeout=10) as response:
            body = json.load(response)
    except OSError as exc:
        return f"gateway sanity request failed: {exc}"
    if body.get("degraded") or body.get("source") != "model" or len(body.get("items", [])) != k:
        return (f"gateway sanity request for user {user}: source {body.get('source')}, degraded "
                f"{body.get('degraded')}, {len(body.get('items', []))} items (expected a model "
                f"answer with {k})")
    return None


# --- report ------------------------------------------------------------------------------------


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
    return checks


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


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_ratio, ax_rate) = plt.subplots(1, 3, figsize=(16, 4.8))
    styles = {"gateway": ("tab:blue", "-", "gateway (HTTP)"),
              "triton": ("tab:orange", "--", "Triton direct (gRPC)")}
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
        ax_rate.bar([x + (-0.02 if target == "gateway" else 0.02) * max(rates) for x in rates],
                    [100 * (r["error_rate"] or 0) for r in mine], width=0.03 * max(rates),
                    color=color, alpha=0.3, label=f"{label} errors (%)")
    ax_lat.axhline(TARGET_P99_MS, color="grey", lw=0.8, ls=":")
    ax_lat.annotate(f"p99 target {TARGET_P99_MS:g} ms @ {TARGET_RATE:g} req/s",
                    (0.02, TARGET_P99_MS), xycoords=("axes fraction", "data"), fontsize=8,
                    va="bottom", color="grey")
    ax_lat.set(xlabel="offered load (req/s)", ylabel="latency from scheduled send (ms)",
               yscale="log", title=f"latency percentiles vs rate (red ring: > {MAX_ERROR_RATE:.0%} errors)")
    ax_lat.legend(fontsize=7, ncol=2, loc="upper left")
    checks = target_checks(rows).get("gateway_vs_triton_p50", {})
    if checks:
        rates = [float(r) for r in checks]
        ax_ratio.plot(rates, [c["ratio"] for c in checks.values()], marker="o", color="tab:green")
        ax_ratio.axhline(TARGET_P50_RATIO, color="grey", lw=0.8, ls=":")
        for rate, c in zip(rates, checks.values(), strict=True):
            ax_ratio.annotate(f"{c['ratio']:g}x", (rate, c["ratio"]), textcoords="offset points",
                              xytext=(0, 6), ha="center", fontsize=8)
    ax_ratio.set(xlabel="offered load (req/s)", ylabel="gateway p50 / Triton-direct p50", yscale="log",
                 title=f"p50 ratio (target <= {TARGET_P50_RATIO:g})")
    all_rates = sorted({r["rate"] for r in rows})
    ax_rate.plot(all_rates, all_rates, color="grey", lw=0.8, ls=":", label="offered")
    ax_rate.set(xlabel="offered load (req/s)", ylabel="req/s  |  errors (%)",
                title="achieved rate and error rate")
    ax_rate.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


# --- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out
    log_dir = out / "gateway_load_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    problems: list[str] = []
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if args.model_repository is None:
            repository, artifacts = export_fresh(work, args.epochs, log_dir)
        else:
            repository, artifacts = args.model_repository.resolve(), args.artifacts.resolve()
        histories_path = artifacts / SNAPSHOT_FILE
        histories: dict[str, list[str]] = json.loads(histories_path.read_text())
        served = load_served_model(repository)
        users = sorted((u for u, items in histories.items() if items), key=lambda u: (len(u), u))
        if args.users:
            users = users[:args.users]
        inputs = {u: triton_inputs(histories[u], served.catalog, served.sequence_length) for u in users}
        print(f"{len(users)} users from {histories_path}; model v{served.version}, "
              f"L={served.sequence_length}, {served.catalog.num_items} items", flush=True)

        services = start_stack(args, repository, histories_path, stack, work, log_dir)
        if services.started:
            print("ready after " + ", ".join(f"{k} {v} s" for k, v in services.started.items()), flush=True)
        targets = [t for t in args.targets if (t == "gateway" and services.gateway_url)
                   or (t == "triton" and services.triton_grpc_url)]
        if "gateway" in targets:
            problem = sanity_check(services.gateway_url, users[0], args.k)
            if problem:
                problems.append(problem)
                targets = [t for t in targets if t != "gateway"]
                print(f"FAILED: {problem}", file=sys.stderr)
        probe = CpuProbe.of(services.pids)
        # With services started elsewhere their CPU is in "other".
        services_known = not (args.gateway_url or args.triton_grpc_url)
        print(f"\nopen-loop runs: {args.warmup_s:g} s warm-up + {args.duration_s:g} s measured, "
              f"{args.arrivals} arrivals, k={args.k}, client {args.client}", flush=True)
        for rate in args.rates:
            spec_args = (rate, args.duration_s, args.warmup_s, users, args.seed + int(rate), args.arrivals)
            offsets, picked = make_schedule(*spec_args)
            for name in targets:
                spec = RunSpec(name, rate, args.duration_s, args.warmup_s, args.arrivals, offsets, picked)
                if name == "gateway":
                    target = GatewayTarget(services.gateway_url, args.k, args.timeout_s,
                                           args.max_connections, args.client)
                else:
                    target = TritonTarget(services.triton_grpc_url, args.triton_model, inputs,
                                          args.k, args.timeout_s)
                gateway_url = services.gateway_url if name == "gateway" else None
                row = asyncio.run(measure(target, spec, probe, services.triton_grpc_url,
                                          args.triton_model, gateway_url, not args.no_progress))
                print_row(row)
                rows.append(row)
                if row["ok"] == 0:
                    problems.append(f"{name} at {rate:g} req/s: no successful response "
                                    f"({row['error_kinds']})")
                for warning in run_warnings(row, services_known):
                    print(f"    warning: {warning}", flush=True)
                    warnings.append(warning)
                time.sleep(args.pause_s)

    checks = target_checks(rows)
    report = {
        "config": {"rates": args.rates, "duration_s": args.duration_s, "warmup_s": args.warmup_s,
                   "arrivals": args.arrivals, "k": args.k, "timeout_s": args.timeout_s,
                   "client": args.client, "max_connections": args.max_connections,
                   "triton_model": args.triton_model, "users": len(users), "seed": args.seed,
                   "repository": str(args.model_repository or f"fresh export, {args.epochs} epoch(s)"),
                   "gateway": args.gateway_url or "started by the script (memory store, embedded consumer)",
                   "triton": args.triton_grpc_url or "started by the script",
                   "seconds": round(time.perf_counter() - started)},
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpu_count": os.cpu_count(), "services_ready_after_s": services.started},
        "runs": rows,
        "targets": checks,
        "warnings": warnings,
        "problems": problems,
        "ok": not problems,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "gateway_load.csv", rows)
    (out / "gateway_load.json").write_text(json.dumps(report, indent=2) + "\n")
    if rows:
        plot(out / "gateway_load.png", rows,
             f"open loop, {args.duration_s:g} s per point, {args.arrivals} arrivals, k={args.k}, "
             f"{os.cpu_count()} CPUs shared by generator, gateway, Triton and Kafka")
    print_checks(checks)
    print(f"wrote {out}/gateway_load.csv, gateway_load.json, gateway_load.png "
          f"({report['config']['seconds']} s)")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("perf/results"))
    p.add_argument("--rates", type=float, nargs="+", default=[100, 200, 400], help="req/s")
    p.add_argument("--duration-s", type=float, default=20, help="measured seconds per run")
    p.add_argument("--warmup-s", type=float, default=3, help="discarded seconds before each run")
    p.add_argument("--pause-s", type=float, default=1, help="idle seconds between runs")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 5 s per run, 1 s warm-up, 1 training epoch if training")
    p.add_argument("--arrivals", choices=["uniform", "poisson"], default="uniform",
                   help="uniform: request i at t0 + i/rate; poisson: exponential gaps")
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--timeout-s", type=float, default=2.0, help="per-request timeout (an error)")
    p.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                   help="HTTP client of the generator (aiohttp costs less CPU per request)")
    p.add_argument("--max-connections", type=int, default=256, help="HTTP keep-alive pool size")
    p.add_argument("--users", type=int, default=0, help="use only the first N snapshot users (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-repository", type=Path, default=None,
                   help="exported repository to serve (default: train and export into a temp dir)")
    p.add_argument("--artifacts", type=Path, default=None,
                   help=f"the export's artifacts folder with {SNAPSHOT_FILE} (with --model-repository)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the fresh export")
    p.add_argument("--triton-model", default=sig.RECOMMEND_FUSED,
                   help="the model the gateway calls (RECSYS_GATEWAY_TRITON_MODEL)")
    p.add_argument("--gateway-url", default=None, help="use this running gateway (http://host:port)")
    p.add_argument("--triton-grpc-url", default=None, help="use this running Triton (host:port)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = p.parse_args(argv)
    if args.quick:
        args.duration_s, args.warmup_s, args.pause_s = 5.0, 1.0, 0.5
        args.epochs = min(args.epochs, 1)
    if (args.model_repository is None) != (args.artifacts is None):
        p.error("--model-repository and --artifacts go together")
    if (args.gateway_url or args.triton_grpc_url) and args.model_repository is None:
        p.error("with --gateway-url/--triton-grpc-url pass the --model-repository and --artifacts "
                "the running services use")
    if args.gateway_url and not args.triton_grpc_url and "triton" in args.targets:
        print("note: --gateway-url without --triton-grpc-url: no Triton-direct runs", file=sys.stderr)
        args.targets = [t for t in args.targets if t != "triton"]
    if any(r <= 0 for r in args.rates):
        p.error("--rates must be positive")
    args.rates = [int(r) if float(r).is_integer() else r for r in args.rates]
    return args


if __name__ == "__main__":
    sys.exit(main())
