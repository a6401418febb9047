"""What the gateway asks Triton for a known user: the user's steps as the feature store holds them —
items with their event types, in event order — so its answers are the model's answers to the
behaviour the model was trained on, not to bare item ids."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from features import contract as sig
from features.behaviour import PAD_TYPE, steps_of, type_code
from features.catalog import PAD_INDEX
from features.model_inputs import build_inputs, ranked_items
from tests.support.ranking import assert_same_ranking

USER = "1"
K = 10


@pytest.mark.parametrize("gateway", ["memory", "redis"], indirect=True)
def test_the_gateway_answers_for_the_users_steps_with_their_types(gateway, triton, exported):
    service = gateway.app.state.service
    served = service.served
    features = service.store.get(USER)
    steps = steps_of(features.recent)
    # Serving reads the same behaviour as training: the snapshot's events keep their types.
    trained = exported.result.dataset.user_steps()[USER]
    L = served.sequence_length
    assert [(str(s), s.event_type) for s in steps[-L:]] == [(str(s), s.event_type) for s in trained[-L:]]

    body = gateway.get(f"/v1/users/{USER}/recommendations", params={"k": K}).json()
    assert body["source"] == "model" and not body["degraded"]
    got_ids = [i["item_id"] for i in body["items"]]
    got_scores = [i["score"] for i in body["items"]]

    inputs = build_inputs(steps, served.catalog, L, K,
                          exclude=features.seen_items | features.bought_items)
    untyped = dataclasses.replace(inputs, history_types=np.where(
        inputs.history == PAD_INDEX, PAD_TYPE, type_code("unknown")))
    answers = []
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        for request in (inputs, untyped):
            result = client.infer(service.recommender.model, request.infer_inputs(grpcclient))
            ranked = ranked_items(result.as_numpy(sig.ITEM_INDEX)[0], result.as_numpy(sig.SCORE)[0],
                                  served.catalog)
            answers.append(([item.item_id for item, _ in ranked], [score for _, score in ranked]))
    (typed_ids, typed_scores), (_, untyped_scores) = answers
    assert_same_ranking(got_ids, got_scores, typed_ids, typed_scores)
    # and the types made a difference: the same items as bare ids answer otherwise
    assert not np.allclose(got_scores, untyped_scores, atol=1e-4)
