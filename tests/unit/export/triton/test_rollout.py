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
from export.triton.rollout import Rollout, RolloutError, RolloutState
from features import contract as sig

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


def test_the_reference_outputs_are_what_the_fused_model_answers(catalog, live):
    ref = json.loads((live / sig.RETRIEVE / "1" / REFERENCE_FILE).read_text())
    torch.manual_seed(0)
    fused = scripted_modules(TwoTower(catalog, dim=8).eval())[sig.RECOMMEND_FUSED]
    history, exclude = np.array(ref["history"]), np.array(ref["exclude"])
    with torch.no_grad():
        items, scores = fused(torch.from_numpy(history), torch.from_numpy(exclude),
                              torch.full((len(history), 1), ref["k"], dtype=torch.int32))
    assert items.tolist() == ref["item_index"]
    assert np.allclose(scores.numpy(), ref["score"])
    assert history.shape == (16, SEQ) and all(row[-1] >= 2 for row in history)
    # the excluded items never come back with a finite score
    for ex, it, sc in zip(exclude, items.numpy(), scores.numpy(), strict=True):
        assert not set(ex[ex > 0]) & set(it[np.isfinite(sc)])
