import torch

from export.model.retrieval import TopKRetrieval
from export.model.towers import TwoTower
from features.behaviour import NUM_TYPE_CODES, PAD_TYPE, type_code
from features.catalog import FIRST_ITEM_INDEX, PAD_INDEX


def views(history: torch.Tensor) -> torch.Tensor:
    """Type codes for ``history``: "view" on every step, PAD where the item is PAD."""
    return torch.where(history == PAD_INDEX, PAD_TYPE, type_code("view"))


def test_embeddings_are_unit_norm_and_ids_out_of_range_are_bucketed(catalog):
    model = TwoTower(catalog, dim=8).eval()
    history = torch.tensor([[PAD_INDEX, 2, 3], [999, -4, 5]])  # second row: hostile ids
    types = torch.tensor([[PAD_TYPE, 1, 2], [NUM_TYPE_CODES, -1, 10**6]])  # and hostile types
    users = model.user_tower(history, types)
    assert users.shape == (2, 8)
    torch.testing.assert_close(users.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(model.item_embeddings().norm(dim=1)[FIRST_ITEM_INDEX:],
                               torch.ones(catalog.num_items))


def test_torchscript_matches_eager(catalog):
    model = TwoTower(catalog, dim=8).eval()
    history = torch.randint(0, catalog.num_embeddings, (4, 5))
    types = torch.randint(0, NUM_TYPE_CODES, (4, 5))
    scripted = torch.jit.script(model.user_tower)
    torch.testing.assert_close(scripted(history, types), model.user_tower(history, types))


def test_attention_read_out_is_the_per_step_key_and_value_form(catalog):
    # The tower projects the query onto the key space and the weighted mean into the value
    # space once per user; the textbook form projects every step. Both are the same function.
    torch.manual_seed(0)
    tower = TwoTower(catalog, dim=8, sequence_length=5).eval().user_tower
    with torch.no_grad():
        for parameter in tower.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)  # away from the zero-initialised tables
        history = torch.tensor([[PAD_INDEX, PAD_INDEX, 2, 3, 4], [5, 6, 7, 2, 3]])
        types = views(history)
        items = tower.encoder(history) + tower.type_embedding(types)
        present = (history != PAD_INDEX).float()
        last = items[:, -1] * present[:, -1:]
        keys = tower.key(items + tower.positions)  # every step projected
        logits = (keys @ tower.query(last).unsqueeze(-1)).squeeze(-1) * tower.scale
        weights = torch.softmax(logits.masked_fill(present == 0, -1e9), dim=-1) * present
        per_step = (weights.unsqueeze(-1) * tower.value(items)).sum(1)
        captured = []
        handle = tower.head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        tower(history, types)
        handle.remove()
        torch.testing.assert_close(captured[0][:, -8:], per_step, atol=1e-6, rtol=1e-5)


def test_retrieval_never_returns_excluded_or_reserved_rows(catalog):
    model = TwoTower(catalog, dim=8).eval()
    with torch.no_grad():
        retrieval = torch.jit.script(TopKRetrieval(model.item_embeddings()))
        history = torch.tensor([[2, 3, 4]])
        users = model.user_tower(history, views(history))
        exclude = torch.tensor([[2, 3, PAD_INDEX, 10_000]])  # out-of-range exclusions are ignored
        index, score = retrieval(users, exclude, torch.tensor([[catalog.num_items - 2]]))
    returned = set(index[0].tolist())
    assert returned == set(range(FIRST_ITEM_INDEX, catalog.num_embeddings)) - {2, 3}
    assert torch.all(score[0][:-1] >= score[0][1:])
    assert retrieval.num_items() == catalog.num_items


def test_sampled_softmax_with_logq_lowers_popular_negatives(catalog):
    import numpy as np

    from export.train import TrainConfig, sampled_softmax_loss, target_log_frequencies

    torch.manual_seed(0)
    model = TwoTower(catalog, dim=8).eval()
    targets = torch.tensor([2, 3, 4, 2])  # item 2 twice: not a negative for itself
    history = torch.tensor([[2, 3], [3, 4], [4, 5], [5, 6]])
    users = model.user_tower(history, views(history))
    log_q = target_log_frequencies(np.array([2] * 50 + [3, 4, 5, 6, 7]), catalog.num_embeddings)
    plain = sampled_softmax_loss(model, users, targets, TrainConfig(logq_correction=False), log_q)
    corrected = sampled_softmax_loss(model, users, targets, TrainConfig(logq_correction=True), log_q)
    mixed = sampled_softmax_loss(model, users, targets, TrainConfig(uniform_negatives=4), log_q,
                                 torch.Generator().manual_seed(0))
    assert torch.isfinite(plain) and torch.isfinite(corrected) and torch.isfinite(mixed)
    assert not torch.isclose(plain, corrected)


def test_training_improves_the_loss_and_restores_the_best_epoch(catalog, tmp_path):
    import numpy as np

    from export.data.loaders import InMemoryBatches
    from export.train import TrainConfig, load_checkpoint, target_log_frequencies, train

    rng = np.random.default_rng(0)
    items = rng.integers(2, catalog.num_embeddings, (64, 3))
    types = rng.integers(1, NUM_TYPE_CODES, (64, 3))
    histories = np.concatenate([items, types], axis=1)  # packed rows, as export.train lays them out
    targets = items[:, -1].copy()  # learnable: the next item is the last one again
    calls = iter([0.1, 0.3, 0.2, 0.2])
    model = TwoTower(catalog, dim=8)
    config = TrainConfig(epochs=4, patience=2, loss="sampled", learning_rate=0.05)
    records = train(model, InMemoryBatches(histories, targets, 16), config,
                    log_q=target_log_frequencies(targets, catalog.num_embeddings),
                    validate=lambda m: {"recall@10": next(calls)}, checkpoint_dir=tmp_path)
    assert len(records) == 4 and records[1].get("best")
    assert records[-1]["loss"] < records[0]["loss"]
    best = load_checkpoint(TwoTower(catalog, dim=8), tmp_path / "best.pt")
    assert [e["epoch"] for e in best["epochs"]] == [1, 2]


def test_id_dropout_drops_id_vectors_only_while_training(catalog):
    torch.manual_seed(0)
    model = TwoTower(catalog, dim=8, id_dropout=1.0)  # every id vector dropped in training
    encoder = model.item_tower.encoder
    index = torch.tensor([2, 3, 4])
    with torch.no_grad():
        attributes_only = (encoder.category_projection(encoder.categories[index])
                           + encoder.year_embedding(encoder.years[index])
                           + encoder.price_embedding(encoder.prices[index]))
        torch.testing.assert_close(encoder(index), attributes_only)
        model.eval()  # serving: ids always count
        torch.testing.assert_close(encoder(index), attributes_only + encoder.id_embedding(index))
    scripted = torch.jit.script(model.user_tower)  # the exported tower stays scriptable
    history = index[None]
    torch.testing.assert_close(scripted(history, views(history)), model.user_tower(history, views(history)))
