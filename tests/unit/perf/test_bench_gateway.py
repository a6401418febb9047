"""perf/bench_gateway.py and its report: the Triton-direct request, the targets and warnings."""

import numpy as np

from features import contract as sig
from features.behaviour import type_code
from features.catalog import PAD_INDEX
from perf.bench_gateway import HISTORY_ITEMS, request_inputs
from perf.gateway_report import CSV_COLUMNS, run_warnings, target_checks
from perf.input_data import snapshot_steps


def test_triton_request_is_what_the_gateway_builds(catalog):
    items = ["a", "b", "c", "a", "zz"]
    types = ["view", "click", "cart", "purchase", "view"]
    steps = snapshot_steps({"u": [[f"e{i}", item, t, 10 * i]
                                  for i, (item, t) in enumerate(zip(items, types, strict=True))]})["u"]
    inputs = request_inputs(steps, catalog, sequence_length=4, k=10)
    tensors = inputs.tensors()
    assert list(tensors) == [sig.HISTORY, sig.HISTORY_TYPES, sig.EXCLUDE, sig.K]
    assert tensors[sig.HISTORY].tolist() == [[catalog.index_of(i) for i in items[-4:]]]
    assert tensors[sig.HISTORY_TYPES].tolist() == [[type_code(t) for t in types[-4:]]]
    exclude = tensors[sig.EXCLUDE][0]
    assert len(exclude) == 16  # a power of two, as the gateway pads it
    assert sorted(exclude[exclude != PAD_INDEX].tolist()) == sorted(catalog.index_of(i) for i in "abc")
    assert tensors[sig.K].tolist() == [[10]] and tensors[sig.K].dtype == np.int32


def test_triton_request_history_is_the_stores_recent_events(catalog):
    items = ["a"] * HISTORY_ITEMS + ["b"] * 3
    history = request_inputs(items, catalog, sequence_length=HISTORY_ITEMS + 10, k=5).history[0]
    assert (history[:10] == PAD_INDEX).all()  # only the last HISTORY_ITEMS events are kept


def _row(target, rate, p50, p99, error_rate=0.0, **extra):
    return {"target": target, "rate": rate, "p50_ms": p50, "p99_ms": p99, "error_rate": error_rate,
            "error_kinds": {}, "degraded": 0, "send_lag_p99_ms": 0.5, "cpu_other": 0.0, **extra}


def test_target_checks_p99_at_200_and_p50_ratio():
    rows = [_row("gateway", 200, 8.0, 14.0), _row("triton", 200, 5.0, 9.0),
            _row("gateway", 400, 30.0, 90.0), _row("triton", 400, 5.0, 20.0)]
    checks = target_checks(rows)
    assert checks["gateway_p99_at_200"]["target_met"] is True
    assert checks["gateway_vs_triton_p50"]["200"]["ratio"] == 1.6
    assert checks["gateway_vs_triton_p50"]["400"]["target_met"] is False
    overloaded = target_checks([_row("gateway", 200, 8.0, 14.0, error_rate=0.05)])
    assert overloaded["gateway_p99_at_200"]["target_met"] is False


def test_warnings_name_what_makes_a_point_unreliable():
    row = _row("gateway", 200, 8.0, 14.0, error_rate=0.02, degraded=4, cpu_other=0.6, send_lag_p99_ms=9.0)
    warnings = " | ".join(run_warnings(row, services_known=True))
    assert "overloaded" in warnings and "degraded" in warnings
    assert "not quiet" in warnings and "send lag" in warnings
    assert not any("not quiet" in w for w in run_warnings(row, services_known=False))
    assert run_warnings(_row("triton", 100, 3.0, 5.0), services_known=True) == []
    assert CSV_COLUMNS[:2] == ["target", "rate"]
