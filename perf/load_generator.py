"""An open-loop load generator: request i is sent at ``t0 + offsets[i]`` whether or not earlier ones
have answered, and its latency runs from that *scheduled* time, so a stalled server or a late
generator shows up as latency (no coordinated omission).

A target is any object with ``async open()``, ``async send(user) -> (code, degraded)`` and
``async close()`` (perf/gateway_targets.py); codes are HTTP statuses or the negative codes below.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from perf.cpu_accounting import CpuProbe

# Outcome codes besides HTTP statuses (Triton-direct successes are 200).
TIMEOUT, CONNECTION_ERROR, BAD_BODY = -1, -2, -3
CODE_NAMES = {TIMEOUT: "timeout", CONNECTION_ERROR: "exception", BAD_BODY: "bad_body"}


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
