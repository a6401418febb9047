"""perf/features_report.py and the workload of perf/bench_features.py."""

import csv
import json

import numpy as np

from features.events import parse_event
from perf.features_report import FRESHNESS_COLUMNS, targets, write_outputs
from perf.features_workload import item_categories, make_events


def test_events_are_valid_and_stamped_at_send():
    events = make_events(200, users=50, items=30, rng=np.random.default_rng(0))
    assert len(events) == 200
    key, template = events[0]
    event = parse_event(template % 1234, 0)
    assert event.ts_ms == 1234 and event.user_id.encode() == key
    assert len({v for _, v in events}) == 200  # fresh event ids
    categories = item_categories(30, seed=0)
    assert len(categories) == 30 and all(1 <= len(c) <= 3 for c in categories.values())


def _report():
    freshness = [{"store": "memory", "target_rate": 1000, "achieved_rate": 990.0, "p50_ms": 5.0,
                  "p95_ms": 9.0, "p99_ms": 20.0, "max_ms": 30.0, "ok": True},
                 {"store": "redis", "target_rate": 1000, "achieved_rate": 990.0, "p50_ms": 50.0,
                  "p95_ms": 90.0, "p99_ms": 120.0, "max_ms": 300.0, "ok": True}]
    throughput = [{"what": "FeatureConsumer", "client": "kafka-python", "store": "memory",
                   "stage": "full", "events_per_s": 25_000, "ok": True},
                  {"what": "FeatureConsumer", "client": "kafka-python", "store": "redis",
                   "stage": "full", "events_per_s": 7_000, "ok": True}]
    return {"config": {"stores": ["memory", "redis"], "throughput_events": 1000},
            "environment": {"cpu_count": 2}, "freshness": freshness, "throughput": throughput}


def test_targets_per_store():
    t = targets(_report())
    assert t["freshness_met"] == {"memory": True, "redis": False}
    assert t["throughput_met"] == {"memory": True, "redis": False}


def test_outputs_are_the_documented_files(tmp_path):
    report = _report()
    write_outputs(tmp_path, report)
    assert {p.name for p in tmp_path.iterdir()} == {
        "features.json", "features_freshness.csv", "features_throughput.csv", "features.png"}
    with open(tmp_path / "features_freshness.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == FRESHNESS_COLUMNS and rows[1][FRESHNESS_COLUMNS.index("p99_ms")] == "20.0"
    assert rows[1][FRESHNESS_COLUMNS.index("measured")] == ""  # absent values stay empty
    assert json.loads((tmp_path / "features.json").read_text())["config"]["stores"] == ["memory", "redis"]


def test_a_freshness_only_run_still_writes_its_plot(tmp_path):
    # --throughput-events 0 with no raw loops: the throughput panel has nothing to show
    report = {**_report(), "throughput": []}
    write_outputs(tmp_path, report)
    assert (tmp_path / "features.png").stat().st_size > 0
