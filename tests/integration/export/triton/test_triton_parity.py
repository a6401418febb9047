"""Triton's `recommend` ensemble and `recommend_fused` return what the in-process PyTorch model
computes, event types included."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.triton.repository import ServingConfig, model_configs, read_config
from features import contract as sig
from features.behaviour import PAD_TYPE, type_code
from features.catalog import FIRST_ITEM_INDEX, PAD_INDEX
from features.model_inputs import ModelInputs, build_inputs, stack_inputs
from tests.support.ranking import assert_same_ranking

K = 10


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def requests(exported) -> list[ModelInputs]:
    """The request the gateway sends for each of 24 real users: their steps (items with event
    types), seen items excluded."""
    dataset = exported.result.dataset
    catalog, L = dataset.catalog, exported.result.report["train"]["config"]["sequence_length"]
    steps = dataset.user_steps()
    return [build_inputs(steps[u], catalog, L, K, exclude=steps[u]) for u in sorted(steps)[:24]]


def reference(model, inputs: ModelInputs, k: int = K):
    """Eager PyTorch + numpy top-k: independent of the exported TopKRetrieval module."""
    with torch.no_grad():
        users = model.user_tower(torch.from_numpy(inputs.history),
                                 torch.from_numpy(inputs.history_types)).numpy()
        items = model.item_embeddings().numpy()
    scores = users @ items.T
    scores[:, :FIRST_ITEM_INDEX] = -np.inf
    for row, ex in enumerate(inputs.exclude):
        scores[row, ex[ex >= FIRST_ITEM_INDEX]] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


@pytest.fixture(params=[sig.RECOMMEND, sig.RECOMMEND_FUSED])
def model_name(request):
    """The ensemble and the fused model must give the same answers."""
    return request.param


def infer(client, inputs: ModelInputs, model=sig.RECOMMEND):
    result = client.infer(model, inputs.infer_inputs(grpcclient))
    return result.as_numpy(sig.ITEM_INDEX), result.as_numpy(sig.SCORE)


def assert_matches_pytorch(ids, scores, ref_ids, ref_scores):
    """Triton against eager PyTorch: another computation, so scores to within 1e-4; items may
    swap only where tied to within float error, and that rarely: at most 5 % of all places (so
    compare whole batches, not row by row, or one legitimate swap among 10 places fails)."""
    assert_same_ranking(ids, scores, ref_ids, ref_scores, score_atol=1e-4, max_moved=0.05)


def test_batch_of_one_matches_pytorch(exported, client, requests, model_name):
    batch = stack_inputs(requests)
    ref_ids, ref_scores = reference(exported.result.model, batch)
    answers = [infer(client, row, model=model_name) for row in requests]
    ids, scores = np.concatenate([i for i, _ in answers]), np.concatenate([s for _, s in answers])
    assert_matches_pytorch(ids, scores, ref_ids, ref_scores)
    assert not any(set(ids[row]) & set(batch.exclude[row]) for row in range(len(requests)))


def test_client_batch_and_concurrent_requests_match_pytorch(exported, client, triton, requests,
                                                             model_name):
    batch = stack_inputs(requests)
    ref_ids, ref_scores = reference(exported.result.model, batch)
    ids, scores = infer(client, batch, model=model_name)  # one request, batch of 24
    assert_matches_pytorch(ids, scores, ref_ids, ref_scores)

    def one(row):
        # each thread its own client: a sync client is not shared across threads
        with grpcclient.InferenceServerClient(triton.grpc_url) as c:
            return infer(c, row, model=model_name)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, requests))
    ids, scores = np.concatenate([i for i, _ in results]), np.concatenate([s for _, s in results])
    assert_matches_pytorch(ids, scores, ref_ids, ref_scores)


def test_k_beyond_catalog_fails_that_request_only(exported, client, requests, model_name):
    too_many = dataclasses.replace(
        requests[0], k=np.array([[exported.result.dataset.catalog.num_items + 1]], np.int32))
    with pytest.raises(InferenceServerException, match="catalog size"):
        infer(client, too_many, model=model_name)
    ids, _ = infer(client, requests[0], model=model_name)  # the server is still fine
    assert ids.shape == (1, K)


def test_out_of_vocabulary_ids_are_bucketed_not_fatal(client, requests):
    # Deliberately raw: indices outside the catalog, which build_inputs never produces (it maps
    # unknown item ids to the OOV bucket); the model must bucket them itself, not fail.
    hostile = requests[0].history.copy()
    hostile[0, -3:] = [10**9, -7, 10**6]
    ids, scores = infer(client, dataclasses.replace(requests[0], history=hostile))
    assert ids.shape == (1, K) and np.isfinite(scores).all()


def test_event_types_reach_the_served_models(exported, client, requests, model_name):
    """The same items under a type the model never trained with ("unknown": no effect) score
    otherwise than under their real types, in Triton as in PyTorch: HISTORY_TYPES is wired
    through the ensemble and the fused model, not dropped or swapped with another input."""
    batch = stack_inputs(requests)
    real = batch.history_types[batch.history != PAD_INDEX]
    assert (real != type_code("unknown")).any(), "the training data should carry event types"
    unknown = np.where(batch.history == PAD_INDEX, PAD_TYPE, type_code("unknown"))
    retyped = dataclasses.replace(batch, history_types=unknown)
    ids, scores = infer(client, batch, model=model_name)
    other_ids, other_scores = infer(client, retyped, model=model_name)
    assert_matches_pytorch(other_ids, other_scores, *reference(exported.result.model, retyped))
    assert not np.allclose(scores, other_scores, atol=1e-4)


def test_every_generated_config_parses_back_and_is_what_triton_loaded(exported, triton):
    train = exported.result.report["train"]["config"]
    item_item = exported.result.report["train"]["item_item"]
    # an ensemble's vectors are its members' side by side, then the item-item term's columns
    dim = train["dim"] * train["members"] + (item_item["rank"] if item_item["used"] else 0)
    expected = model_configs(train["sequence_length"], dim, ServingConfig())
    index = {m["name"]: m for m in triton.repository_index()}
    for name, want in expected.items():
        assert read_config(exported.repository / name / "config.pbtxt") == want
        assert index[name]["state"] == "READY", index[name]
        with urllib.request.urlopen(f"{triton.http_url}/v2/models/{name}/config") as response:
            loaded = json.load(response)
        assert loaded["max_batch_size"] == want.max_batch_size
        assert [(t["name"], [int(d) for d in t["dims"]]) for t in loaded["input"]] == [
            (t.name, list(t.dims)) for t in want.input]
        if name in (sig.USER_TOWER, sig.RECOMMEND, sig.RECOMMEND_FUSED):
            types = next(t for t in loaded["input"] if t["name"] == sig.HISTORY_TYPES)
            assert types["data_type"] == "TYPE_INT64" and [int(d) for d in types["dims"]] == [
                train["sequence_length"]]
