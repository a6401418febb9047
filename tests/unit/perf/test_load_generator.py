"""perf/load_generator.py: the open-loop schedule and one run's row, driven by a fake target."""

import asyncio

import numpy as np
import pytest

from perf.cpu_accounting import CpuProbe
from perf.load_generator import (
    BAD_BODY,
    TIMEOUT,
    RunSpec,
    make_schedule,
    open_loop,
    summarize_run,
)


def test_uniform_schedule_is_evenly_spaced_and_seeded():
    offsets, users = make_schedule(10, duration_s=2, warmup_s=1, users=["u1", "u2"], seed=1,
                                   arrivals="uniform")
    np.testing.assert_allclose(offsets, np.arange(30) / 10)
    assert set(users) <= {"u1", "u2"}
    assert make_schedule(10, 2, 1, ["u1", "u2"], 1, "uniform")[1] == users


def test_poisson_schedule_stays_inside_the_run():
    offsets, users = make_schedule(200, duration_s=5, warmup_s=1, users=["u"], seed=0,
                                   arrivals="poisson")
    assert offsets[0] == 0 and (np.diff(offsets) > 0).all() and offsets[-1] < 6
    assert len(users) == len(offsets) and 1000 < len(offsets) < 1400  # about rate x seconds


def test_summary_counts_only_the_measured_window():
    spec = RunSpec("gateway", 2.0, 2.0, 1.0, "uniform", np.arange(6) / 2, ["u"] * 6)
    scheduled = 100 + spec.offsets
    raw = {"scheduled": scheduled, "sent": scheduled + 0.001,
           "done": scheduled + np.array([0.5, 0.5, 0.010, 0.020, 0.030, 0.040]),
           "codes": np.array([200, 200, 200, 200, TIMEOUT, 503], np.int16),
           "degraded": np.array([False, False, True, False, False, False]),
           "window_start": 101.0, "cpu": {"generator": 0.1}}
    row = summarize_run(spec, raw)
    assert (row["requests"], row["ok"], row["errors"], row["timeouts"]) == (4, 2, 2, 1)
    assert row["error_kinds"] == {"timeout": 1, "http_503": 1} and row["degraded"] == 1
    assert row["error_rate"] == 0.5 and row["max_ms"] == pytest.approx(20.0)
    assert row["p50_from_send_ms"] == pytest.approx(14.0) and row["cpu_generator"] == 0.1


class FakeTarget:
    """Answers every other user with a bad body, after 1 ms."""

    def __init__(self):
        self.sent = []

    async def send(self, user):
        self.sent.append(user)
        await asyncio.sleep(0.001)
        return (200 if user == "good" else BAD_BODY), False


def test_open_loop_sends_every_scheduled_request():
    target = FakeTarget()
    spec = RunSpec("triton", 100.0, 0.1, 0.05, "uniform", np.arange(15) / 100, ["good", "bad"] * 7 + ["good"])
    raw = asyncio.run(open_loop(target, spec, CpuProbe({}), progress=False))
    assert target.sent == spec.users
    assert (raw["codes"] == np.where(np.array(spec.users) == "good", 200, BAD_BODY)).all()
    assert (raw["sent"] >= raw["scheduled"]).all() and (raw["done"] > raw["sent"]).all()
    assert set(raw["cpu"]) == {"generator", "other"}
