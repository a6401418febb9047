from dataclasses import replace

import pytest
import torch

from export.data.split import leave_last_out
from export.data.synthetic import generate
from export.pipeline import train_seeds, whole_history_entry
from export.train import TrainConfig


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
