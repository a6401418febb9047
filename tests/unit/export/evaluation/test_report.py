import json

import pytest

from export.evaluation.report import aggregate_seeds, format_table, write_report

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
