"""The repository the NGC Triton container serves (``python -m export --target libtorch``): every
config.pbtxt written to disk agrees with the TorchScript file next to it.

Triton's libtorch backend binds tensors by position (INPUT__i / OUTPUT__i in ``forward`` order)
and casts nothing, so a config whose count, order, dtype or shape differs from the module fails
only when Triton loads it. Here the exported files are read back the way Triton reads them:
``config.pbtxt`` parsed, ``model.pt`` loaded with ``torch.jit.load`` and called with the config's
own warm-up request (zeros, and ``k`` from ``warmup/k``), batched as the dynamic batcher would.
A freshly initialised TwoTower over six items: no training, well under a second of CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc

from export.model.towers import TwoTower
from export.triton.repository import export_repository, model_specs, read_config
from features import contract as sig
from features.behaviour import Step
from features.catalog import FIRST_ITEM_INDEX
from features.model_inputs import build_inputs
from tests.support.models import with_type_effects

SEQUENCE_LENGTH = 5
DIM = 8
VERSION = 2
DTYPES = {
    mc.TYPE_INT64: (np.int64, torch.int64),
    mc.TYPE_INT32: (np.int32, torch.int32),
    mc.TYPE_FP32: (np.float32, torch.float32),
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory, catalog_items):
    root = tmp_path_factory.mktemp("model_repository_libtorch")
    torch.manual_seed(0)
    model = with_type_effects(TwoTower(catalog_items, dim=DIM, sequence_length=SEQUENCE_LENGTH)).eval()
    export_repository(model, catalog_items, root, sequence_length=SEQUENCE_LENGTH, version=VERSION,
                      target="libtorch")
    return root


@pytest.fixture(scope="module")
def catalog_items():
    from features.catalog import Item, ItemCatalog

    return ItemCatalog.from_items([
        Item("a", "Alpha", ("Action",), 1990), Item("b", "Bravo", ("Action", "Comedy"), 1995),
        Item("c", "Charlie", ("Comedy",), 2000), Item("d", "Delta", ("Drama",), None),
        Item("e", "Echo", ("Drama", "Action"), 1980), Item("f", "Foxtrot", (), 1999),
    ])


def _configs(root):
    return {path.parent.name: read_config(path) for path in sorted(root.glob("*/config.pbtxt"))}


def _libtorch_models(root):
    return {name: config for name, config in _configs(root).items()
            if config.platform == "pytorch_libtorch"}


def test_the_repository_needs_only_the_stock_ngc_image(repository):
    """No python-backend model under target libtorch: nothing to add to the NGC image."""
    configs = _configs(repository)
    assert set(configs) == {sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND, sig.RECOMMEND_FUSED,
                            sig.SIMILAR_ITEMS}
    assert {n for n, c in configs.items() if c.platform == "ensemble"} == {sig.RECOMMEND}
    assert set(_libtorch_models(repository)) == {sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED,
                                                 sig.SIMILAR_ITEMS}
    for name, config in configs.items():
        assert config.name == name and config.backend != "python"
    assert not list(repository.rglob("model.py"))
    assert not list(repository.rglob("index.faiss"))


def _warmup_batch(model_dir, config, batch: int) -> list[torch.Tensor]:
    """The config's warm-up request as tensors in INPUT__i order, ``batch`` rows."""
    (warmup,) = config.model_warmup
    assert set(warmup.inputs) == {t.name for t in config.input}
    tensors = []
    for tensor in config.input:
        spec = warmup.inputs[tensor.name]
        assert spec.data_type == tensor.data_type
        np_dtype, _ = DTYPES[tensor.data_type]
        dims = list(spec.dims)
        assert all(d > 0 for d in dims) and all(d == c or c == -1 for d, c in zip(dims, tensor.dims,
                                                                                      strict=True))
        if spec.zero_data:
            row = np.zeros(dims, dtype=np_dtype)
        else:
            row = np.fromfile(model_dir / "warmup" / spec.input_data_file,
                              dtype=np.dtype(np_dtype).newbyteorder("<")).reshape(dims)
        tensors.append(torch.from_numpy(np.stack([row] * batch).astype(np_dtype)))
    return tensors


def _tensor_types(schema_type) -> list[str]:
    kind = schema_type.kind()
    if kind == "TupleType":
        return [str(t) for t in schema_type.elements()]
    return [str(schema_type)]


@pytest.mark.parametrize("name", [sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED])
def test_config_and_torchscript_signature_agree(repository, name):
    config = _libtorch_models(repository)[name]
    model_file = repository / name / str(VERSION) / "model.pt"
    module = torch.jit.load(str(model_file), map_location="cpu").eval()
    schema = module.forward.schema
    arguments = schema.arguments[1:]  # drop self
    # Inputs: as many as forward takes, every one a Tensor, named by position.
    assert [str(a.type) for a in arguments] == ["Tensor"] * len(config.input)
    assert [t.name for t in config.input] == [f"INPUT__{i}" for i in range(len(arguments))]
    # Outputs: one Tensor per config output, named by position.
    (returns,) = schema.returns
    assert _tensor_types(returns.type) == ["Tensor"] * len(config.output)
    assert [t.name for t in config.output] == [f"OUTPUT__{i}" for i in range(len(config.output))]
    assert config.max_batch_size > 0 and config.dynamic_batching is not None

    for batch in (1, 3):
        inputs = _warmup_batch(repository / name, config, batch)
        with torch.no_grad():
            outputs = module(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        assert len(outputs) == len(config.output)
        for tensor, value in zip(config.output, outputs, strict=True):
            _, torch_dtype = DTYPES[tensor.data_type]
            assert value.dtype == torch_dtype, f"{name} {tensor.name}: {value.dtype}"
            assert value.shape[0] == batch  # batch dimension first, as Triton expects
            assert value.dim() == 1 + len(tensor.dims), f"{name} {tensor.name}: {tuple(value.shape)}"
            for size, dim in zip(value.shape[1:], tensor.dims, strict=True):
                assert dim == -1 or size == dim, f"{name} {tensor.name}: {tuple(value.shape)}"


def test_retrieval_answers_k_real_items(repository):
    """The warm-up ``k`` (min(10, items)) comes back: k indices of real items, scores descending."""
    for name in (sig.RETRIEVE, sig.RECOMMEND_FUSED):
        config = _libtorch_models(repository)[name]
        module = torch.jit.load(str(repository / name / str(VERSION) / "model.pt")).eval()
        inputs = _warmup_batch(repository / name, config, 2)
        k = int(inputs[-1].max())
        with torch.no_grad():
            indices, scores = module(*inputs)
        assert k == 6 and tuple(indices.shape) == (2, k) and tuple(scores.shape) == (2, k)
        assert bool((indices >= FIRST_ITEM_INDEX).all())
        assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_the_ensemble_wires_the_files_on_disk(repository):
    configs = _configs(repository)
    ensemble = configs[sig.RECOMMEND]
    available = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert model.platform == "pytorch_libtorch"
        assert set(step.input_map) == {t.name for t in model.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) == {t.name for t in model.output}
        for backend_name, contract_name in step.output_map.items():
            out = next(t for t in model.output if t.name == backend_name)
            ens = next((t for t in ensemble.output if t.name == contract_name), None)
            if ens is not None:
                assert ens.data_type == out.data_type and list(ens.dims) == list(out.dims)
        available |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= available
    # The fused model answers the same request as the ensemble.
    fused = configs[sig.RECOMMEND_FUSED]
    assert [(t.data_type, list(t.dims)) for t in fused.input] == \
        [(t.data_type, list(t.dims)) for t in ensemble.input]
    assert [(t.data_type, list(t.dims)) for t in fused.output] == \
        [(t.data_type, list(t.dims)) for t in ensemble.output]


def test_the_gateway_finds_its_serving_files(repository):
    from gateway.served_model import load_served_model

    served = load_served_model(repository)
    assert served.version == VERSION and served.sequence_length == SEQUENCE_LENGTH
    assert served.catalog.num_items == 6


def test_positional_inputs_are_the_contracts_order(repository, catalog_items):
    """INPUT__i is the i-th contract tensor: the ensemble maps names onto positions, and a
    request built by the gateway, fed to forward in that order, reaches the right arguments."""
    specs = model_specs(SEQUENCE_LENGTH, DIM)
    assert [t.name for t in specs[sig.RECOMMEND_FUSED].inputs] == [
        sig.HISTORY, sig.HISTORY_TYPES, sig.EXCLUDE, sig.K]
    steps = {step.model_name: dict(step.input_map)
             for step in _configs(repository)[sig.RECOMMEND].ensemble_scheduling.step}
    assert steps[sig.USER_TOWER] == {"INPUT__0": sig.HISTORY, "INPUT__1": sig.HISTORY_TYPES}
    assert steps[sig.RETRIEVE] == {"INPUT__0": sig.USER_EMBEDDING, "INPUT__1": sig.EXCLUDE,
                                   "INPUT__2": sig.K}
    fused = torch.jit.load(str(repository / sig.RECOMMEND_FUSED / str(VERSION) / "model.pt")).eval()
    assert [a.name for a in fused.forward.schema.arguments][1:] == ["history", "types", "exclude", "k"]
    # the event types reach the model: same items, other types, other scores
    answers = []
    for event_type in ("view", "purchase"):
        inputs = build_inputs([Step(i, event_type) for i in "abc"], catalog_items, SEQUENCE_LENGTH, 3)
        with torch.no_grad():
            answers.append(fused(*[torch.from_numpy(a) for a in inputs.tensors().values()])[1])
    assert not torch.allclose(*answers)


class RecordingTriton:
    """Answers ``get_model_config`` with the exported configs (Triton's JSON form) and every
    ``infer`` with zeros of the requested outputs' config shapes; records what was sent."""

    def __init__(self, configs: dict[str, dict]):
        self.configs = configs
        self.calls: list[tuple[str, list, list[str]]] = []

    async def get_model_config(self, model, as_json):
        return {"config": self.configs[model]}

    async def infer(self, model, inputs, *, outputs, client_timeout, model_version):
        self.calls.append((model, inputs, [o.name() for o in outputs]))
        by_name = {t["name"]: t for t in self.configs[model]["output"]}
        arrays = {}
        for name in (o.name() for o in outputs):
            dims = [2 if int(d) == -1 else int(d) for d in by_name[name]["dims"]]
            dtype = np.float32 if by_name[name]["data_type"] == "TYPE_FP32" else np.int64
            arrays[name] = np.full([1, *dims], FIRST_ITEM_INDEX, dtype=dtype)
        return type("Result", (), {"as_numpy": lambda self, name: arrays[name]})()


def test_the_compose_gateway_sends_what_its_model_takes(repository, catalog_items):
    """The model compose points the gateway at, called as the gateway calls it (start-up check,
    then a versioned request): every tensor it sends is one of that model's inputs (all of them,
    with the config's dtype and shape) and every output it asks for is one the model has. The
    check that would have failed when compose named recommend_fused and the gateway sent HISTORY
    to a model that takes INPUT__0."""
    import asyncio

    from google.protobuf import json_format

    from gateway.triton_client import TritonRecommender
    from tests.unit.docker._support import load_compose

    model = load_compose()["services"]["gateway"]["environment"]["RECSYS_GATEWAY_TRITON_MODEL"]
    configs = {name: json_format.MessageToDict(config, preserving_proto_field_name=True)
               for name, config in _configs(repository).items()}
    assert model in configs, f"compose names {model!r}, which the exporter does not write"
    triton = RecordingTriton(configs)
    client = TritonRecommender("triton:8001", 1000, model, client=triton)
    inputs = build_inputs([Step("a", "view"), Step("b", "cart")], catalog_items, SEQUENCE_LENGTH, 3,
                          exclude=["a"])

    async def call():
        await client.connect()
        return await client.recommend(inputs, version=VERSION)

    indices, scores = asyncio.run(call())
    assert client.sequence_length == SEQUENCE_LENGTH and indices.shape == scores.shape == (2,)
    assert triton.calls, "the gateway sent nothing"
    for called, sent, asked in triton.calls:
        config = configs[called]
        want = {t["name"]: t for t in config["input"]}
        assert sorted(t.name() for t in sent) == sorted(want), f"{called}: sent other tensors"
        for tensor in sent:
            spec = want[tensor.name()]
            assert tensor.datatype() == spec["data_type"].removeprefix("TYPE_"), tensor.name()
            assert all(int(d) in (-1, s) for d, s in zip(spec["dims"], tensor.shape()[1:], strict=True))
        assert set(asked) <= {t["name"] for t in config["output"]}, f"{called}: asked for {asked}"
    if model == sig.RECOMMEND_FUSED:  # libtorch: positional names, mapped by the recorded contract
        assert [t.name() for t in triton.calls[0][1]] == ["INPUT__0", "INPUT__1", "INPUT__2", "INPUT__3"]
        assert triton.calls[0][2] == ["OUTPUT__0", "OUTPUT__1"]


def test_a_positional_model_without_the_recorded_contract_is_refused(repository):
    """A libtorch model whose config does not say which contract tensor INPUT__i is (an export
    from before the parameters, or a foreign model) stops the gateway with what is missing."""
    from google.protobuf import json_format

    from gateway.triton_client import ContractMismatch, check_contract

    config = _configs(repository)[sig.RECOMMEND_FUSED]
    del config.parameters[sig.CONTRACT_INPUTS]
    with pytest.raises(ContractMismatch, match="no HISTORY input.*INPUT__0.*not recorded"):
        check_contract(sig.RECOMMEND_FUSED,
                       json_format.MessageToDict(config, preserving_proto_field_name=True))
