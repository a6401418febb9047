from dataclasses import replace

import numpy as np
import torch

from export.data.loaders import InMemoryBatches
from export.pipeline import train_seeds
from export.train import (
    TrainConfig,
    best_epochs,
    build_examples,
    new_model,
    seed_everything,
    target_log_frequencies,
    train,
)
from features.behaviour import Step
from features.catalog import Item, ItemCatalog


def leave_last_out_of_random_users(users=24, items=12, length=7, seed=0):
    rng = np.random.default_rng(seed)
    sequences = {f"u{u}": [str(i) for i in rng.permutation(items)[:length]] for u in range(users)}
    steps = {u: [Step(i, "view") for i in s] for u, s in sequences.items()}
    return ({u: s[:-2] for u, s in steps.items()}, {u: s[-2] for u, s in sequences.items()},
            {u: s[:-1] for u, s in steps.items()}, {u: s[-1] for u, s in sequences.items()})


def test_refit_trains_the_seed_again_with_the_validation_targets_for_the_chosen_epochs(tmp_path):
    cat = ItemCatalog.from_items([Item(str(i), str(i)) for i in range(12)])
    train_sequences, valid, test_histories, test = leave_last_out_of_random_users()
    config = TrainConfig(dim=8, sequence_length=4, epochs=3, patience=3, batch_size=8, members=2)
    [run] = train_seeds(train_sequences, valid, test_histories, test, cat, config, [0],
                        artifacts=tmp_path, refit=True)
    assert run.refit_epochs == best_epochs(run.epochs) and len(run.refit_epochs) == 2
    seed_dir = tmp_path / "checkpoints" / "seed0"
    assert (seed_dir / "selection" / "best.pt").is_file() and (seed_dir / "best.pt").is_file()
    # the seed's model: the same seed trained on the test histories (which hold the validation
    # targets) for the epochs validation chose, and nothing else
    histories, targets = build_examples(test_histories, cat, 4)
    assert set(cat.indices_of(sorted(set(valid.values())))) <= set(targets.tolist())
    seed_everything(0)
    expected = new_model(cat, config)
    train(expected, InMemoryBatches(histories, targets, 8, seed=0), replace(config, seed=0),
          log_q=target_log_frequencies(targets, cat.num_embeddings), member_epochs=run.refit_epochs)
    for name, value in expected.state_dict().items():
        assert torch.equal(run.model.state_dict()[name], value), name
    saved = torch.load(seed_dir / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[name], value) for name, value in expected.state_dict().items())
    assert set(run.test) >= {"recall@10", "ndcg@10"}

    [plain] = train_seeds(train_sequences, valid, test_histories, test, cat, config, [0],
                          artifacts=tmp_path / "plain", refit=False)
    assert plain.refit_epochs is None and plain.epochs == run.epochs
    selection = torch.load(seed_dir / "selection" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(selection[name], value) for name, value in plain.model.state_dict().items())
    assert not all(torch.equal(selection[name], value) for name, value in run.model.state_dict().items())
