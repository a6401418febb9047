"""A catalog above the exact-search threshold is served through the ANN index inside Triton."""

import numpy as np
import torch
import tritonclient.grpc as grpcclient

from export.model.ann import EXACT_MAX_ITEMS
from export.model.towers import TwoTower
from export.triton.repository import export_repository
from features import contract as sig
from features.catalog import FIRST_ITEM_INDEX, Item, ItemCatalog
from stack.triton import TritonServer

L, K = 8, 10


def test_large_catalog_uses_the_index_and_honours_exclusions(tmp_path):
    n = EXACT_MAX_ITEMS + 20_000
    catalog = ItemCatalog.from_items(
        [Item(f"i{j}", f"item {j}", (f"c{j % 7}",), 1990 + j % 20) for j in range(n)])
    torch.manual_seed(0)
    model = TwoTower(catalog, dim=16).eval()
    with torch.no_grad():  # distinct items: an untrained model's items are near-ties otherwise
        model.item_tower.encoder.id_embedding.weight.normal_(std=1.0)
    export_repository(model, catalog, tmp_path / "repo", sequence_length=L)
    assert (tmp_path / "repo" / sig.RETRIEVE / "1" / "index.faiss").is_file()

    rng = np.random.default_rng(0)
    histories = rng.integers(FIRST_ITEM_INDEX, catalog.num_embeddings, (16, L))
    with torch.no_grad():
        scores = (model.user_tower(torch.from_numpy(histories)) @ model.item_embeddings().T).numpy()
    scores[:, :FIRST_ITEM_INDEX] = -np.inf
    # exclude each user's exact top 5: the index must over-fetch past them
    exclude = np.argsort(-scores, axis=1)[:, :5].astype(np.int64)
    np.put_along_axis(scores, exclude, -np.inf, axis=1)
    exact = np.argsort(-scores, axis=1)[:, :K]

    with TritonServer(tmp_path / "repo", log_path=tmp_path / "triton.log") as triton, \
            grpcclient.InferenceServerClient(triton.grpc_url) as client:
        for model_name in (sig.RECOMMEND, sig.RECOMMEND_FUSED):
            inputs = [grpcclient.InferInput(sig.HISTORY, [16, L], "INT64"),
                      grpcclient.InferInput(sig.EXCLUDE, [16, 5], "INT64"),
                      grpcclient.InferInput(sig.K, [16, 1], "INT32")]
            inputs[0].set_data_from_numpy(histories.astype(np.int64))
            inputs[1].set_data_from_numpy(exclude)
            inputs[2].set_data_from_numpy(np.full((16, 1), K, np.int32))
            ids = client.infer(model_name, inputs).as_numpy(sig.ITEM_INDEX)
            assert ids.shape == (16, K)
            assert not any(set(ids[r]) & set(exclude[r]) for r in range(16))
            recall = np.mean([len(set(ids[r]) & set(exact[r])) / K for r in range(16)])
            assert recall >= 0.8, (model_name, recall)
