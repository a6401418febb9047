"""Promote and roll back while a gateway serves traffic: every response is a 200 from the model,
and every answer comes from exactly one version. A candidate that fails its smoke check never
goes live."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections import defaultdict

import pytest
import torch
from fastapi.testclient import TestClient

from export.pipeline import SNAPSHOT_FILE
from export.train import load_checkpoint, new_model
from export.triton.repository import REFERENCE_FILE, export_repository
from export.triton.rollout import Rollout, RolloutError, read_shadow_requests
from features import contract as sig
from features.catalog import ItemCatalog
from gateway.app import create_app
from gateway.config import GatewaySettings
from tests.support.gateway import gateway_settings, wait_ready
from tests.support.ranking import assert_same_recommendations
from tests.support.waiting import wait_for

USERS = [str(u) for u in range(1, 31)]


def candidate_repository(exported, root):
    """Version 2: the trained model with its weights nudged, so that it answers differently."""
    shutil.copytree(exported.repository, root)
    info = json.loads((root / sig.RETRIEVE / "1" / sig.SERVING_FILE).read_text())
    checkpoint = exported.artifacts / "checkpoints" / "seed0" / "best.pt"
    config = torch.load(checkpoint, map_location="cpu", weights_only=True)["config"]
    catalog = ItemCatalog.from_json(root / sig.RETRIEVE / "1" / sig.CATALOG_FILE)
    model = new_model(catalog, config)
    load_checkpoint(model, checkpoint)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    export_repository(model.eval(), catalog, root, sequence_length=info["sequence_length"], version=2)
    return root


def test_promote_and_rollback_under_traffic_drop_nothing(exported, served, kafka, tmp_path):
    repo, triton = served
    staging = candidate_repository(exported, tmp_path / "staging")
    topic = f"events-{uuid.uuid4().hex[:8]}"
    # Loading a version (backend stubs, torch) stalls this 2-core box for a moment: a slow answer
    # is not a dropped one (model-answer timeouts). In production the 250 ms deadline would serve
    # those from the fallback, still 200s, counted as reason="deadline".
    settings = GatewaySettings(**gateway_settings(exported, triton, kafka, topic,
                                                  model_repository=str(repo), model_poll_ms=100))
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout_s=60)
        answers: list[tuple[int, str, dict]] = []
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                for user in USERS:
                    r = client.get(f"/v1/users/{user}/recommendations", params={"k": 10})
                    answers.append((r.status_code, user, r.json()))

        def serving(version):
            return lambda: answers and answers[-1][2].get("model_version") == version

        def every_user_served(version, since):
            """Every user has had an answer from ``version`` since ``answers[since]`` (not a sleep:
            on a busy machine half a second may hold a few answers or none)."""
            return lambda: set(USERS) <= {
                u for _, u, a in answers[since:] if a.get("model_version") == version}

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            wait_for(lambda: len(answers) > 60, "traffic", timeout_s=60)
            rollout = Rollout(repo, f"127.0.0.1:{triton.http_port}")
            version = rollout.publish(staging)
            assert version == 2

            # A candidate whose answers differ from the exporter's reference is never promoted.
            reference = repo / sig.RETRIEVE / "2" / REFERENCE_FILE
            good = reference.read_text()
            bad = json.loads(good)
            bad["score"] = [[s + 1 for s in row] for row in bad["score"]]
            reference.write_text(json.dumps(bad))
            with pytest.raises(RolloutError, match="smoke check failed"):
                rollout.promote(version)
            assert sig.live_version(repo) == 1
            reference.write_text(good)

            shadow = rollout.shadow(version, read_shadow_requests(exported.artifacts / SNAPSHOT_FILE),
                                    requests=30)
            assert 0 <= shadow.overlap_at_k < 1  # the nudged model answers differently
            rollout.promote(version)
            wait_for(serving(2), "the gateway to serve version 2", timeout_s=60)
            wait_for(every_user_served(2, 0), "version 2 to answer every user", timeout_s=60)
            assert rollout.rollback() == 1
            wait_for(serving(1), "the gateway to serve version 1 again", timeout_s=60)
            since = len(answers)
            wait_for(every_user_served(1, since), "version 1 to answer every user again", timeout_s=60)
        finally:
            stop.set()
            worker.join(60)

    assert answers and all(status == 200 for status, _, _ in answers)
    assert not [a for _, _, a in answers if a["degraded"] or a["source"] != "model"]
    per_version: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for _, user, answer in answers:
        per_version[(user, answer["model_version"])].append(answer)
    assert {v for _, v in per_version} == {1, 2}
    # One answer per user and version: no request paired one version's scores with another's.
    # (Alike to within float error: dynamic batching changes summation order from call to call.)
    for (user, version), same in per_version.items():
        for answer in same[1:]:
            assert_same_recommendations(answer, same[0], context=(user, version))
    differs = [u for u in USERS if [i["item_id"] for i in per_version[(u, 1)][0]["items"]]
               != [i["item_id"] for i in per_version[(u, 2)][0]["items"]]]
    assert differs  # and the versions are told apart
    history = [h["action"] for h in json.loads((repo / sig.ROLLOUT_FILE).read_text())["history"]]
    assert history[0] == "publish" and history[-2:] == ["promote", "rollback"]
