import pytest
import torch

from export.model.item_item import Blended, fit_item_item
from export.model.towers import TwoTower
from export.train import TrainConfig, new_model, save_checkpoint
from export.triton.cold_items import extend_catalog, publish_cold_items
from export.triton.repository import ServingConfig, export_repository
from features import contract as sig
from features.catalog import Item, ItemCatalog

NEW = [Item("g", "Golf", ("Comedy",), 1995, 9.99), Item("h", "Hotel", ("Brand-new",), 2030, 1e6)]


@pytest.fixture
def published(tmp_path, catalog):
    torch.manual_seed(0)
    model = TwoTower(catalog, dim=8).eval()
    checkpoint = tmp_path / "best.pt"
    config = TrainConfig(dim=8, members=1)
    save_checkpoint(model, torch.optim.Adam(model.parameters()), config, [], checkpoint)
    repo = tmp_path / "repo"
    serving = ServingConfig(warmup=False)
    export_repository(model, catalog, repo, sequence_length=4, serving=serving)
    version = publish_cold_items(repo, checkpoint, NEW, serving)
    return repo, version


def load(repo, name, version):
    return torch.jit.load(str(repo / name / str(version) / "model.pt"))


def test_new_version_adds_items_and_keeps_every_trained_embedding(published, catalog):
    repo, version = published
    assert version == 2
    old, new = load(repo, sig.RETRIEVE, 1), load(repo, sig.RETRIEVE, 2)
    assert new.num_items() == catalog.num_items + 2
    rows = catalog.num_embeddings
    torch.testing.assert_close(new.item_embeddings()[:rows], old.item_embeddings())
    extended = ItemCatalog.from_json(repo / sig.RETRIEVE / "2" / sig.CATALOG_FILE)
    assert extended.index_of("g") == rows and extended.categories[-1] == "Brand-new"


def test_a_cold_item_is_retrievable_by_its_own_embedding(published):
    repo, _ = published
    retrieve = load(repo, sig.RETRIEVE, 2)
    extended = ItemCatalog.from_json(repo / sig.RETRIEVE / "2" / sig.CATALOG_FILE)
    g = extended.index_of("g")
    query = retrieve.item_embeddings()[g:g + 1]
    index, _ = retrieve(query, torch.zeros((1, 1), dtype=torch.long), torch.tensor([[1]]))
    assert index.item() == g


def test_user_tower_accepts_histories_with_new_items(published):
    repo, _ = published
    user_tower = load(repo, sig.USER_TOWER, 2)
    out = user_tower(torch.tensor([[0, 2, 8, 9]]), torch.tensor([[0, 1, 2, 5]]))  # 8, 9: the cold items
    assert torch.isfinite(out).all()


def test_the_model_is_rebuilt_with_the_checkpoints_architecture(tmp_path, catalog):
    """Not the default tower: a pooled, id-only model must load its own weights and keep its
    answers for every trained item."""
    torch.manual_seed(0)
    config = TrainConfig(dim=8, sequence_length=4, user_tower="pooled", use_types=False)
    model = new_model(catalog, config).eval()
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(model, torch.optim.Adam(model.parameters()), config, [], checkpoint)
    repo = tmp_path / "repo"
    export_repository(model, catalog, repo, sequence_length=4, serving=ServingConfig(warmup=False))
    version = publish_cold_items(repo, checkpoint, NEW, ServingConfig(warmup=False))
    history, types = torch.tensor([[0, 2, 3, 4]]), torch.tensor([[0, 1, 4, 5]])
    old, new = load(repo, sig.USER_TOWER, 1), load(repo, sig.USER_TOWER, version)
    torch.testing.assert_close(new(history, types), old(history, types))


def test_items_already_in_the_catalog_are_refused(catalog):
    with pytest.raises(ValueError, match="already in the catalog"):
        extend_catalog(catalog, [Item("a", "again")])


def test_the_what_follows_table_grows_with_zero_rows_for_new_items(catalog):
    from export.triton.cold_items import extend_model
    torch.manual_seed(0)
    model = TwoTower(catalog, dim=8, sequence_length=4, transition=True).eval()
    with torch.no_grad():
        model.user_tower.next_embedding.weight.normal_()
    trained = model.user_tower.next_embedding.weight.clone()
    extended = extend_catalog(catalog, NEW)
    extend_model(model, catalog, extended)
    grown = model.user_tower.next_embedding.weight
    assert grown.shape[0] == extended.num_embeddings
    torch.testing.assert_close(grown[:catalog.num_embeddings], trained)
    assert not grown[catalog.num_embeddings:].any()


def test_a_blended_model_is_published_with_its_item_item_term_and_zero_rows_for_new_items(tmp_path, catalog):
    torch.manual_seed(0)
    histories = {"u1": ["a", "b", "c"], "u2": ["a", "b", "d"], "u3": ["b", "c", "e", "f"]}
    towers = TwoTower(catalog, dim=8, sequence_length=4)
    model = Blended(towers, fit_item_item(histories, catalog), 0.5).eval()
    config = TrainConfig(dim=8, sequence_length=4, members=1, item_item_weight=0.5)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(model, None, config, [], checkpoint)
    repo = tmp_path / "repo"
    serving = ServingConfig(warmup=False)
    export_repository(model, catalog, repo, sequence_length=4, serving=serving)
    version = publish_cold_items(repo, checkpoint, NEW, serving)

    retrieve = load(repo, sig.RETRIEVE, version)
    rows = catalog.num_embeddings
    with torch.no_grad():
        trained = model.item_embeddings()
    assert retrieve.item_embeddings().shape == (rows + len(NEW), trained.shape[1])
    torch.testing.assert_close(retrieve.item_embeddings()[:rows], trained)
    assert trained[:, 8:].any() and not retrieve.item_embeddings()[rows:, 8:].any()  # no term for new items
