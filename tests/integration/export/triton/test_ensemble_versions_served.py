"""The ``recommend`` ensemble during a rollout (issue 15): a gateway asks for the version whose
catalog it holds, and must get that version's answer even when Triton's ensemble points at
another one — after a promote or a rollback, until the gateway has read ``rollout.json``, the
ensemble (pinned to the new live version) and the gateway's catalog disagree."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from export.triton.rollout import Rollout
from features import contract as sig
from features.catalog import ItemCatalog
from features.model_inputs import build_inputs
from gateway.triton_client import TritonRecommender
from tests.integration.export.triton.test_rollout_served import candidate_repository

USERS = [str(u) for u in range(1, 31)]


def test_the_ensemble_answers_the_version_asked_for_not_the_one_it_points_at(exported, served, tmp_path):
    repo, triton = served
    rollout = Rollout(repo, f"127.0.0.1:{triton.http_port}")
    version = rollout.publish(candidate_repository(exported, tmp_path / "staging"))
    # Promoted: Triton's ensemble now points at version 2, while a gateway that has not yet read
    # rollout.json still decodes with version 1's catalog and asks for version 1.
    rollout.promote(version, skip_checks=True)
    catalog = ItemCatalog.from_json(repo / sig.RETRIEVE / "1" / sig.CATALOG_FILE)
    length = json.loads((repo / sig.RETRIEVE / "1" / sig.SERVING_FILE).read_text())["sequence_length"]
    ids = [item.item_id for item in catalog.items]
    requests = [build_inputs(ids[int(u) * 7:int(u) * 7 + 5], catalog, length, 10) for u in USERS]

    async def answers(model: str, version: int) -> list[list[int]]:
        client = TritonRecommender(f"127.0.0.1:{triton.grpc_port}", 30_000, model)
        try:
            await client.connect()
            return [(await client.recommend(inputs, version=version))[0].tolist() for inputs in requests]
        finally:
            await client.close()

    def served_by(model: str, version: int) -> list[list[int]]:
        return asyncio.run(answers(model, version))

    fused = {v: served_by(sig.RECOMMEND_FUSED, v) for v in (1, 2)}
    assert fused[1] != fused[2]  # the versions are told apart
    for v in (1, 2):
        got = served_by(sig.RECOMMEND, v)
        assert got == fused[v], f"the ensemble asked for version {v} answered another version"
        assert np.all(np.asarray(got) < catalog.num_embeddings)

    # And after a rollback (the ensemble points at version 1 again) the same holds for version 2.
    rollout.rollback()
    assert served_by(sig.RECOMMEND, 2) == fused[2]
