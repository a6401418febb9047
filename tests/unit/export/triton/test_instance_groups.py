"""Instance groups per model (``ServingConfig.instance_groups``) and the contract every config
records (``contract_inputs`` / ``contract_outputs``), written and parsed back."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from export.triton.config_files import read_config, read_config_json, write_config
from export.triton.repository import ServingConfig, model_configs, model_specs
from features import contract as sig

GPU = mc.ModelInstanceGroup.KIND_GPU
CPU = mc.ModelInstanceGroup.KIND_CPU


def _written(tmp_path, target, serving):
    configs = model_configs(7, 16, serving, target)
    return {name: read_config(write_config(config, tmp_path / name)) for name, config in configs.items()}


@pytest.mark.parametrize("target", ["python", "libtorch"])
def test_each_model_gets_its_own_kind_and_count(tmp_path, target):
    serving = ServingConfig(instances=3, instance_groups={sig.USER_TOWER: ("KIND_GPU", 1),
                                                         sig.RETRIEVE: ("KIND_GPU", 2)})
    configs = _written(tmp_path, target, serving)
    groups = {name: [(g.kind, g.count) for g in c.instance_group] for name, c in configs.items()}
    assert groups == {sig.USER_TOWER: [(GPU, 1)], sig.RETRIEVE: [(GPU, 2)],
                      sig.RECOMMEND_FUSED: [(CPU, 3)], sig.SIMILAR_ITEMS: [(CPU, 3)],  # the defaults
                      sig.RECOMMEND: []}  # the ensemble runs its steps' instances


def test_python_models_on_a_gpu_let_inputs_stay_on_the_gpu_and_cpu_ones_do_not(tmp_path):
    configs = _written(tmp_path, "python", ServingConfig(instance_groups={sig.RETRIEVE: ("KIND_GPU", 1)}))
    assert configs[sig.RETRIEVE].parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    for name in (sig.USER_TOWER, sig.RECOMMEND_FUSED):
        # a CPU instance reads inputs as numpy: they must be on the host (Triton's default)
        assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in configs[name].parameters
    libtorch = _written(tmp_path / "l", "libtorch", ServingConfig(instance_kind="KIND_GPU"))
    assert all("FORCE_CPU_ONLY_INPUT_TENSORS" not in c.parameters for c in libtorch.values())
    assert all(c.instance_group[0].kind == GPU for n, c in libtorch.items() if n != sig.RECOMMEND)


def test_all_models_on_the_gpu_with_one_kind():
    configs = model_configs(7, 16, ServingConfig(instance_kind="KIND_GPU", instances=2))
    for name in sig.VERSIONED_MODELS:
        assert [(g.kind, g.count) for g in configs[name].instance_group] == [(GPU, 2)]


@pytest.mark.parametrize("groups", [{"recommend": ("KIND_GPU", 1)}, {"nope": ("KIND_CPU", 1)},
                                    {sig.RETRIEVE: ("gpu", 1)}, {sig.RETRIEVE: ("KIND_GPU", 0)}])
def test_a_group_for_no_model_or_of_no_kind_is_refused(groups):
    with pytest.raises(ValueError, match="instance group"):
        ServingConfig(instance_groups=groups)


@pytest.mark.parametrize("target", ["python", "libtorch"])
def test_every_config_records_its_contract_in_the_order_of_its_tensors(tmp_path, target):
    specs = model_specs(7, 16)
    for name, config in _written(tmp_path, target, ServingConfig()).items():
        names = sig.tensor_names(read_config_json(tmp_path / name / "config.pbtxt"))
        assert list(names.inputs) == [t.name for t in specs[name].inputs]
        assert list(names.outputs) == [t.name for t in specs[name].outputs]
        assert list(names.inputs.values()) == [t.name for t in config.input]
        assert list(names.outputs.values()) == [t.name for t in config.output]
    fused = sig.tensor_names(json_format.MessageToDict(
        model_configs(7, 16, ServingConfig(), target)[sig.RECOMMEND_FUSED], preserving_proto_field_name=True))
    positional = target == "libtorch"
    assert fused.inputs[sig.HISTORY] == ("INPUT__0" if positional else sig.HISTORY)
    assert fused.outputs[sig.SCORE] == ("OUTPUT__1" if positional else sig.SCORE)


def test_the_python_target_can_stand_in_for_libtorch_naming():
    """``naming="libtorch"``: python-backend models with the libtorch tensor names (what the CPU
    server can load in place of the libtorch target, for tests)."""
    configs = model_configs(7, 16, ServingConfig(naming="libtorch"), "python")
    libtorch = model_configs(7, 16, ServingConfig(), "libtorch")
    for name, config in configs.items():
        assert [t.name for t in config.input] == [t.name for t in libtorch[name].input]
        assert [t.name for t in config.output] == [t.name for t in libtorch[name].output]
        if name != sig.RECOMMEND:
            assert config.backend == "python" and not config.platform
            assert set(config.model_warmup[0].inputs) == {t.name for t in config.input}
    assert configs[sig.RECOMMEND].ensemble_scheduling == libtorch[sig.RECOMMEND].ensemble_scheduling


def test_a_config_without_the_parameters_maps_names_to_themselves_and_a_wrong_one_is_refused():
    config = {"name": "m", "input": [{"name": "A"}, {"name": "B"}], "output": [{"name": "C"}]}
    assert sig.tensor_names(config) == ({"A": "A", "B": "B"}, {"C": "C"})
    config["parameters"] = {sig.CONTRACT_INPUTS: {"string_value": "HISTORY"}}
    with pytest.raises(ValueError, match="contract_inputs names 1 tensors"):
        sig.tensor_names(config)
