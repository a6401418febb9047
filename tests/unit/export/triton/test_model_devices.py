"""The python-backend models on a GPU instance (export/triton/models/, outside Triton, no GPU here):
the module goes to ``cuda:<model_instance_device_id>`` when the instance kind is GPU, and the
device path (DLPack in, DLPack out, one batch per forward) answers what the numpy path answers.
The device path runs here with the CPU as its device; ``triton_python_backend_utils`` is a
stand-in with the DLPack calls of the real one (``Tensor.to_dlpack``, ``Tensor.from_dlpack``,
``Tensor.is_cpu``)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch
from google.protobuf import json_format
from torch.utils import dlpack

from export.model.towers import TwoTower
from export.triton.repository import MODEL_CODE, ServingConfig, export_repository, read_config
from features import contract as sig
from features.behaviour import Step
from features.model_inputs import build_inputs
from tests.support.models import with_type_effects

L = 4


class _Tensor:
    def __init__(self, name, data):
        self._name = name
        self._data = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data))

    @classmethod
    def from_dlpack(cls, name, capsule):
        return cls(name, dlpack.from_dlpack(capsule))

    def name(self):
        return self._name

    def is_cpu(self):
        return self._data.device.type == "cpu"

    def to_dlpack(self):
        return dlpack.to_dlpack(self._data)

    def as_numpy(self):
        return self._data.numpy()


class _Response:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


def _pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = _Response
    module.TritonError = lambda message: types.SimpleNamespace(message=message)
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    module.triton_string_to_numpy = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32,
                                     "TYPE_FP32": np.float32}.__getitem__
    return module


@pytest.fixture
def repository(tmp_path, catalog):
    torch.manual_seed(0)
    model = with_type_effects(TwoTower(catalog, dim=8, sequence_length=L)).eval()
    return export_repository(model, catalog, tmp_path, sequence_length=L,
                             serving=ServingConfig(warmup=False))


@pytest.fixture
def load(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _pb_utils())
    threads = torch.get_num_threads()

    def load(repository, name, code_file, kind="CPU", device_id="0"):
        spec = importlib.util.spec_from_file_location(f"model_under_test_{name}", MODEL_CODE / code_file)
        code = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(code)
        config = json_format.MessageToDict(read_config(repository / name / "config.pbtxt"),
                                           preserving_proto_field_name=True)
        model = code.TritonPythonModel()
        model.initialize({"model_config": json.dumps(config), "model_repository": str(repository / name),
                          "model_version": "1", "model_instance_kind": kind,
                          "model_instance_device_id": device_id})
        return model

    yield load
    torch.set_num_threads(threads)


@pytest.fixture
def gpu_instance(load, monkeypatch):
    """A model as a GPU instance runs it, the CPU standing in for the GPU: loaded onto the CPU
    whatever the map location, then computing on the CPU."""
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load",
                        lambda path, map_location=None: real_load(path, map_location="cpu"))

    def gpu(repository, name, code_file):
        model = load(repository, name, code_file, kind="GPU")
        assert model.on_gpu and model.device == torch.device("cuda:0")
        model.device = torch.device("cpu")
        return model

    return gpu


@pytest.mark.parametrize("code_file, name", [("torchscript.py", sig.USER_TOWER),
                                             ("retrieve.py", sig.RETRIEVE),
                                             ("retrieve.py", sig.RECOMMEND_FUSED)])
def test_a_gpu_instance_loads_the_module_onto_its_device(repository, load, monkeypatch, code_file, name):
    placed = []
    real_load = torch.jit.load

    def jit_load(path, map_location=None):
        placed.append(map_location)
        return real_load(path, map_location="cpu")

    monkeypatch.setattr(torch.jit, "load", jit_load)
    gpu = load(repository, name, code_file, kind="GPU", device_id="1")
    cpu = load(repository, name, code_file)
    assert placed == [torch.device("cuda:1"), torch.device("cpu")]
    assert gpu.on_gpu and not cpu.on_gpu


def _requests(catalog):
    steps = [[Step("a", "view"), Step("b", "view")], [Step("a", "purchase"), Step("b", "cart")],
             [Step("c", "click"), Step("zzz", "view"), Step("d", "rating")]]
    return [build_inputs(s, catalog, L, k, exclude=s[:1]) for s, k in zip(steps, [3, 3, 2], strict=True)]


def _answers(responses):
    return [{n: a.tolist() for n, a in r.outputs.items()} for r in responses]


def test_the_device_path_of_the_fused_model_answers_as_the_numpy_path(repository, load, gpu_instance,
                                                                     catalog):
    requests = [{n: _Tensor(n, a) for n, a in r.tensors().items()} for r in _requests(catalog)]
    numpy_path = load(repository, sig.RECOMMEND_FUSED, "retrieve.py").execute(requests)
    device = gpu_instance(repository, sig.RECOMMEND_FUSED, "retrieve.py")
    device_path = device.execute(requests)
    assert all(r.error is None for r in device_path)
    assert _answers(device_path) == _answers(numpy_path)
    assert device_path[0].outputs[sig.ITEM_INDEX].dtype == np.int64
    assert device_path[0].outputs[sig.SCORE].dtype == np.float32
    bad = build_inputs(["a"], catalog, L, catalog.num_items + 1)
    answers = device.execute([{n: _Tensor(n, a) for n, a in bad.tensors().items()}, requests[0]])
    assert "catalog size" in answers[0].error.message and answers[1].error is None


def test_the_device_path_of_the_user_tower_answers_as_the_numpy_path(repository, load, gpu_instance,
                                                                    catalog):
    requests = [{sig.HISTORY: _Tensor(sig.HISTORY, r.history),
                 sig.HISTORY_TYPES: _Tensor(sig.HISTORY_TYPES, r.history_types)}
                for r in _requests(catalog)]
    numpy_path = load(repository, sig.USER_TOWER, "torchscript.py").execute(requests)
    device_path = gpu_instance(repository, sig.USER_TOWER, "torchscript.py").execute(requests)
    for got, want in zip(device_path, numpy_path, strict=True):
        np.testing.assert_allclose(got.outputs[sig.USER_EMBEDDING], want.outputs[sig.USER_EMBEDDING],
                                   rtol=1e-6)
        assert got.outputs[sig.USER_EMBEDDING].shape == (1, 8)
