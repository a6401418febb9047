"""The rollout's A/B steps as bookkeeping (a Triton that loads whatever it is asked to): what the
pointer holds after each step, and the refusals that change nothing. Serving the arms to users is
tests/integration/gateway/test_ab_loop.py."""

from __future__ import annotations

import json
import re

import pytest
import torch

from export.model.towers import TwoTower
from export.triton import ab
from export.triton.repository import export_repository, read_config
from export.triton.rollout import Rollout, RolloutError, RolloutState, main
from features import contract as sig
from features.experiment import read_pointer

SEQ = 5


class LoadsEverything:
    """Triton's HTTP client as far as load/readiness go: every model loads, every version is ready."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def load_model(self, name: str) -> None:
        self.loaded.append(name)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return True


def export(catalog, root, seed):
    torch.manual_seed(seed)
    return export_repository(TwoTower(catalog, dim=8).eval(), catalog, root, sequence_length=SEQ)


@pytest.fixture
def repo(catalog, tmp_path):
    live = export(catalog, tmp_path / "live", 0)
    Rollout(live, "127.0.0.1:1").publish(export(catalog, tmp_path / "candidate", 1))  # version 2
    return live


def rollout(repo) -> Rollout:
    r = Rollout(repo, "127.0.0.1:1")
    r.client = LoadsEverything()
    return r


def pointer(repo) -> dict:
    return json.loads((repo / sig.ROLLOUT_FILE).read_text())


def test_start_serves_both_arms_and_stop_with_promote_makes_the_candidate_live(repo):
    experiment = ab.start(rollout(repo), 2, live_weight=0.8, candidate_weight=0.2, skip_checks=True)
    assert read_pointer(repo) == (1, experiment)
    arms = {(a.name, a.version, a.weight) for a in experiment.arms}
    assert arms == {("live", 1, 0.8), ("candidate", 2, 0.2)}
    # both versions loaded, the ensemble still on the live one
    for name in sig.VERSIONED_MODELS:
        assert list(read_config(repo / name / "config.pbtxt").version_policy.specific.versions) == [1, 2]

    assert ab.stop(rollout(repo), promote="candidate") == 2
    state = RolloutState.read(repo)
    assert (state.live, state.previous, state.experiment) == (2, 1, None)
    assert read_pointer(repo) == (2, None)
    assert [h["action"] for h in state.history][-2:] == ["ab_start", "ab_stop"]


def test_stop_without_promote_and_rollback_during_an_experiment_keep_the_live_version(repo):
    ab.start(rollout(repo), 2, live_weight=0.5, candidate_weight=0.5, skip_checks=True)
    assert ab.stop(rollout(repo)) == 1
    assert read_pointer(repo) == (1, None)
    ab.start(rollout(repo), 2, live_weight=0.5, candidate_weight=0.5, skip_checks=True)
    assert rollout(repo).rollback() == 1
    assert read_pointer(repo) == (1, None) and RolloutState.read(repo).previous is None


def test_steps_that_would_break_a_running_experiment_are_refused(repo):
    ab.start(rollout(repo), 2, live_weight=0.9, candidate_weight=0.1, skip_checks=True)
    before = pointer(repo)
    with pytest.raises(RolloutError, match="already running"):
        ab.start(rollout(repo), 2, live_weight=0.9, candidate_weight=0.1, skip_checks=True)
    with pytest.raises(RolloutError, match="is running"):
        rollout(repo).promote(2, skip_checks=True)
    with pytest.raises(RolloutError, match="arm of the running experiment"):
        rollout(repo).retire(2)
    with pytest.raises(RolloutError, match="no arm 'nobody'"):
        ab.stop(rollout(repo), promote="nobody")
    assert pointer(repo) == before


@pytest.mark.parametrize("weights, message", [
    (["1.1", "-0.1"], "outside \\[0, 1\\]"),
    (["0.9", "0.2"], "must sum to 1"),
])
def test_the_cli_refuses_bad_weights_with_a_clear_message_and_changes_nothing(repo, weights, message,
                                                                                caplog):
    before = pointer(repo)
    code = main(["--repository", str(repo), "--triton-url", "127.0.0.1:1", "ab", "start", "2",
                 "--live-weight", weights[0], "--candidate-weight", weights[1]])
    assert code == 2
    assert any(r.levelname == "ERROR" and "nothing changed" in r.message and
               re.search(message, r.message) for r in caplog.records)
    assert pointer(repo) == before


def test_status_without_metrics_names_the_arms_and_stop_without_an_experiment_is_refused(repo, capsys):
    assert main(["--repository", str(repo), "ab", "status"]) == 0
    assert json.loads(capsys.readouterr().out)["experiment"] is None
    with pytest.raises(RolloutError, match="no experiment is running"):
        ab.stop(rollout(repo))
    ab.start(rollout(repo), 2, live_weight=0.9, candidate_weight=0.1, name="e1", skip_checks=True)
    report = ab.status(rollout(repo), None)
    assert report["experiment"]["name"] == "e1" and report["live"] == 1


def _key(arm, version, impressions, clicked, surface="feed"):
    return {"surface": surface, "model_version": str(version), "arm": arm,
            "totals": {"impressions": impressions, "clicked_at_k_lists": clicked, "carted_lists": 0,
                       "purchased_lists": 0, "revenue": 0.0}}


def test_status_compares_each_arm_with_the_live_one_from_the_online_metrics(repo):
    import http.server
    import threading

    snapshot = {"keys": [_key("live", 1, 1000, 200), _key("candidate", 2, 1000, 260),
                         _key("candidate", 2, 50, 50, surface="similar"), _key(None, 1, 70, 70)]}

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            body = json.dumps(snapshot).encode()
            self.send_response(200 if self.path == "/v1/online-metrics" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ab.start(rollout(repo), 2, live_weight=0.5, candidate_weight=0.5, skip_checks=True)
        report = ab.status(rollout(repo), f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert [report["arms"][a]["impressions"] for a in ("live", "candidate")] == [1000, 1000]
    ctr = report["comparisons"]["candidate"]["ctr_at_k"]
    # 26 % vs 20 % of 1,000 lists each: +6 points, 95 % CI about +/-3.7 points, z = 3.19
    assert ctr["difference"] == pytest.approx(0.06)
    assert ctr["ci_low"] == pytest.approx(0.06 - 1.959964 * (0.2 * 0.8 / 1000 + 0.26 * 0.74 / 1000) ** 0.5)
    assert ctr["p_value"] < 0.01 and ctr["ci_low"] > 0


def test_status_says_when_the_online_metrics_service_does_not_answer(repo):
    from stack.ports import free_port

    ab.start(rollout(repo), 2, live_weight=0.5, candidate_weight=0.5, skip_checks=True)
    report = ab.status(rollout(repo), f"http://127.0.0.1:{free_port()}", timeout_s=2)
    assert "did not answer" in report["metrics_error"] and report["experiment"]["name"]


def test_status_refuses_a_confidence_outside_the_open_unit_interval(repo, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--repository", str(repo), "ab", "status", "--confidence", "1.5"])
    assert exit_.value.code == 2 and "1.5 is not between 0 and 1" in capsys.readouterr().err
