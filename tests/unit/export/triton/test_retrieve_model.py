"""export/triton/models/retrieve.py, the python-backend code of ``retrieve`` and ``recommend_fused``,
run outside Triton: ``triton_python_backend_utils`` is replaced by a small stand-in, and the model
reads the config.pbtxt the exporter wrote, in the JSON form Triton hands it.

The model takes every input but the last two (EXCLUDE, K) as its query: one tensor for
``retrieve`` (USER_EMBEDDING), two for ``recommend_fused`` (HISTORY, HISTORY_TYPES). Every
request of a batch must come back with the answer the TorchScript module gives it alone.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch
from google.protobuf import json_format

from export.model.ann import RetrievalIndexConfig
from export.model.towers import TwoTower
from export.triton.repository import MODEL_CODE, ServingConfig, export_repository, read_config
from features import contract as sig
from features.behaviour import Step
from features.model_inputs import ModelInputs, build_inputs
from tests.support.models import with_type_effects

L = 4


class _Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class _Error:
    def __init__(self, message):
        self.message = message


class _Request:
    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = {name: _Tensor(name, a) for name, a in tensors.items()}


def _pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = _Response
    module.TritonError = _Error
    module.get_input_tensor_by_name = lambda request, name: request.tensors.get(name)
    module.triton_string_to_numpy = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32,
                                     "TYPE_FP32": np.float32}.__getitem__
    return module


@pytest.fixture
def load_model(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _pb_utils())
    spec = importlib.util.spec_from_file_location("retrieve_model_under_test", MODEL_CODE / "retrieve.py")
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    threads = torch.get_num_threads()

    def load(repository, name):
        config = json_format.MessageToDict(read_config(repository / name / "config.pbtxt"),
                                           preserving_proto_field_name=True)
        model = code.TritonPythonModel()
        model.initialize({"model_config": json.dumps(config), "model_repository": str(repository / name),
                          "model_version": "1"})
        return model

    yield load
    torch.set_num_threads(threads)  # the model sets its own


@pytest.fixture
def typed(catalog):
    torch.manual_seed(0)
    return with_type_effects(TwoTower(catalog, dim=8, sequence_length=L)).eval()


def _requests(catalog) -> list[ModelInputs]:
    """Users with the same items in other event types, other k, an unknown item, and one whose k
    exceeds what its exclusions leave (an ANN index falls back to exact scoring for it)."""
    steps = [
        [Step("a", "view"), Step("b", "view")],
        [Step("a", "purchase"), Step("b", "cart")],
        [Step("c", "click"), Step("zzz", "view"), Step("d", "rating")],
        ["e", "f"],
    ]
    return [build_inputs(s, catalog, L, k, exclude=s[:1]) for s, k in zip(steps, [3, 3, 2, 6], strict=True)]


def _alone(module, inputs: ModelInputs, query: list[np.ndarray]):
    with torch.no_grad():
        return module(*[torch.from_numpy(a) for a in query],
                      torch.from_numpy(inputs.exclude), torch.from_numpy(inputs.k))


@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_fused_model_reads_history_and_types_and_answers_each_request(tmp_path, catalog, typed,
                                                                      load_model, index):
    repository = export_repository(typed, catalog, tmp_path, sequence_length=L,
                                   serving=ServingConfig(warmup=False),
                                   index=RetrievalIndexConfig(kind=index))
    model = load_model(repository, sig.RECOMMEND_FUSED)
    assert model.query_inputs == [sig.HISTORY, sig.HISTORY_TYPES]
    assert (model.exclude_input, model.k_input) == (sig.EXCLUDE, sig.K)
    fused = torch.jit.load(str(repository / sig.RECOMMEND_FUSED / "1" / "model.pt")).eval()
    requests = _requests(catalog)
    responses = model.execute([_Request(r.tensors()) for r in requests])
    for inputs, response in zip(requests, responses, strict=True):
        assert response.error is None
        want_index, want_score = _alone(fused, inputs, [inputs.history, inputs.history_types])
        np.testing.assert_array_equal(response.outputs[sig.ITEM_INDEX], want_index.numpy())
        np.testing.assert_allclose(response.outputs[sig.SCORE], want_score.numpy(), rtol=1e-5, atol=1e-6)
    # the first two users differ only in their event types, and so do their answers
    first, second = (r.outputs[sig.SCORE] for r in responses[:2])
    assert not np.allclose(first, second)


def test_retrieve_model_reads_one_query_input(tmp_path, catalog, typed, load_model):
    repository = export_repository(typed, catalog, tmp_path, sequence_length=L,
                                   serving=ServingConfig(warmup=False))
    model = load_model(repository, sig.RETRIEVE)
    assert model.query_inputs == [sig.USER_EMBEDDING]
    retrieve = torch.jit.load(str(repository / sig.RETRIEVE / "1" / "model.pt")).eval()
    requests = _requests(catalog)
    with torch.no_grad():
        users = [typed.user_tower(torch.from_numpy(r.history), torch.from_numpy(r.history_types)).numpy()
                 for r in requests]
    responses = model.execute([
        _Request({sig.USER_EMBEDDING: u, sig.EXCLUDE: r.exclude, sig.K: r.k})
        for u, r in zip(users, requests, strict=True)])
    for user, inputs, response in zip(users, requests, responses, strict=True):
        want_index, _ = _alone(retrieve, inputs, [user])
        np.testing.assert_array_equal(response.outputs[sig.ITEM_INDEX], want_index.numpy())


def test_a_bad_k_fails_its_own_request_only(tmp_path, catalog, typed, load_model):
    repository = export_repository(typed, catalog, tmp_path, sequence_length=L,
                                   serving=ServingConfig(warmup=False))
    model = load_model(repository, sig.RECOMMEND_FUSED)
    good = build_inputs([Step("a", "view")], catalog, L, 2)
    bad = build_inputs([Step("a", "view")], catalog, L, catalog.num_items + 1)
    responses = model.execute([_Request(bad.tensors()), _Request(good.tensors())])
    assert "catalog size" in responses[0].error.message
    assert responses[1].error is None and responses[1].outputs[sig.ITEM_INDEX].shape == (1, 2)
