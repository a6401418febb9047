"""Triton's `recommend` ensemble returns what the in-process PyTorch model computes."""

from __future__ import annotations

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
from features.catalog import FIRST_ITEM_INDEX
from features.sequence import encode_history

K = 10


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def requests(exported):
    """(history [L], exclude [E]) for 24 real users, exclusions padded to one width."""
    dataset = exported.result.dataset
    catalog, L = dataset.catalog, exported.result.report["train"]["config"]["sequence_length"]
    sequences = dataset.user_sequences()
    users = sorted(sequences)[:24]
    histories = np.stack([encode_history(sequences[u], catalog, L) for u in users])
    seen = [np.unique(catalog.indices_of(sequences[u])) for u in users]
    width = max(len(s) for s in seen)
    exclude = np.zeros((len(users), width), dtype=np.int64)
    for row, s in enumerate(seen):
        exclude[row, :len(s)] = s
    return histories, exclude


def reference(model, histories: np.ndarray, exclude: np.ndarray, k: int):
    """Eager PyTorch + numpy top-k: independent of the exported TopKRetrieval module."""
    with torch.no_grad():
        users = model.user_tower(torch.from_numpy(histories)).numpy()
        items = model.item_embeddings().numpy()
    scores = users @ items.T
    scores[:, :FIRST_ITEM_INDEX] = -np.inf
    for row, ex in enumerate(exclude):
        scores[row, ex[ex >= FIRST_ITEM_INDEX]] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


@pytest.fixture(params=[sig.RECOMMEND, sig.RECOMMEND_FUSED])
def model_name(request):
    """The ensemble and the fused model must give the same answers."""
    return request.param


def infer(client, histories, exclude, k=K, model=sig.RECOMMEND):
    n = len(histories)
    inputs = [grpcclient.InferInput(sig.HISTORY, list(histories.shape), "INT64"),
              grpcclient.InferInput(sig.EXCLUDE, list(exclude.shape), "INT64"),
              grpcclient.InferInput(sig.K, [n, 1], "INT32")]
    inputs[0].set_data_from_numpy(histories)
    inputs[1].set_data_from_numpy(exclude)
    inputs[2].set_data_from_numpy(np.full((n, 1), k, dtype=np.int32))
    result = client.infer(model, inputs)
    return result.as_numpy(sig.ITEM_INDEX), result.as_numpy(sig.SCORE)


def assert_same_ranking(ids, scores, ref_ids, ref_scores):
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    differ = ids != ref_ids
    # Positions may only differ where two items are tied to within float error.
    assert np.all(np.abs(scores[differ] - ref_scores[differ]) < 1e-5), (ids, ref_ids)
    assert differ.mean() < 0.05


def test_batch_of_one_matches_pytorch(exported, client, requests, model_name):
    histories, exclude = requests
    ref_ids, ref_scores = reference(exported.result.model, histories, exclude, K)
    for row in range(len(histories)):
        ids, scores = infer(client, histories[row:row + 1], exclude[row:row + 1], model=model_name)
        assert_same_ranking(ids[0], scores[0], ref_ids[row], ref_scores[row])
        assert not set(ids[0]) & set(exclude[row])


def test_client_batch_and_concurrent_requests_match_pytorch(exported, client, triton, requests,
                                                             model_name):
    histories, exclude = requests
    ref_ids, ref_scores = reference(exported.result.model, histories, exclude, K)
    ids, scores = infer(client, histories, exclude, model=model_name)  # one request, batch of 24
    assert_same_ranking(ids, scores, ref_ids, ref_scores)

    def one(row):
        # each thread its own client: a sync client is not shared across threads
        with grpcclient.InferenceServerClient(triton.grpc_url) as c:
            return infer(c, histories[row:row + 1], exclude[row:row + 1], model=model_name)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(len(histories))))
    for row, (ids, scores) in enumerate(results):
        assert_same_ranking(ids[0], scores[0], ref_ids[row], ref_scores[row])


def test_k_beyond_catalog_fails_that_request_only(exported, client, requests, model_name):
    histories, exclude = requests
    with pytest.raises(InferenceServerException, match="catalog size"):
        infer(client, histories[:1], exclude[:1], k=exported.result.dataset.catalog.num_items + 1,
              model=model_name)
    ids, _ = infer(client, histories[:1], exclude[:1], model=model_name)  # the server is still fine
    assert ids.shape == (1, K)


def test_out_of_vocabulary_ids_are_bucketed_not_fatal(client, requests):
    histories, exclude = requests
    hostile = histories[:1].copy()
    hostile[0, -3:] = [10**9, -7, 10**6]
    ids, scores = infer(client, hostile, exclude[:1])
    assert ids.shape == (1, K) and np.isfinite(scores).all()


def test_every_generated_config_parses_back_and_is_what_triton_loaded(exported, triton):
    train = exported.result.report["train"]["config"]
    expected = model_configs(train["sequence_length"], train["dim"], ServingConfig())
    index = {m["name"]: m for m in triton.repository_index()}
    for name, want in expected.items():
        assert read_config(exported.repository / name / "config.pbtxt") == want
        assert index[name]["state"] == "READY", index[name]
        with urllib.request.urlopen(f"{triton.http_url}/v2/models/{name}/config") as response:
            loaded = json.load(response)
        assert loaded["max_batch_size"] == want.max_batch_size
        assert [(t["name"], [int(d) for d in t["dims"]]) for t in loaded["input"]] == [
            (t.name, list(t.dims)) for t in want.input]
