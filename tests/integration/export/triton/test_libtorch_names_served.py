"""One contract for both targets, on a real Triton: a repository whose models name their tensors
as the libtorch target does (INPUT__i / OUTPUT__i, contract recorded in the configs), served by
the bundled CPU server through the python backend standing in for libtorch (``ServingConfig
(naming="libtorch")``: this server has no libtorch backend). The gateway's Triton client and the
rollout's smoke check call ``recommend_fused`` (and the gateway the ``recommend`` ensemble's
steps) by the names its config maps, and answer exactly what the python target answers.

A freshly initialised tower over a small catalog (types made to matter): no training, so the
only slow part is starting the two servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch

from export.model.towers import TwoTower
from export.triton.repository import ServingConfig, export_repository, read_config
from export.triton.rollout import Rollout
from features import contract as sig
from features.behaviour import STEP_TYPES, Step
from features.catalog import Item, ItemCatalog
from features.model_inputs import ModelInputs, build_inputs
from gateway.triton_client import TritonRecommender
from stack.testing import require_service
from stack.triton import TritonServer, triton_unavailable_reason
from tests.support.models import with_type_effects

L, DIM, VERSION, K = 6, 8, 1, 5
TARGETS = {"python": ServingConfig(), "libtorch_names": ServingConfig(naming="libtorch")}


@pytest.fixture(scope="module")
def catalog() -> ItemCatalog:
    genres = ("Action", "Comedy", "Drama")
    return ItemCatalog.from_items([Item(f"i{n}", f"Item {n}", (genres[n % 3],), 1990 + n)
                                   for n in range(40)])


@pytest.fixture(scope="module")
def servers(tmp_path_factory, catalog) -> Iterator[dict[str, tuple[Path, TritonServer]]]:
    """The same model exported twice (python names, libtorch names), each served by its Triton."""
    require_service(triton_unavailable_reason())
    torch.manual_seed(0)
    model = with_type_effects(TwoTower(catalog, dim=DIM, sequence_length=L)).eval()
    root = tmp_path_factory.mktemp("libtorch_names")
    with ExitStack() as stack:
        out = {}
        for name, serving in TARGETS.items():
            repository = export_repository(model, catalog, root / name, sequence_length=L,
                                           version=VERSION, serving=serving)
            out[name] = (repository, stack.enter_context(
                TritonServer(repository, log_path=root / f"{name}.log")))
        yield out


def _requests(catalog: ItemCatalog) -> list[ModelInputs]:
    ids = [item.item_id for item in catalog.items]
    rng = np.random.default_rng(0)
    requests = []
    for user in range(12):
        steps = [Step(ids[i], STEP_TYPES[(user + j) % len(STEP_TYPES)])
                 for j, i in enumerate(rng.choice(len(ids), size=1 + user % L, replace=False))]
        requests.append(build_inputs(steps, catalog, L, K, exclude=[str(s) for s in steps[:2]]))
    return requests


def _gateway_answers(triton: TritonServer, model: str, requests: list[ModelInputs]):
    async def run():
        client = TritonRecommender(triton.grpc_url, 30_000, model)
        try:
            await client.connect()
            assert client.sequence_length == L
            return [await client.recommend(inputs, version=VERSION) for inputs in requests]
        finally:
            await client.close()

    return asyncio.run(run())


def test_the_repository_really_uses_the_libtorch_names(servers):
    repository, _ = servers["libtorch_names"]
    fused = read_config(repository / sig.RECOMMEND_FUSED / "config.pbtxt")
    assert fused.backend == "python"
    assert [t.name for t in fused.input] == ["INPUT__0", "INPUT__1", "INPUT__2", "INPUT__3"]
    assert [t.name for t in fused.output] == ["OUTPUT__0", "OUTPUT__1"]
    assert fused.parameters[sig.CONTRACT_INPUTS].string_value == "HISTORY,HISTORY_TYPES,EXCLUDE,K"


@pytest.mark.parametrize("model", [sig.RECOMMEND_FUSED, sig.RECOMMEND])
def test_the_gateway_client_gets_the_python_targets_answers(servers, catalog, model):
    requests = _requests(catalog)
    python = _gateway_answers(servers["python"][1], model, requests)
    positional = _gateway_answers(servers["libtorch_names"][1], model, requests)
    for (want_ids, want_scores), (ids, scores) in zip(python, positional, strict=True):
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)
    assert len({tuple(ids) for ids, _ in python}) > 1  # the users are told apart


def test_the_rollout_smoke_check_passes_and_answers_as_the_python_target(servers, catalog):
    answers = {}
    for name, (repository, triton) in servers.items():
        rollout = Rollout(repository, f"127.0.0.1:{triton.http_port}")
        report = rollout.smoke(VERSION)
        assert report.ok and report.id_overlap == 1.0, report
        batch = _requests(catalog)[0]
        answers[name] = rollout._infer(VERSION, batch)[:2]
    for got, want in zip(answers["libtorch_names"], answers["python"], strict=True):
        np.testing.assert_array_equal(got, want)
