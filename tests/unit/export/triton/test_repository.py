import json

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.model.towers import TwoTower
from export.triton.repository import (
    REFERENCE_FILE,
    ServingConfig,
    export_repository,
    model_configs,
    model_specs,
    read_config,
    scripted_modules,
    write_config,
)
from features import contract as sig
from features.behaviour import NUM_TYPE_CODES, PAD_TYPE
from features.catalog import PAD_INDEX
from features.model_inputs import build_inputs

ALL_MODELS = {sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND, sig.RECOMMEND_FUSED, sig.SIMILAR_ITEMS}


@pytest.mark.parametrize("target", ["python", "libtorch"])
def test_every_config_parses_back_identically(tmp_path, target):
    configs = model_configs(sequence_length=7, dim=16, serving=ServingConfig(), target=target)
    assert set(configs) == ALL_MODELS
    for name, config in configs.items():
        path = write_config(config, tmp_path / name)
        assert read_config(path) == config
        assert text_format.Parse(path.read_text(), mc.ModelConfig()).name == name


def test_models_batch_dynamically_warm_up_and_serve_the_latest_version():
    serving = ServingConfig(max_batch_size=32, max_queue_delay_us=150, instances=2)
    configs = model_configs(7, 16, serving)
    for name in (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED):
        config = configs[name]
        assert config.backend == "python" and config.max_batch_size == 32
        assert config.dynamic_batching.max_queue_delay_microseconds == 150
        assert config.instance_group[0].count == 2
        assert config.version_policy.latest.num_versions == 1
        warm = config.model_warmup[0]
        assert set(warm.inputs) == {t.name for t in config.input}
    k_input = configs[sig.RETRIEVE].model_warmup[0].inputs[sig.K]
    assert k_input.input_data_file == "k"  # zero would be an invalid k


def test_batching_is_on_by_default_even_without_delay_and_can_be_switched_off():
    config = model_configs(7, 16, ServingConfig())[sig.USER_TOWER]
    assert config.HasField("dynamic_batching") and "dynamic_batching {" in str(config)
    assert config.parameters["torch_threads"].string_value == "1"
    config = model_configs(7, 16, ServingConfig(dynamic_batching=False))[sig.USER_TOWER]
    assert not config.HasField("dynamic_batching")


@pytest.mark.parametrize("target", ["python", "libtorch"])
def test_ensemble_wiring_matches_the_composing_models(target):
    configs = model_configs(7, 16, ServingConfig(), target=target)
    ensemble = configs[sig.RECOMMEND]
    assert ensemble.platform == "ensemble"
    available = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) == {t.name for t in model.output}
        available |= set(step.output_map.values())
    assert {t.name for t in ensemble.output} <= available
    assert list(next(t for t in ensemble.input if t.name == sig.HISTORY).dims) == [7]


def test_libtorch_configs_match_the_torchscript_signatures(catalog):
    model = TwoTower(catalog, dim=8).eval()
    modules = scripted_modules(model)
    configs = model_configs(5, 8, ServingConfig(), target="libtorch")
    for name, module in modules.items():
        config = configs[name]
        assert config.platform == "pytorch_libtorch"
        args = [a.name for a in module.forward.schema.arguments][1:]  # drop self
        assert [t.name for t in config.input] == [f"INPUT__{i}" for i in range(len(args))]
        # call forward exactly as libtorch will: one tensor per config input, batch dim first
        inputs = []
        for t in config.input:
            dims = [1] + [4 if d == -1 else d for d in t.dims]
            dtype = {mc.TYPE_INT64: np.int64, mc.TYPE_FP32: np.float32, mc.TYPE_INT32: np.int32}[t.data_type]
            value = np.full(dims, 3, dtype=dtype)
            inputs.append(torch.from_numpy(value))
        outputs = module(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        assert len(outputs) == len(config.output)


def test_export_writes_a_complete_repository(tmp_path, catalog):
    model = TwoTower(catalog, dim=8)
    export_repository(model, catalog, tmp_path, sequence_length=5, version=3)
    for name in ALL_MODELS:
        assert (tmp_path / name / "config.pbtxt").is_file() and (tmp_path / name / "3").is_dir()
    for name in (sig.USER_TOWER, sig.RETRIEVE, sig.RECOMMEND_FUSED):
        assert {p.name for p in (tmp_path / name / "3").iterdir()} >= {"model.pt", "model.py"}
    assert np.fromfile(tmp_path / sig.RETRIEVE / "warmup" / "k", dtype="<i4").tolist() == [6]
    assert (tmp_path / sig.RETRIEVE / "3" / sig.CATALOG_FILE).is_file()


def test_an_ann_index_ships_next_to_the_searching_models(tmp_path, catalog):
    from export.model.ann import RetrievalIndexConfig, load_index

    model = TwoTower(catalog, dim=8)
    export_repository(model, catalog, tmp_path, sequence_length=5,
                      index=RetrievalIndexConfig(kind="hnsw"))
    for name in (sig.RETRIEVE, sig.RECOMMEND_FUSED):
        assert load_index(tmp_path / name / "1" / "index.faiss").num_items == catalog.num_items
    assert not (tmp_path / sig.USER_TOWER / "1" / "index.faiss").exists()
    with pytest.raises(ValueError, match="python target"):
        export_repository(model, catalog, tmp_path / "lt", sequence_length=5, target="libtorch",
                          index=RetrievalIndexConfig(kind="hnsw"))


@pytest.mark.parametrize("target", ["python", "libtorch"])
def test_history_types_are_served_next_to_the_history(tmp_path, catalog, target):
    """user_tower, recommend and recommend_fused take HISTORY_TYPES INT64 [L] right after HISTORY,
    as written to disk and parsed back (for libtorch: the second positional input)."""
    export_repository(TwoTower(catalog, dim=8), catalog, tmp_path, sequence_length=5, target=target)
    for name in (sig.USER_TOWER, sig.RECOMMEND, sig.RECOMMEND_FUSED):
        config = read_config(tmp_path / name / "config.pbtxt")
        contract_order = [t.name for t in model_specs(5, 8)[name].inputs]
        assert contract_order[:2] == [sig.HISTORY, sig.HISTORY_TYPES]
        position = contract_order.index(sig.HISTORY_TYPES)
        types = config.input[position]
        wanted = sig.HISTORY_TYPES if target == "python" or name == sig.RECOMMEND else "INPUT__1"
        assert types.name == wanted
        assert types.data_type == mc.TYPE_INT64 and list(types.dims) == [5]
        assert list(config.input[position - 1].dims) == [5]
        # the warm-up request sends it too (zeros: PAD steps)
        if config.model_warmup:
            assert config.model_warmup[0].inputs[types.name].zero_data
    retrieve = read_config(tmp_path / sig.RETRIEVE / "config.pbtxt")
    assert sig.HISTORY_TYPES not in {t.name for t in retrieve.input}


def test_clients_send_exactly_what_the_models_take_in_order(catalog):
    """One order everywhere: ModelInputs.tensors(), the ensemble's and the fused model's inputs;
    models/retrieve.py reads the last two inputs as EXCLUDE and K and the rest as its query."""
    client_order = list(build_inputs(["a"], catalog, 5, 2).tensors())
    specs = model_specs(5, 8)
    for name in (sig.RECOMMEND, sig.RECOMMEND_FUSED):
        assert [t.name for t in specs[name].inputs] == client_order
    for name in (sig.RETRIEVE, sig.RECOMMEND_FUSED):
        assert [t.name for t in specs[name].inputs][-2:] == [sig.EXCLUDE, sig.K]
    assert [t.name for t in specs[sig.USER_TOWER].inputs] == client_order[:2]


def test_the_reference_requests_carry_realistic_event_types(tmp_path, catalog):
    torch.manual_seed(0)
    export_repository(TwoTower(catalog, dim=8), catalog, tmp_path, sequence_length=5)
    ref = json.loads((tmp_path / sig.RETRIEVE / "1" / REFERENCE_FILE).read_text())
    history, types = np.array(ref["history"]), np.array(ref["history_types"])
    assert types.shape == history.shape
    assert ((types == PAD_TYPE) == (history == PAD_INDEX)).all()  # a type on every real step
    real = types[history != PAD_INDEX]
    assert ((real > PAD_TYPE) & (real < NUM_TYPE_CODES)).all() and len(set(real.tolist())) > 2
