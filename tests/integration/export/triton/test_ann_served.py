"""A catalog above the exact-search threshold is served through the ANN index inside Triton."""

import numpy as np
import torch
import tritonclient.grpc as grpcclient

from export.model.ann import EXACT_MAX_ITEMS
from export.model.towers import TwoTower
from export.triton.repository import export_repository
from features import contract as sig
from features.behaviour import STEP_TYPES, Step
from features.catalog import FIRST_ITEM_INDEX, Item, ItemCatalog
from features.model_inputs import build_inputs, stack_inputs
from stack.triton import TritonServer
from tests.support.models import with_type_effects

L, K = 8, 10


def test_large_catalog_uses_the_index_and_honours_exclusions(tmp_path):
    n = EXACT_MAX_ITEMS + 20_000
    catalog = ItemCatalog.from_items(
        [Item(f"i{j}", f"item {j}", (f"c{j % 7}",), 1990 + j % 20) for j in range(n)])
    torch.manual_seed(0)
    model = with_type_effects(TwoTower(catalog, dim=16, sequence_length=L)).eval()
    with torch.no_grad():  # distinct items: an untrained model's items are near-ties otherwise
        model.item_tower.encoder.id_embedding.weight.normal_(std=1.0)
    export_repository(model, catalog, tmp_path / "repo", sequence_length=L)
    assert (tmp_path / "repo" / sig.RETRIEVE / "1" / "index.faiss").is_file()

    rng = np.random.default_rng(0)
    histories = [[Step(catalog.items[j].item_id, rng.choice(STEP_TYPES)) for j in row]
                 for row in rng.integers(0, catalog.num_items, (16, L))]
    requests = stack_inputs([build_inputs(h, catalog, L, K) for h in histories])
    with torch.no_grad():
        users = model.user_tower(torch.from_numpy(requests.history),
                                 torch.from_numpy(requests.history_types))
        scores = (users @ model.item_embeddings().T).numpy()
    scores[:, :FIRST_ITEM_INDEX] = -np.inf
    # exclude each user's exact top 5: the index must over-fetch past them
    exclude = np.argsort(-scores, axis=1)[:, :5]
    np.put_along_axis(scores, exclude, -np.inf, axis=1)
    exact = np.argsort(-scores, axis=1)[:, :K]
    batch = stack_inputs([build_inputs(h, catalog, L, K, exclude=[catalog.item_at(i).item_id for i in ex])
                          for h, ex in zip(histories, exclude, strict=True)])

    with TritonServer(tmp_path / "repo", log_path=tmp_path / "triton.log") as triton, \
            grpcclient.InferenceServerClient(triton.grpc_url) as client:
        for model_name in (sig.RECOMMEND, sig.RECOMMEND_FUSED):
            ids = client.infer(model_name, batch.infer_inputs(grpcclient)).as_numpy(sig.ITEM_INDEX)
            assert ids.shape == (16, K)
            assert not any(set(ids[r]) & set(exclude[r]) for r in range(16))
            recall = np.mean([len(set(ids[r]) & set(exact[r])) / K for r in range(16)])
            assert recall >= 0.8, (model_name, recall)
