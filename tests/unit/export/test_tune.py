import json

import pytest

import export.__main__ as cli
import export.tune as tuning
from export.data.synthetic import generate
from export.train import TrainConfig
from export.tune import SEARCH_SPACE, TUNING_JSON, Param, robustness, tune


@pytest.fixture(scope="module")
def dataset():
    # ~3k interactions, ~100 users with a validation target: one epoch is a few batches
    return generate(n_users=120, n_items=60, n_categories=5, days=10, seed=0).to_dataset()


def test_search_reads_only_the_validation_split_and_records_every_trial(dataset, tmp_path, monkeypatch):
    splits, evaluated, trained_on = [], [], []
    real_split, real_evaluate, real_examples = tuning.leave_last_out, tuning.evaluate, tuning.build_examples

    def spy_split(d):
        splits.append(real_split(d))
        return splits[-1]

    def spy_evaluate(score_fn, histories, targets, catalog, *args, **kwargs):
        evaluated.append((histories, targets))
        return real_evaluate(score_fn, histories, targets, catalog, *args, **kwargs)

    def spy_examples(sequences, catalog, length, **kwargs):
        trained_on.append(sequences)
        return real_examples(sequences, catalog, length, **kwargs)

    monkeypatch.setattr(tuning, "leave_last_out", spy_split)
    monkeypatch.setattr(tuning, "evaluate", spy_evaluate)
    monkeypatch.setattr(tuning, "build_examples", spy_examples)
    result = tune(dataset, TrainConfig(epochs=9, patience=4), 3, epochs=1, patience=1, artifacts=tmp_path)

    (split,) = splits
    assert any(split.test[u] != split.valid[u] for u in split.test)  # the check below can tell them apart
    assert len(evaluated) == 3  # one validation per trial epoch
    for histories, targets in evaluated:
        assert targets is split.valid and histories is split.train
    assert trained_on and all(s is split.train for s in trained_on)

    record = json.loads((tmp_path / TUNING_JSON).read_text())
    assert result.record == record and result.path == tmp_path / TUNING_JSON
    assert len(record["trials"]) == 3 and record["search_seconds"] > 0
    for trial in record["trials"]:
        assert trial["state"] == "COMPLETE" and set(trial["params"]) == set(SEARCH_SPACE)
        assert 0 <= trial["valid_recall@10"] <= 1 and 0 <= trial["valid_ndcg@10"] <= 1
    # trial 0 is the shipped default
    defaults = TrainConfig()
    assert record["trials"][0]["params"] == {k: getattr(defaults, k) for k in SEARCH_SPACE}
    best = max(record["trials"], key=lambda t: t["valid_recall@10"])
    assert record["best"]["valid_recall@10"] == best["valid_recall@10"]
    assert result.best_params == record["best"]["params"]
    # the final run keeps the caller's epochs and patience, not the per-trial ones
    assert result.best_config == TrainConfig(**record["best_config"])
    assert (result.best_config.epochs, result.best_config.patience) == (9, 4)
    assert set(record["robustness"]) == set(SEARCH_SPACE)
    assert "Param" not in tuning.format_tuning(record)


def test_cli_trains_the_best_config_through_run(dataset, tmp_path, monkeypatch, capsys):
    got = {}

    class Result:
        report = {"dataset": "synthetic", "protocol": "p", "models": {"two_tower": {"recall@10": 0.1}}}

    def fake_run(spec, repository, artifacts, config, **kwargs):
        got.update(spec=spec, config=config, artifacts=artifacts)
        return Result()

    monkeypatch.setattr(cli, "load_dataset", lambda spec, items=None: dataset)
    monkeypatch.setattr(cli, "run", fake_run)
    assert cli.main(["--dataset", "synthetic", "--no-export", "--no-baselines", "--epochs", "7",
                     "--tune", "2", "--tune-epochs", "1", "--artifacts", str(tmp_path)]) == 0
    record = json.loads((tmp_path / TUNING_JSON).read_text())
    assert len(record["trials"]) == 2 and record["epochs_per_trial"] == 1
    assert got["config"] == TrainConfig(**record["best_config"])
    assert got["config"].epochs == 7
    out = capsys.readouterr().out
    assert "best: trial" in out and str(tmp_path / TUNING_JSON) in out


def test_every_range_holds_the_default_and_says_why():
    defaults = TrainConfig()
    for name, param in SEARCH_SPACE.items():
        value = getattr(defaults, name)
        assert value in param.choices if param.choices else param.low <= value <= param.high, name
        assert len(param.why) > 40, name


def test_robustness_reports_the_spread_over_each_parameters_values():
    space = {"dim": Param(choices=(32, 64), why="w"), "lr": Param(low=1e-3, high=1e-1, log=True, why="w")}
    trials = [
        {"state": "COMPLETE", "params": {"dim": 32, "lr": 1e-3}, "valid_recall@10": 0.20},
        {"state": "COMPLETE", "params": {"dim": 64, "lr": 1e-1}, "valid_recall@10": 0.25},
        {"state": "COMPLETE", "params": {"dim": 64, "lr": 2e-3}, "valid_recall@10": 0.10},
        {"state": "PRUNED", "params": {"dim": 32, "lr": 1e-2}, "valid_recall@10": 0.01},  # ignored
    ]
    out = robustness(trials, space, users=100)
    assert out["dim"]["best_value"] == 64 and out["dim"]["recall@10_spread"] == pytest.approx(0.05)
    assert [g["trials"] for g in out["dim"]["groups"]] == [1, 2]
    standard_error = (0.25 * 0.75 / 100) ** 0.5  # of the best trial's recall on 100 users
    assert out["dim"]["spread_in_standard_errors"] == pytest.approx(0.05 / standard_error, abs=0.01)
    # log bins: [1e-3, ~4.6e-3), [.., ~2.2e-2), [.., 1e-1]; the middle one holds the pruned trial only
    assert [(g["trials"], g["pruned"]) for g in out["lr"]["groups"]] == [(2, 0), (0, 1), (1, 0)]
    assert out["lr"]["groups"][1]["best_recall@10"] is None and out["lr"]["values_tried"] == 2
    assert out["lr"]["best_value"] == 1e-1 and out["lr"]["recall@10_spread"] == pytest.approx(0.05)
