"""Publish cold items as version 2 while Triton serves version 1, load it, and serve it."""

import shutil

import numpy as np
import tritonclient.grpc as grpcclient

from export.triton.cold_items import publish_cold_items
from features import contract as sig
from features.catalog import Item, ItemCatalog
from features.model_inputs import build_inputs
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
        length = exported.result.report["train"]["config"]["sequence_length"]
        inputs = build_inputs(["cold-1"], catalog, length, catalog.num_items - 1, exclude=["cold-1"])
        with grpcclient.InferenceServerClient(triton.grpc_url) as client:
            result = client.infer(sig.RECOMMEND, inputs.infer_inputs(grpcclient))
        ids, scores = result.as_numpy(sig.ITEM_INDEX)[0], result.as_numpy(sig.SCORE)[0]
        assert catalog.index_of("cold-2") in set(ids.tolist()) and cold not in set(ids.tolist())
        assert np.isfinite(scores).all()
