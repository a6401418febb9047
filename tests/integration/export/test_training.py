"""The trained model (the session's short ML-100K run) against the baselines of the same run."""

import json

from export.evaluation.report import format_table
from export.model.item_item import Blended
from export.pipeline import run
from export.train import TrainConfig


def test_short_training_run_beats_popularity(exported):
    models = exported.result.report["models"]
    assert set(models) >= {"popularity", "itemknn", "ease", "cooccurrence", "two_tower"}
    assert models["two_tower"]["recall@10"] > models["popularity"]["recall@10"] + 0.03
    assert models["two_tower"]["ndcg@10"] > models["popularity"]["ndcg@10"]
    # 1,682 items, far below the cap: the item-item baselines model all of them
    assert exported.result.report["baseline_items"] == exported.result.report["items"] == 1682


def test_report_and_chart_are_written(exported):
    assert (exported.artifacts / "report.json").stat().st_size > 0
    assert (exported.artifacts / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (exported.artifacts / "checkpoints" / "seed0" / "best.pt").is_file()


def test_the_item_item_term_is_decided_on_validation_and_served_as_chosen(exported):
    item_item = exported.result.report["train"]["item_item"]
    mean = item_item["mean_valid_recall@10"]
    assert item_item["chosen_on"] == "validation" and item_item["rank"] == 256
    best = max(mean.values())
    assert mean[str(item_item["chosen"])] >= best - item_item["standard_error"]
    assert item_item["used"] == (item_item["chosen"] > 0)
    served = json.loads((exported.repository / "retrieve" / "1" / "serving.json").read_text())
    # the ensemble's three 64-wide vectors, and the term's 256 columns when it is used
    assert served["dim"] == 3 * 64 + (256 if item_item["used"] else 0)
    assert isinstance(exported.result.model, Blended) == item_item["used"]


def test_report_lists_every_protocol_with_per_seed_numbers(exported):
    report = exported.result.report
    llo, temporal = report["protocols"]["leave_last_out"], report["protocols"]["temporal"]
    assert llo["models"] == report["models"] and llo["users"] == report["users"] == 943
    assert [s["seed"] for s in llo["seeds"]] == [s["seed"] for s in report["train"]["seeds"]]
    # the baselines always; the leave-last-out model saw post-cut data, so it is not evaluated here
    assert set(temporal["models"]) == {"popularity", "itemknn", "ease", "cooccurrence"}
    assert temporal["users"] == 90 and temporal["seeds"] == [] and temporal["model_skipped"]
    assert "temporal protocol at" in format_table(report)


def test_temporal_run_trains_a_separate_model_per_seed_on_pre_cut_data(tmp_path):
    # one model, not an ensemble: the protocol is what is checked here, and this is two trainings
    result = run("ml-100k", None, tmp_path, TrainConfig(epochs=1, members=1), baselines=False,
                 temporal=True)
    temporal = result.report["protocols"]["temporal"]
    assert set(temporal["models"]) == {"two_tower"} and "model_skipped" not in temporal
    assert [s["seed"] for s in temporal["seeds"]] == [0] and len(temporal["seeds"][0]["epochs"]) == 1
    # each protocol's own pilot decides whole-history examples on its own validation split
    for section in (temporal, result.report["train"]):
        assert section["whole_history"]["chosen_on"] == "validation"
        assert section["item_item"]["chosen_on"] == "validation"
        assert section["whole_history"]["used"] == section["whole_history"]["pilot"]["chosen"]
    assert 0.0 <= temporal["models"]["two_tower"]["recall@10"] <= 1.0
    assert (tmp_path / "temporal" / "checkpoints" / "seed0" / "best.pt").is_file()
    assert (tmp_path / "checkpoints" / "seed0" / "best.pt").is_file()  # leave-last-out as before
