import json

import pandas as pd
import pytest

from export.data.interactions import dataset_from_frames
from export.data.split import INACTIVE_AFTER, NO_HISTORY, ONLY_REPEATS_AFTER, temporal_split
from export.evaluation.report import aggregate_seeds, format_table, write_report
from export.evaluation.temporal import temporal_section, untrainable

# matplotlib 3.9 calls pyparsing 3.2 APIs that now warn; nothing to fix on our side



def make_report(models):
    return {"dataset": "tiny", "protocol": "leave-last-out, full ranking", "users": 3, "items": 6,
            "models": models}


def test_aggregate_seeds_mean_and_sample_std():
    runs = [{"recall@10": 0.1, "ndcg@10": 0.05}, {"recall@10": 0.2, "ndcg@10": 0.07},
            {"recall@10": 0.3, "ndcg@10": 0.06}]
    out = aggregate_seeds(runs)
    assert out["recall@10"] == pytest.approx(0.2)
    assert out["recall@10_std"] == pytest.approx(0.1)  # ddof=1: sqrt((0.01 + 0 + 0.01) / 2)
    assert out["ndcg@10"] == pytest.approx(0.06) and out["ndcg@10_std"] == pytest.approx(0.01)
    assert out["seeds"] == 3
    assert aggregate_seeds(runs[:1])["recall@10_std"] == 0.0
    with pytest.raises(ValueError):
        aggregate_seeds([])


def test_write_report_json_shape_and_png(tmp_path):
    metrics = {"recall@10": 0.15, "ndcg@10": 0.07, "recall@20": 0.22, "ndcg@20": 0.09, "mrr": 0.06,
               "coverage@10": 0.3, "coverage@20": 0.4}
    seeded = aggregate_seeds([metrics, {k: v + 0.01 for k, v in metrics.items()}])
    report = make_report({"ease": metrics, "two_tower": seeded})
    paths = write_report(report, tmp_path / "out")

    payload = json.loads(paths["json"].read_text())
    assert paths["json"].name == "report.json"
    assert payload["dataset"] == "tiny" and payload["protocol"] and payload["users"] == 3
    assert payload["models"]["ease"] == metrics
    assert payload["models"]["two_tower"]["seeds"] == 2
    assert payload["models"]["two_tower"]["recall@10_std"] == pytest.approx(0.00707, abs=1e-5)

    png = paths["png"].read_bytes()
    assert paths["png"].name == "metrics.png"
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_write_report_needs_dataset_protocol_and_models(tmp_path):
    with pytest.raises(ValueError, match="protocol"):
        write_report({"dataset": "x", "models": {}}, tmp_path)


def test_format_table_shows_mean_and_std_when_present():
    report = make_report({
        "popularity": {"recall@10": 0.0859, "ndcg@10": 0.0449},
        "two_tower": {"recall@10": 0.15, "recall@10_std": 0.004, "ndcg@10": 0.07, "ndcg@10_std": 0.002,
                      "seeds": 3},
    })
    lines = format_table(report).splitlines()
    assert lines[0].startswith("tiny — 3 users, 6 items")
    assert lines[1].split() == ["model", "recall@10", "ndcg@10"]
    assert lines[2].split() == ["popularity", "0.0859", "0.0449"]
    assert "0.1500 ± 0.0040" in lines[3] and "0.0700 ± 0.0020" in lines[3] and "(3 seeds)" in lines[3]


def with_protocols(report, temporal):
    report["protocols"] = {
        "leave_last_out": {"description": "llo", "users": 3, "models": report["models"],
                           "seeds": [{"seed": 0, "test": {"recall@10": 0.15}}]},
        "temporal": temporal,
    }
    return report


def test_format_table_adds_a_table_for_the_temporal_protocol():
    report = with_protocols(make_report({"popularity": {"recall@10": 0.0859, "ndcg@10": 0.0449}}), {
        "description": "temporal", "users": 90, "cutoff": 891382309, "cutoff_utc": "1998-03-31T22:11:49Z",
        "models": {"popularity": {"recall@10": 0.0333, "ndcg@10": 0.0108},
                   "two_tower": {"recall@10": 0.1, "recall@10_std": 0.01, "ndcg@10": 0.05,
                                 "ndcg@10_std": 0.005, "seeds": 2}},
        "seeds": [{"seed": 0, "test": {}}, {"seed": 1, "test": {}}],
    })
    lines = format_table(report).splitlines()
    assert lines[0].startswith("tiny — 3 users, 6 items") and lines[3] == ""
    assert lines[2].split() == ["popularity", "0.0859", "0.0449"]  # the headline table as before
    assert lines[4] == "tiny — temporal protocol at 1998-03-31T22:11:49Z, 90 users (full ranking)"
    assert lines[5].split() == ["model", "recall@10", "ndcg@10"]
    assert "0.0333" in lines[6] and "0.1000 ± 0.0100" in lines[7] and "(2 seeds)" in lines[7]
    assert len(lines) == 8  # leave-last-out is the headline table, not printed twice


def test_format_table_says_why_the_temporal_model_is_missing():
    report = with_protocols(make_report({"popularity": {"recall@10": 0.0859}}), {
        "users": 90, "models": {"popularity": {"recall@10": 0.0333}}, "model_skipped": "not trained"})
    assert format_table(report).splitlines()[-1] == "(two-tower: not trained)"
    empty = with_protocols(make_report({"popularity": {"recall@10": 0.0859}}), {"users": 0, "models": {}})
    assert len(format_table(empty).splitlines()) == 3  # nothing evaluated: no second table


def test_temporal_section_evaluates_the_baselines_on_the_pre_cut_histories(tmp_path):
    frame = pd.DataFrame(
        [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 8), ("u2", "a", 2), ("u2", "b", 3),
         ("u2", "d", 9), ("u3", "c", 4), ("u3", "a", 5), ("u4", "x", 9)],
        columns=["user_id", "item_id", "timestamp"])
    dataset = dataset_from_frames("tiny", frame, now_s=1_700_000_000)
    # sorted times 1,2,2,3,4,5,8,9,9: floor(0.7 * 9) = 6 -> cut at 8; floor(0.35 * 9) = 3 -> at 3
    split = temporal_split(dataset, test_quantile=0.7, valid_quantile=0.35)
    section = temporal_section(split, dataset.catalog)
    assert (section["cutoff_ms"], section["valid_cutoff_ms"]) == (8000, 3000)
    assert section["cutoff_utc"] == "1970-01-01T00:00:08Z"
    assert section["users"] == 2 and section["valid_users"] == 1
    assert section["quantiles"] == {"valid": 0.35, "test": 0.7}
    assert section["left_out"] == {NO_HISTORY: 1, INACTIVE_AFTER: 1, ONLY_REPEATS_AFTER: 0}
    assert section["cold_targets"] == 1  # "d": nobody met it before the cut
    assert set(section["models"]) == {"popularity", "itemknn", "ease", "cooccurrence"}
    assert section["seeds"] == []
    assert temporal_section(split, dataset.catalog, baselines=False)["models"] == {}
    assert untrainable(split) is None
    assert "validation" in untrainable(temporal_split(dataset, 0.7, 0.1))
    # popularity before the cut (a: 3, b: 2, c: 1): u1's "c" ranks first, u2's cold "d" second
    assert section["models"]["popularity"]["mrr"] == pytest.approx(0.75)
    payload = json.loads(write_report(with_protocols(make_report({}), section), tmp_path)["json"].read_text())
    assert payload["protocols"]["temporal"]["models"]["popularity"]["mrr"] == pytest.approx(0.75)
