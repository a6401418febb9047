"""The `similar_items` model in the Triton repository: its config (both targets), its TorchScript,
the ANN index it shares with retrieve, and what the rollout does with repositories without it."""

from __future__ import annotations

import shutil

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.model.ann import RetrievalIndexConfig, load_index
from export.model.retrieval import SimilarItems, TopKRetrieval
from export.model.towers import TwoTower
from export.triton.repository import (
    ServingConfig,
    export_repository,
    model_configs,
    read_config,
    write_config,
)
from export.triton.rollout import Rollout, RolloutError
from features import contract as sig

SEQ = 5


@pytest.mark.parametrize("target", ["python", "libtorch"])
def test_config_is_generated_and_parses_back(tmp_path, target):
    config = model_configs(sequence_length=SEQ, dim=8, serving=ServingConfig(), target=target)[
        sig.SIMILAR_ITEMS]
    path = write_config(config, tmp_path / sig.SIMILAR_ITEMS)
    assert read_config(path) == config
    assert text_format.Parse(path.read_text(), mc.ModelConfig()).name == sig.SIMILAR_ITEMS
    names = sig.tensor_names(text_to_json(config))
    assert list(names.inputs) == [sig.ITEM, sig.EXCLUDE, sig.K]
    assert list(names.outputs) == [sig.ITEM_INDEX, sig.SCORE]
    item = config.input[0]
    assert (item.data_type, list(item.dims)) == (mc.TYPE_INT64, [1])
    assert set(config.model_warmup[0].inputs) == {t.name for t in config.input}
    if target == "libtorch":
        assert config.platform == "pytorch_libtorch"
        assert [t.name for t in config.input] == ["INPUT__0", "INPUT__1", "INPUT__2"]
    else:
        assert config.backend == "python"


def text_to_json(config: mc.ModelConfig) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def test_the_exported_model_answers_as_similar_items_in_pytorch(tmp_path, catalog):
    torch.manual_seed(0)
    model = TwoTower(catalog, dim=8).eval()
    export_repository(model, catalog, tmp_path, sequence_length=SEQ)
    version = tmp_path / sig.SIMILAR_ITEMS / "1"
    assert {p.name for p in version.iterdir()} >= {"model.pt", "model.py"}
    assert (tmp_path / sig.SIMILAR_ITEMS / "warmup" / "k").is_file()
    served = torch.jit.load(str(version / "model.pt"))
    with torch.no_grad():
        reference = SimilarItems(TopKRetrieval(model.item_embeddings()))
    query = torch.tensor([[catalog.index_of(catalog.items[0].item_id)], [catalog.index_of("nope")]])
    exclude = torch.zeros((2, 3), dtype=torch.int64)
    k = torch.full((2, 1), 3, dtype=torch.int32)
    for a, b in zip(served(query, exclude, k), reference(query, exclude, k), strict=True):
        torch.testing.assert_close(a, b)


def test_an_ann_index_is_shared_with_retrieve(tmp_path, catalog):
    export_repository(TwoTower(catalog, dim=8), catalog, tmp_path, sequence_length=SEQ,
                      index=RetrievalIndexConfig(kind="hnsw"))
    shipped = tmp_path / sig.SIMILAR_ITEMS / "1" / "index.faiss"
    assert load_index(shipped).num_items == catalog.num_items
    assert shipped.read_bytes() == (tmp_path / sig.RETRIEVE / "1" / "index.faiss").read_bytes()


def export(catalog, root, seed=0):
    torch.manual_seed(seed)
    return export_repository(TwoTower(catalog, dim=8).eval(), catalog, root, sequence_length=SEQ)


def without_similar_items(root):
    shutil.rmtree(root / sig.SIMILAR_ITEMS)
    return root


def test_publishing_into_a_repository_without_it_is_a_clear_rollout_error(catalog, tmp_path):
    old = without_similar_items(export(catalog, tmp_path / "old"))
    candidate = export(catalog, tmp_path / "candidate", seed=1)
    with pytest.raises(RolloutError, match="no similar_items model"):
        Rollout(old, "127.0.0.1:1").publish(candidate)
    assert not (old / sig.RETRIEVE / "2").exists()
    live = export(catalog, tmp_path / "live")
    with pytest.raises(RolloutError, match="candidate has no similar_items"):
        Rollout(live, "127.0.0.1:1").publish(without_similar_items(candidate))


def test_a_repository_without_it_keeps_its_other_versioned_models(catalog, tmp_path):
    old = without_similar_items(export(catalog, tmp_path / "old"))
    r = Rollout(old, "127.0.0.1:1", dry_run=True)
    assert set(r.status()["ready"]) == {sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED}
    r._serve_versions({1})  # dry run: writes nothing, loads nothing, but must not trip on it
    assert not (old / sig.SIMILAR_ITEMS).exists()


def test_publishing_between_repositories_that_have_it_copies_it(catalog, tmp_path):
    live = export(catalog, tmp_path / "live")
    assert Rollout(live, "127.0.0.1:1").publish(export(catalog, tmp_path / "c", seed=1)) == 2
    assert (live / sig.SIMILAR_ITEMS / "2" / "model.pt").is_file()
    policy = read_config(live / sig.SIMILAR_ITEMS / "config.pbtxt").version_policy
    assert list(policy.specific.versions) == [1]
