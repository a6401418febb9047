"""perf/compare_versions.py: rows from perf_analyzer, medians and ranges over rounds, the ratio
new/base and the issue's target, the written files. No Triton, no git worktree."""

import csv
import json

import pytest

from features import contract as sig
from perf.compare_versions import (
    CSV_COLUMNS,
    format_summary,
    measured_row,
    parse_args,
    plot,
    ratio,
    side_env,
    spread,
    summarize,
)
from perf.harness import write_csv, write_json


def _row(rnd, side, p50, p99, throughput, model=sig.RECOMMEND_FUSED, c=1):
    return {"round": rnd, "side": side, "model": model, "concurrency": c, "p50_ms": p50,
            "p90_ms": (p50 + p99) / 2, "p99_ms": p99, "throughput": throughput}


ROWS = [
    _row(1, "base", 1.0, 2.0, 900), _row(1, "new", 1.3, 2.6, 700),
    _row(2, "base", 2.0, 5.0, 450), _row(2, "new", 2.4, 6.0, 380),
    _row(3, "base", 1.2, 2.2, 800), _row(3, "new", 1.5, 3.0, 640),
]


def test_measured_row_converts_microseconds_and_keeps_round_and_side():
    raw = {"model": sig.RECOMMEND, "concurrency": 1, "p50_us": 1234.4, "p90_us": 2000.0,
           "p99_us": 3456.7, "throughput": 512.345, "requests": 1024, "steps": {"x": 1}}
    row = measured_row(raw, 2, "new", 1.5)
    assert row == {"round": 2, "side": "new", "model": sig.RECOMMEND, "concurrency": 1,
                   "p50_ms": 1.234, "p90_ms": 2.0, "p99_ms": 3.457, "throughput": 512.3,
                   "requests": 1024, "load_1m": 1.5, "steps": {"x": 1}}


def test_spread_and_ratio():
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert spread([]) == {"median": None, "min": None, "max": None, "n": 0}
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None


def test_summary_medians_ranges_ratios_and_target():
    (entry,) = summarize(ROWS)
    assert entry["model"] == sig.RECOMMEND_FUSED and entry["concurrency"] == 1
    assert entry["base"]["p50_ms"] == {"median": 1.2, "min": 1.0, "max": 2.0, "n": 3}
    assert entry["new"]["p99_ms"] == {"median": 3.0, "min": 2.6, "max": 6.0, "n": 3}
    assert entry["ratio_new_to_base"]["p50_ms"] == 1.25  # 1.5 / 1.2
    assert entry["ratio_new_to_base"]["p99_ms"] == pytest.approx(3.0 / 2.2, abs=1e-3)
    assert entry["ratio_new_to_base"]["throughput"] == 0.8  # 640 / 800
    assert entry["p50_ratio_per_round"] == [1.3, 1.2, 1.25]
    assert entry["target_p50_ratio"] == 1.5 and entry["target_met"] is True


def test_summary_target_missed_only_for_the_fused_model_at_concurrency_1():
    rows = [_row(1, "base", 1.0, 2.0, 900), _row(1, "new", 1.6, 2.0, 600),
            _row(1, "base", 2.0, 3.0, 400, model=sig.RECOMMEND),
            _row(1, "new", 4.0, 6.0, 200, model=sig.RECOMMEND)]
    by_model = {e["model"]: e for e in summarize(rows)}
    assert by_model[sig.RECOMMEND_FUSED]["target_met"] is False
    assert "target_met" not in by_model[sig.RECOMMEND]
    assert by_model[sig.RECOMMEND]["ratio_new_to_base"]["p50_ms"] == 2.0


def test_summary_with_a_missing_round_pairs_only_complete_rounds():
    (entry,) = summarize(ROWS[:3])  # round 2 has no "new" row
    assert entry["base"]["p50_ms"]["n"] == 2 and entry["new"]["p50_ms"]["n"] == 1
    assert entry["p50_ratio_per_round"] == [1.3]
    lines = format_summary([entry])
    assert len(lines) == 4 and "new/base: p50" in lines[-1] and "target p50 <= 1.5x: met" in lines[-1]


def test_summary_of_a_side_without_rows_has_no_ratio():
    (entry,) = summarize([r for r in ROWS if r["side"] == "base"])
    assert entry["new"]["p50_ms"]["median"] is None
    assert entry["ratio_new_to_base"]["p50_ms"] is None and "target_met" not in entry
    assert " - " in format_summary([entry])[2]


def test_side_env_puts_only_that_side_on_the_path(tmp_path):
    env = side_env(tmp_path, {"PYTHONPATH": "/elsewhere:.", "KEEP": "1"})
    assert env == {"PYTHONPATH": str(tmp_path), "KEEP": "1"}


def test_defaults_are_the_issue_s_comparison():
    args = parse_args([])
    assert args.base == "8f6fc66" and args.rounds == 5 and args.concurrency == [1]
    assert args.models == [sig.RECOMMEND_FUSED, sig.RECOMMEND]
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])


def test_outputs(tmp_path):
    rows = [{**r, "requests": 100, "load_1m": 1.0} for r in ROWS]
    write_csv(tmp_path / "compare_versions.csv", CSV_COLUMNS, rows)
    write_json(tmp_path / "compare_versions.json", {"summary": summarize(rows), "rounds": rows})
    plot(tmp_path / "compare_versions.png", rows, [sig.RECOMMEND_FUSED], 1)
    with open(tmp_path / "compare_versions.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 6 and list(written[0]) == CSV_COLUMNS
    assert json.loads((tmp_path / "compare_versions.json").read_text())["summary"][0]["target_met"]
    assert (tmp_path / "compare_versions.png").stat().st_size > 0


def test_both_sides_share_one_repository_under_their_own_names(tmp_path, catalog):
    """Each side's models (an ensemble's steps renamed with it) and files, side by side."""
    import torch

    from export.model.towers import TwoTower
    from export.triton.config_files import read_config
    from export.triton.repository import ServingConfig, export_repository
    from perf.compare_versions import merged_repository

    repositories = {}
    for seed, side in enumerate(("base", "new")):
        torch.manual_seed(seed)
        repositories[side] = export_repository(TwoTower(catalog, dim=8, sequence_length=4), catalog,
                                               tmp_path / side, sequence_length=4,
                                               serving=ServingConfig(warmup=False))
    names = merged_repository(repositories, tmp_path / "both", [sig.RECOMMEND_FUSED, sig.RECOMMEND])
    steps = sorted({sig.RECOMMEND_FUSED, sig.RECOMMEND, sig.USER_TOWER, sig.RETRIEVE})
    assert names == [f"{side}_{m}" for side in ("base", "new") for m in steps]
    for side, repository in repositories.items():
        ensemble = read_config(tmp_path / "both" / f"{side}_{sig.RECOMMEND}" / "config.pbtxt")
        assert ensemble.name == f"{side}_{sig.RECOMMEND}"
        assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
            f"{side}_{sig.USER_TOWER}", f"{side}_{sig.RETRIEVE}"]
        fused = tmp_path / "both" / f"{side}_{sig.RECOMMEND_FUSED}"
        assert read_config(fused / "config.pbtxt").name == fused.name
        original = repository / sig.RECOMMEND_FUSED / "1" / "model.pt"
        assert (fused / "1" / "model.pt").read_bytes() == original.read_bytes()
    assert not (tmp_path / "both" / f"base_{sig.SIMILAR_ITEMS}").exists()  # only what is measured
