"""The trained model (the session's short ML-100K run) against the baselines of the same run."""


def test_short_training_run_beats_popularity(exported):
    models = exported.result.report["models"]
    assert set(models) >= {"popularity", "itemknn", "ease", "cooccurrence", "two_tower"}
    assert models["two_tower"]["recall@10"] > models["popularity"]["recall@10"] + 0.03
    assert models["two_tower"]["ndcg@10"] > models["popularity"]["ndcg@10"]


def test_report_and_chart_are_written(exported):
    assert (exported.artifacts / "report.json").stat().st_size > 0
    assert (exported.artifacts / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (exported.artifacts / "checkpoints" / "seed0" / "best.pt").is_file()
