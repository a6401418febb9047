from dataclasses import replace

import numpy as np
import pytest
import torch

from export import pipeline
from export.data.split import leave_last_out
from export.data.synthetic import generate
from export.evaluation.metrics import evaluate
from export.model.item_item import Blended
from export.pipeline import train_seeds, whole_history_entry
from export.train import TrainConfig, new_model, score_histories


def small_log():
    """A small synthetic shop, split as every run splits its data."""
    dataset = generate(n_users=60, n_items=30, n_categories=3, days=5, seed=0).to_dataset()
    split = leave_last_out(dataset)
    return dataset.catalog, split.train, split.valid


@pytest.mark.parametrize("members", [1, 2])
def test_the_pilot_decides_whole_history_on_validation_and_runs_as_if_it_had_been_set(tmp_path, members):
    catalog, sequences, valid = small_log()
    config = TrainConfig(dim=8, sequence_length=6, epochs=2, batch_size=16, members=members)
    assert config.whole_history is None  # the default: decided per run

    auto = train_seeds(sequences, valid, sequences, valid, catalog, config, seeds=(0, 1),
                       artifacts=tmp_path / "auto")
    pilot = auto[0].pilot
    scores = pilot["best_valid_recall@10"]
    assert pilot["chosen"] == (scores["with"] > scores["without"])
    assert all(r.whole_history == pilot["chosen"] for r in auto) and auto[1].pilot is None
    assert whole_history_entry(auto) == {"used": pilot["chosen"], "chosen_on": "validation",
                                         "pilot": pilot}

    # The winner is the first member: the run is exactly the run with the choice set, every seed.
    forced = train_seeds(sequences, valid, sequences, valid, catalog,
                         replace(config, whole_history=pilot["chosen"]), seeds=(0, 1),
                         artifacts=tmp_path / "forced")
    assert whole_history_entry(forced) == {"used": pilot["chosen"], "chosen_on": "config"}
    for a, f in zip(auto, forced, strict=True):
        assert a.epochs == f.epochs and a.test == f.test
        for name, value in f.model.state_dict().items():
            assert torch.equal(a.model.state_dict()[name], value), name

    # the first member's checkpoints are the winner's, next to both pilots'
    seed0 = tmp_path / "auto" / "checkpoints" / "seed0"
    member0 = seed0 / "member0" if members > 1 else seed0
    saved = torch.load(member0 / "best.pt", weights_only=True)
    assert saved["config"]["whole_history"] == pilot["chosen"]
    assert {p.name for p in member0.iterdir() if p.is_dir()} == {
        "pilot-with-whole-history", "pilot-without-whole-history"}
    ensemble = torch.load(seed0 / "best.pt", weights_only=True)
    assert ensemble["config"]["whole_history"] == pilot["chosen"]
    assert ensemble["config"]["members"] == members


def test_the_item_item_weight_is_chosen_on_validation_and_the_blend_is_what_is_saved(tmp_path, monkeypatch):
    dataset = generate(n_users=60, n_items=30, n_categories=3, days=5, seed=0).to_dataset()
    split = leave_last_out(dataset)
    catalog, sequences, valid = dataset.catalog, split.train, split.valid
    test_histories, test = split.history_for("test"), split.test
    config = TrainConfig(dim=8, sequence_length=6, epochs=2, batch_size=16, members=1,
                         whole_history=False)
    runs = train_seeds(sequences, valid, sequences, valid, catalog, config, seeds=(0,),
                       artifacts=tmp_path)
    towers, towers_valid = runs[0].model, runs[0].best_valid_recall

    seen = []

    def recording(score_fn, histories, targets, *args, **kwargs):
        seen.append(targets)
        return evaluate(score_fn, histories, targets, *args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate", recording)
    entry = pipeline.blend_item_item(runs, sequences, valid, test_histories, test, catalog, config,
                                     tmp_path)
    (seed,) = entry["seeds"]
    choices = seed["valid_recall@10"]
    assert choices["0.0"] == towers_valid and len(choices) == len(pipeline.ITEM_ITEM_WEIGHTS) + 1
    assert entry["mean_valid_recall@10"] == choices  # one seed: its own scores are the mean
    # the smallest weight within one standard error of the best
    best, error = max(choices.values()), entry["standard_error"]
    assert error == pytest.approx(np.sqrt(best * (1 - best) / len(valid)))
    assert choices[str(entry["chosen"])] >= best - error
    assert all(v < best - error for w, v in choices.items() if float(w) < entry["chosen"])
    # every weight was judged on validation targets; the test targets were read once, afterwards
    assert all(t is valid for t in seen[:len(pipeline.ITEM_ITEM_WEIGHTS)])
    assert entry["chosen"] > 0 and entry["used"]  # on this seeded log the term helps
    assert seen[len(pipeline.ITEM_ITEM_WEIGHTS):] == [test]

    assert isinstance(runs[0].model, Blended) and runs[0].model.towers is towers
    assert runs[0].best_valid_recall == choices[str(entry["chosen"])] and seed["test"] == runs[0].test
    saved = torch.load(tmp_path / "checkpoints" / "seed0" / "best.pt", weights_only=True)
    assert saved["config"]["item_item_weight"] == seed["weight"] > 0
    loaded = new_model(catalog, saved["config"])
    loaded.load_state_dict(saved["model"])
    histories = list(test_histories.values())
    np.testing.assert_allclose(score_histories(loaded.eval(), catalog, 6)(histories),
                               score_histories(runs[0].model, catalog, 6)(histories), atol=1e-5)

    off = pipeline.blend_item_item(runs, sequences, valid, test_histories, test, catalog,
                                   replace(config, item_item=0.0))
    assert off == {"used": False, "chosen_on": "config"}


def test_a_set_item_item_weight_is_used_as_it_is():
    dataset = generate(n_users=60, n_items=30, n_categories=3, days=5, seed=0).to_dataset()
    split = leave_last_out(dataset)
    config = TrainConfig(dim=8, sequence_length=6, epochs=1, batch_size=16, members=1,
                         whole_history=False, item_item=1.5)
    runs = train_seeds(split.train, split.valid, split.history_for("test"), split.test,
                       dataset.catalog, config, seeds=(0,))
    entry = pipeline.blend_item_item(runs, split.train, split.valid, split.history_for("test"),
                                     split.test, dataset.catalog, config)
    assert entry["chosen_on"] == "config" and entry["chosen"] == 1.5 and entry["used"]
    assert list(entry["mean_valid_recall@10"]) == ["0.0", "1.5"]
    assert isinstance(runs[0].model, Blended)
