from dataclasses import replace

import numpy as np
import torch

from export.data.examples import build_examples
from export.data.loaders import InMemoryBatches
from export.model.ensemble import TowerEnsemble
from export.model.towers import TwoTower
from export.train import (
    TrainConfig,
    config_from_dict,
    encode_histories,
    member_seed,
    new_model,
    target_log_frequencies,
    train,
    user_vectors,
)
from features.behaviour import type_code
from features.model_inputs import build_inputs
from tests.unit.export.data.test_examples import SHOP, catalog


def test_training_rows_encode_exactly_what_the_gateway_sends():
    cat = catalog()
    history = SHOP["u"][:5]
    served = build_inputs(history, cat, 4, 3)
    row = encode_histories([history], cat, 4)[0].numpy()
    assert np.array_equal(row[:4], served.history[0]) and np.array_equal(row[4:], served.history_types[0])


def test_ablations_change_what_the_user_tower_reads():
    cat = catalog()
    rows = encode_histories([SHOP["u"][:5]], cat, 4)
    retyped = rows.clone()
    retyped[0, 4:] = type_code("view")
    for user_tower, use_types, differs in (("attention", True, True), ("pooled", True, True),
                                           ("attention", False, False)):
        torch.manual_seed(0)
        model = new_model(cat, TrainConfig(dim=8, sequence_length=4, user_tower=user_tower,
                                           use_types=use_types, members=1)).eval()
        with torch.no_grad():  # give the zero-initialised type tables something to say
            model.user_tower.type_embedding.weight.normal_()
            a, b = user_vectors(model, rows), user_vectors(model, retyped)
        assert (not torch.allclose(a, b)) == differs, (user_tower, use_types)


def test_new_model_reads_a_checkpoint_config_dict():
    cat = catalog()
    config = TrainConfig(dim=8, sequence_length=6, user_tower="pooled").as_dict() | {"extra": 1}
    model = new_model(cat, config)
    assert isinstance(model, TowerEnsemble) and len(model.members) == config["members"]
    assert all(m.user_tower.positions.shape == (6, 8) and not m.user_tower.attention
               for m in model.members)
    del config["members"]  # a checkpoint from before ensembles: one model
    assert isinstance(new_model(cat, config), TwoTower)
    # one from before whole-history examples was trained without them; a run's own is decided
    assert config_from_dict({}).whole_history is False
    assert config_from_dict({"whole_history": True}).whole_history is True


def test_an_ensemble_scores_the_mean_of_its_members_cosines_and_scripts():
    cat = catalog()
    torch.manual_seed(0)
    model = new_model(cat, TrainConfig(dim=8, sequence_length=4, members=3)).eval()
    rows = encode_histories([SHOP["u"][:3], SHOP["u"][:5]], cat, 4)
    with torch.no_grad():
        users, items = user_vectors(model, rows), model.item_embeddings()
        mean_cosine = torch.stack([user_vectors(m, rows) @ m.item_embeddings().T
                                   for m in model.members]).mean(0)
        assert users.shape == (2, 24) and items.shape == (cat.num_embeddings, 24)
        torch.testing.assert_close(users @ items.T, mean_cosine)
        torch.testing.assert_close(model.item_tower(model.members[0].all_items), items)
        scripted = torch.jit.script(model.user_tower)
        torch.testing.assert_close(scripted(rows[:, :4], rows[:, 4:]), users)
    # the weights are stored once, under members.<i>.
    assert all(name.startswith("members.") for name in model.state_dict())


def test_members_are_trained_one_after_another_each_as_one_model(tmp_path):
    cat = catalog()
    histories, targets = build_examples(SHOP, cat, 4)
    config = TrainConfig(dim=8, sequence_length=4, epochs=2, batch_size=4, members=2)
    log_q = target_log_frequencies(targets, cat.num_embeddings)
    torch.manual_seed(0)
    model = new_model(cat, config)
    torch.manual_seed(0)
    alone = new_model(cat, replace(config, members=1))  # the same weights as member 0
    records = train(model, InMemoryBatches(histories, targets, 4, seed=0), config, log_q=log_q,
                    checkpoint_dir=tmp_path)
    assert [(r["member"], r["epoch"]) for r in records] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    # member 0 is the run's seed's own model; member 1 has its own seed and batch order
    train(alone, InMemoryBatches(histories, targets, 4, seed=0), replace(config, members=1),
          log_q=log_q)
    for name, value in alone.state_dict().items():
        assert torch.equal(model.members[0].state_dict()[name], value), name
    assert member_seed(0, 1) != member_seed(0, 0) and member_seed(1, 1) != member_seed(0, 1)
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["config"]["members"] == 2
    member = torch.load(tmp_path / "member1" / "last.pt", weights_only=True)
    assert member["config"]["members"] == 1 and member["config"]["seed"] == member_seed(0, 1)
    new_model(cat, member["config"]).load_state_dict(member["model"])  # one model's checkpoint
    reloaded = new_model(cat, saved["config"])
    reloaded.load_state_dict(saved["model"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.item_embeddings(), model.item_embeddings())


def test_transition_view_reads_the_last_steps_own_successor_vector_and_scripts():
    cat = catalog()
    model = new_model(cat, TrainConfig(dim=8, sequence_length=4, transition=True, members=1)).eval()
    rows = encode_histories([SHOP["u"][:3]], cat, 4)
    before = user_vectors(model, rows)
    with torch.no_grad():
        model.user_tower.next_embedding.weight[cat.index_of("1")].normal_()  # not the last step
    assert torch.allclose(user_vectors(model, rows), before)
    with torch.no_grad():
        model.user_tower.next_embedding.weight[cat.index_of("2")].normal_()  # the last step
    after = user_vectors(model, rows)
    assert not torch.allclose(after, before)
    scripted = torch.jit.script(model.user_tower)
    torch.testing.assert_close(scripted(rows[:, :4], rows[:, 4:]), after)


def test_ema_validates_keeps_and_returns_the_moving_average_of_the_trained_weights(tmp_path,
                                                                                   monkeypatch):
    import export.train as train_module

    cat = catalog()
    histories, targets = build_examples(SHOP, cat, 4, whole_history=True)  # 5 rows: 3 batches
    decay = 0.9
    config = TrainConfig(dim=8, sequence_length=4, epochs=2, batch_size=2, members=1,
                         ema_decay=decay)
    raw_steps = []  # the trained (not averaged) weights after every step
    step = train_module.train_step

    def recording_step(model, *args, **kwargs):
        loss = step(model, *args, **kwargs)
        raw_steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return loss

    monkeypatch.setattr(train_module, "train_step", recording_step)
    scores = iter([0.5, 0.1])  # epoch 1 is the best
    validated = []

    def validate(m):
        validated.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return {"recall@10": next(scores), "ndcg@10": 0.0}

    torch.manual_seed(0)
    model = new_model(cat, config)
    batches = InMemoryBatches(histories, targets, 2, seed=0)
    train(model, batches, config, log_q=target_log_frequencies(targets, cat.num_embeddings),
          validate=validate, checkpoint_dir=tmp_path)
    per_epoch = len(raw_steps) // 2
    assert per_epoch == len(batches) > 1

    def average_after(n):  # the average the definition gives after n steps
        average = {k: v.clone() for k, v in raw_steps[0].items()}
        for weights in raw_steps[1:n]:
            for k, v in weights.items():
                if v.is_floating_point():
                    average[k] = decay * average[k] + (1 - decay) * v
        return average

    for epoch, seen in enumerate(validated, start=1):  # validation saw the average, not the weights
        expected = average_after(epoch * per_epoch)
        for k, v in seen.items():
            torch.testing.assert_close(v, expected[k], msg=k)
    returned, best = model.state_dict(), torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    last = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    for k, v in average_after(per_epoch).items():  # the best epoch's average is kept and saved
        torch.testing.assert_close(returned[k], v, msg=k)
        torch.testing.assert_close(best[k], v, msg=k)
        torch.testing.assert_close(last[k], raw_steps[-1][k], msg=k)  # last.pt: the trained weights
    assert not torch.equal(returned["item_tower.encoder.id_embedding.weight"],
                           raw_steps[per_epoch - 1]["item_tower.encoder.id_embedding.weight"])
