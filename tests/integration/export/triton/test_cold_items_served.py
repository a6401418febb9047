"""Publish cold items as version 2 while Triton serves version 1, load it, and serve it."""

import shutil

import numpy as np
import tritonclient.grpc as grpcclient

from export.triton.cold_items import publish_cold_items
from features import contract as sig
from features.catalog import Item, ItemCatalog
from stack.triton import TritonServer

NEW = [Item("cold-1", "A New Horror Film", ("Horror", "Thriller"), 1998, None),
       Item("cold-2", "A New Musical", ("Musical",), 1997, None)]


def test_cold_items_version_loads_and_is_served(exported, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(exported.repository, repo)
    with TritonServer(repo, log_path=tmp_path / "triton.log") as triton:
        assert triton.is_model_ready(sig.RETRIEVE, "1")
        version = publish_cold_items(repo, exported.artifacts / "checkpoints" / "seed0" / "best.pt", NEW)
        for name in (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED, sig.RECOMMEND):
            triton.load_model(name)  # picks up the new version; the policy serves the newest
        assert triton.is_model_ready(sig.RETRIEVE, str(version))
        assert not triton.is_model_ready(sig.RETRIEVE, "1")

        catalog = ItemCatalog.from_json(repo / sig.RETRIEVE / str(version) / sig.CATALOG_FILE)
        cold = catalog.index_of("cold-1")
        # A user who just watched the cold item: with k = the whole catalog, both cold items
        # are candidates and come back with finite scores.
        history = np.zeros((1, exported.result.report["train"]["config"]["sequence_length"]), np.int64)
        history[0, -1] = cold
        with grpcclient.InferenceServerClient(triton.grpc_url) as client:
            inputs = [grpcclient.InferInput(sig.HISTORY, list(history.shape), "INT64"),
                      grpcclient.InferInput(sig.EXCLUDE, [1, 1], "INT64"),
                      grpcclient.InferInput(sig.K, [1, 1], "INT32")]
            inputs[0].set_data_from_numpy(history)
            inputs[1].set_data_from_numpy(np.array([[cold]], np.int64))
            inputs[2].set_data_from_numpy(np.array([[catalog.num_items - 1]], np.int32))
            result = client.infer(sig.RECOMMEND, inputs)
        ids, scores = result.as_numpy(sig.ITEM_INDEX)[0], result.as_numpy(sig.SCORE)[0]
        assert catalog.index_of("cold-2") in set(ids.tolist()) and cold not in set(ids.tolist())
        assert np.isfinite(scores).all()
