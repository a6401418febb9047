"""Rollout bookkeeping without a Triton: the pointer, publishing, refusals, the dry run, the
exporter's reference outputs. (Loading, checks and switching under traffic are integration tests:
tests/integration/export/test_rollout_served.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export.model.towers import TwoTower
from export.triton.repository import REFERENCE_FILE, export_repository, scripted_modules
from export.triton.rollout import Rollout, RolloutError, RolloutState, read_shadow_requests
from features import contract as sig
from tests.support.models import with_type_effects

SEQ = 5


def export(catalog, root, seed=0, dim=8):
    torch.manual_seed(seed)
    return export_repository(TwoTower(catalog, dim=dim).eval(), catalog, root, sequence_length=SEQ)


@pytest.fixture
def live(catalog, tmp_path):
    return export(catalog, tmp_path / "live")


def rollout(repo, **kw):
    return Rollout(repo, "127.0.0.1:1", **kw)  # no Triton: bookkeeping only


def test_without_a_pointer_the_newest_version_is_live_and_the_first_write_adopts_it(live):
    assert sig.live_version(live) == 1
    state = RolloutState.read(live)
    assert (state.live, state.previous) == (1, None)
    state.live = 7
    state.write(live)
    assert sig.live_version(live) == 7 and json.loads((live / sig.ROLLOUT_FILE).read_text())["live"] == 7


def test_publish_adds_the_next_version_once(catalog, live, tmp_path):
    candidate = export(catalog, tmp_path / "candidate", seed=1)
    r = rollout(live)
    assert r.publish(candidate) == 2
    for name in sig.VERSIONED_MODELS:
        assert (live / name / "2" / "model.pt").is_file()
    serving = json.loads((live / sig.RETRIEVE / "2" / sig.SERVING_FILE).read_text())
    assert serving["version"] == 2
    assert sig.live_version(live) == 1  # published is not live
    assert rollout(live).publish(candidate) == 2  # idempotent, across processes
    assert sorted(p.name for p in (live / sig.RETRIEVE).iterdir() if p.name.isdigit()) == ["1", "2"]
    assert [h["action"] for h in RolloutState.read(live).history] == ["publish"]


def test_publish_pins_the_live_version_so_a_triton_restart_cannot_serve_the_candidate(
        catalog, live, tmp_path):
    from export.triton.repository import read_config
    policies = {name: read_config(live / name / "config.pbtxt").version_policy
                for name in sig.VERSIONED_MODELS}
    assert all(p.WhichOneof("policy_choice") == "latest" for p in policies.values())  # as exported
    rollout(live).publish(export(catalog, tmp_path / "candidate", seed=1))
    for name in sig.VERSIONED_MODELS:
        policy = read_config(live / name / "config.pbtxt").version_policy
        assert list(policy.specific.versions) == [1], name


def test_publish_refuses_a_candidate_with_other_shapes(catalog, live, tmp_path):
    wider = export(catalog, tmp_path / "wider", dim=16)
    with pytest.raises(RolloutError, match="config.pbtxt differs"):
        rollout(live).publish(wider)
    assert not (live / sig.RETRIEVE / "2").exists()


def test_dry_run_changes_nothing(catalog, live, tmp_path):
    candidate = export(catalog, tmp_path / "candidate", seed=1)
    before = sorted(str(p) for p in live.rglob("*"))
    assert rollout(live, dry_run=True).publish(candidate) == 2
    assert sorted(str(p) for p in live.rglob("*")) == before


def test_rollback_needs_a_previous_version_and_retire_refuses_the_live_one(live):
    r = rollout(live)
    with pytest.raises(RolloutError, match="no previous"):
        r.rollback()
    with pytest.raises(RolloutError, match="is live"):
        r.retire(1)


def test_the_reference_outputs_are_what_the_fused_model_answers(catalog, tmp_path):
    torch.manual_seed(0)
    model = with_type_effects(TwoTower(catalog, dim=8)).eval()  # types change its answers
    live = export_repository(model, catalog, tmp_path / "typed", sequence_length=SEQ)
    ref = json.loads((live / sig.RETRIEVE / "1" / REFERENCE_FILE).read_text())
    fused = scripted_modules(model)[sig.RECOMMEND_FUSED]
    history, types = np.array(ref["history"]), np.array(ref["history_types"])
    exclude, k = np.array(ref["exclude"]), torch.full((len(history), 1), ref["k"], dtype=torch.int32)
    with torch.no_grad():
        items, scores = fused(torch.from_numpy(history), torch.from_numpy(types),
                              torch.from_numpy(exclude), k)
        _, untyped = fused(torch.from_numpy(history), torch.zeros_like(torch.from_numpy(types)),
                           torch.from_numpy(exclude), k)
    assert items.tolist() == ref["item_index"]
    assert np.allclose(scores.numpy(), ref["score"])
    assert not np.allclose(untyped.numpy(), ref["score"])  # a server that dropped types fails smoke
    assert history.shape == types.shape == (16, SEQ) and all(row[-1] >= 2 for row in history)
    # the excluded items never come back with a finite score
    for ex, it, sc in zip(exclude, items.numpy(), scores.numpy(), strict=True):
        assert not set(ex[ex > 0]) & set(it[np.isfinite(sc)])


def test_smoke_replays_the_reference_with_its_types(live):
    ref = json.loads((live / sig.RETRIEVE / "1" / REFERENCE_FILE).read_text())
    sent = []

    def infer(version, inputs):  # stands in for Triton: answers what the reference says
        sent.append(inputs)
        return np.array(ref["item_index"]), np.array(ref["score"], dtype=np.float32), 1.0

    r = rollout(live)
    r._infer = infer
    r.client = SimilarFromReference(ref["similar"])
    report = r.smoke(1)
    assert report.ok and report.similar_overlap == 1.0 and report.similar_max_score_diff == 0.0
    (inputs,) = sent
    assert list(inputs.tensors()) == [sig.HISTORY, sig.HISTORY_TYPES, sig.EXCLUDE, sig.K]
    assert inputs.history_types.tolist() == ref["history_types"]
    assert inputs.history_types.dtype == np.int64 and inputs.history.tolist() == ref["history"]
    # similar_items was asked the reference's queries, and a wrong answer from it fails the check
    assert r.client.asked == [ref["similar"]["item"]]
    r.client = SimilarFromReference(ref["similar"], shift=0.01)
    assert not r.smoke(1).ok


class SimilarFromReference:
    """Triton's HTTP client as far as the smoke check asks similar_items: answers the reference
    (its scores moved by ``shift``), and records the query items."""

    def __init__(self, ref: dict, shift: float = 0.0) -> None:
        self.ref, self.shift, self.asked = ref, shift, []

    def get_model_config(self, name: str) -> dict:
        assert name == sig.SIMILAR_ITEMS
        return {"input": [{"name": n} for n in (sig.ITEM, sig.EXCLUDE, sig.K)],
                "output": [{"name": n} for n in (sig.ITEM_INDEX, sig.SCORE)]}

    def infer(self, name, inputs, model_version=None):
        item = inputs[0]  # ITEM first, as binary data
        sent = np.frombuffer(item._get_binary_data(), dtype=np.int64)
        self.asked.append(sent.reshape(item.shape()).tolist())
        answers = {sig.ITEM_INDEX: np.array(self.ref["item_index"]),
                   sig.SCORE: np.array(self.ref["score"], dtype=np.float32) + self.shift}
        return type("Result", (), {"as_numpy": staticmethod(answers.__getitem__)})()


def test_smoke_refuses_a_reference_from_before_history_types(live):
    path = live / sig.RETRIEVE / "1" / REFERENCE_FILE
    ref = json.loads(path.read_text())
    del ref["history_types"]
    path.write_text(json.dumps(ref))
    with pytest.raises(RolloutError, match="predates the behaviour-aware contract"):
        rollout(live).smoke(1)


def test_shadow_requests_read_either_snapshot_row_form(tmp_path):
    path = tmp_path / "histories.json"
    path.write_text(json.dumps({
        "u1": ["a", "b"],  # bare item ids: type unknown, file order
        "u2": [["e2", "b", "purchase", 20], ["e1", "a", "view", 10]],  # typed events, by time
    }))
    histories = read_shadow_requests(path)
    assert [(str(s), s.event_type) for s in histories["u1"]] == [("a", "unknown"), ("b", "unknown")]
    assert [(str(s), s.event_type) for s in histories["u2"]] == [("a", "view"), ("b", "purchase")]
