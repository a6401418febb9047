"""One client for both export targets: the gateway sends the contract's tensors under the names
the served model's config gives them (``contract_inputs`` / ``contract_outputs``), so the fused
model is served under libtorch (INPUT__i / OUTPUT__i) as under the python target."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from google.protobuf import json_format

from export.triton.repository import ServingConfig, model_configs
from features import contract as sig
from features.model_inputs import build_inputs
from gateway.triton_client import ContractMismatch, TritonRecommender


def fused_config(target: str) -> dict:
    config = model_configs(3, 4, ServingConfig(), target)[sig.RECOMMEND_FUSED]
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


class FusedClient:
    def __init__(self, config: dict):
        self.config = config
        self.sent: list[tuple[list[str], list[str], list[str]]] = []

    async def get_model_config(self, model, as_json):
        return {"config": self.config}

    async def infer(self, model, inputs, *, outputs, client_timeout, model_version):
        names = [o.name() for o in outputs]
        self.sent.append(([i.name() for i in inputs], [i.datatype() for i in inputs], names))
        arrays = dict(zip(names, (np.array([[4, 3]]), np.array([[0.9, 0.1]], np.float32)), strict=True))
        return type("Result", (), {"as_numpy": lambda self, name: arrays[name]})()


@pytest.mark.parametrize("target", ["python", "libtorch"])
def test_the_fused_model_is_called_by_its_own_tensor_names(catalog, target):
    client = FusedClient(fused_config(target))
    triton = TritonRecommender("unused", 1000, sig.RECOMMEND_FUSED, client=client)

    async def scenario():
        await triton.connect()
        return await triton.recommend(build_inputs(["a"], catalog, 3, 2), version=1)

    indices, scores = asyncio.run(scenario())
    assert indices.tolist() == [4, 3] and scores.tolist() == pytest.approx([0.9, 0.1])
    assert triton.sequence_length == 3
    names, dtypes, outputs = client.sent[0]
    if target == "libtorch":
        assert names == ["INPUT__0", "INPUT__1", "INPUT__2", "INPUT__3"]
        assert outputs == ["OUTPUT__0", "OUTPUT__1"]
    else:
        assert names == [sig.HISTORY, sig.HISTORY_TYPES, sig.EXCLUDE, sig.K]
        assert outputs == [sig.ITEM_INDEX, sig.SCORE]
    assert dtypes == ["INT64", "INT64", "INT64", "INT32"]


def test_a_contract_parameter_that_does_not_fit_the_config_stops_start_up():
    config = fused_config("libtorch")
    config["parameters"][sig.CONTRACT_OUTPUTS]["string_value"] = sig.ITEM_INDEX
    triton = TritonRecommender("unused", 1000, sig.RECOMMEND_FUSED, client=FusedClient(config))
    with pytest.raises(ContractMismatch, match="contract_outputs names 1 tensors"):
        asyncio.run(triton.connect())


def test_a_foreign_model_is_refused_naming_what_is_missing():
    config = {"name": "resnet", "input": [{"name": "INPUT__0", "dims": ["3", "224", "224"]}],
              "output": [{"name": "OUTPUT__0", "dims": ["1000"]}]}
    triton = TritonRecommender("unused", 1000, "resnet", client=FusedClient(config))
    with pytest.raises(ContractMismatch, match=r"'resnet' has no HISTORY input \(its inputs: INPUT__0; "
                                               r"contract_inputs: not recorded\)"):
        asyncio.run(triton.connect())
