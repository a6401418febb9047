"""A/B experiment arms: refused weights, and a user's arm that never depends on where it is asked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from features import contract as sig
from features.experiment import LIVE_ARM, Arm, Experiment, InvalidExperiment, read_pointer


def experiment(live=0.9, candidate=0.1, name="exp1") -> Experiment:
    return Experiment(name, (Arm(LIVE_ARM, 1, live), Arm("candidate", 2, candidate)), 0)


@pytest.mark.parametrize("live, candidate, message", [
    (1.2, -0.2, "outside \\[0, 1\\]"),
    (0.9, 0.2, "must sum to 1"),
    (0.5, 0.4, "must sum to 1"),
    (float("nan"), 1.0, "outside"),
])
def test_weights_outside_the_unit_interval_or_not_summing_to_one_are_refused(live, candidate, message):
    with pytest.raises(InvalidExperiment, match=message):
        experiment(live, candidate)


def test_arms_need_distinct_names_and_versions_and_valid_names():
    with pytest.raises(InvalidExperiment, match="names must differ"):
        Experiment("e", (Arm("a", 1, 0.5), Arm("a", 2, 0.5)), 0)
    with pytest.raises(InvalidExperiment, match="its own version"):
        Experiment("e", (Arm("a", 1, 0.5), Arm("b", 1, 0.5)), 0)
    with pytest.raises(InvalidExperiment, match="at least two arms"):
        Experiment("e", (Arm("a", 1, 1.0),), 0)
    with pytest.raises(InvalidExperiment, match="experiment name"):
        Experiment("a b", (Arm("a", 1, 0.5), Arm("b", 2, 0.5)), 0)


def test_users_split_by_the_weights_and_keep_their_arm_in_another_process():
    users = [f"user-{i}" for i in range(20_000)]
    exp = experiment(0.9, 0.1)
    arms = [exp.arm_for(u).name for u in users]
    share = arms.count("candidate") / len(users)
    assert 0.09 < share < 0.11  # binomial sd at n=20k is 0.002: five of them either side
    # A fresh interpreter (another gateway, or this one after a restart) assigns the same arms.
    code = ("import json,sys; from features.experiment import Experiment; "
            "e = Experiment.from_dict(json.loads(sys.argv[1])); "
            "print(json.dumps([e.arm_for(f'user-{i}').name for i in range(2000)]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(exp.to_dict())], check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == arms[:2000]


def test_another_experiment_reshuffles_users_and_a_zero_weight_arm_gets_nobody():
    users = [f"u{i}" for i in range(4000)]
    first = [experiment(name="exp1").arm_for(u).name for u in users]
    second = [experiment(name="exp2").arm_for(u).name for u in users]
    assert first != second
    assert {experiment(1.0, 0.0).arm_for(u).name for u in users} == {LIVE_ARM}
    assert {experiment(0.0, 1.0).arm_for(u).name for u in users} == {"candidate"}


def test_the_pointer_round_trips_and_a_repository_without_one_has_no_experiment(tmp_path):
    (tmp_path / sig.RETRIEVE / "3").mkdir(parents=True)
    assert read_pointer(tmp_path) == (3, None)
    (tmp_path / sig.ROLLOUT_FILE).write_text(json.dumps({"live": 1, "experiment": experiment().to_dict()}))
    assert read_pointer(tmp_path) == (1, experiment())
    (tmp_path / sig.ROLLOUT_FILE).write_text(json.dumps({"live": 1, "experiment": {"name": "x"}}))
    with pytest.raises(InvalidExperiment, match="malformed"):
        read_pointer(tmp_path)
